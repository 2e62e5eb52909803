# Shared by the interop suites (sourced, not run): find (or build) the Kiln under test, start
# it on a free port, stop it.
# Needs: root (the repository), log (a function); for start_kiln also node_bin (Node) or
# py_bin (Python 3) and work (a scratch dir).
# Sets: kiln_bin (find_kiln_bin); KILN_URL (exported, with a trailing slash) and kiln_pid
# (start_kiln).

# find_kiln_bin: $KILN_BIN, else ${CARGO_TARGET_DIR:-target}/debug/kiln (relative paths from the
# repository), built with cargo when missing unless KILN_BIN or KILN_INTEROP_NO_BUILD=1 is set.
find_kiln_bin() {
  local target_dir="${CARGO_TARGET_DIR:-target}"
  [[ "$target_dir" = /* ]] || target_dir="$root/$target_dir"
  kiln_bin="${KILN_BIN:-$target_dir/debug/kiln}"
  [[ "$kiln_bin" = /* ]] || kiln_bin="$root/$kiln_bin"
  if [[ ! -x "$kiln_bin" ]]; then
    if [[ -n "${KILN_BIN:-}" || "${KILN_INTEROP_NO_BUILD:-}" = 1 ]]; then
      log "kiln binary not found: $kiln_bin"
      return 1
    fi
    log "building kiln (debug) into $target_dir"
    (cd "$root" && CARGO_TARGET_DIR="$target_dir" cargo build -p kiln >&2)
  fi
}

# finish_kiln [NOTE]: for a suite's EXIT trap: stops the server; if the suite failed ($status not
# 0) shows the end of the server's log, NOTE (what else was kept, where) and the time taken, and
# keeps $work; otherwise removes $work. Needs status, work and started (SECONDS at the start).
finish_kiln() {
  stop_kiln
  if [[ ${status:-1} -ne 0 ]]; then
    log "kiln log (last 40 lines of $work/kiln.log):"
    tail -n 40 "$work/kiln.log" >&2 2>/dev/null || true
    if [[ -n "${1:-}" ]]; then log "$1"; fi
    log "failed after $((SECONDS - started))s"
  else
    rm -rf "$work"
  fi
}

# stop_kiln: stops the server start_kiln started (TERM, then KILL after 5 s).
stop_kiln() {
  if [[ -n "${kiln_pid:-}" ]] && kill -0 "$kiln_pid" 2>/dev/null; then
    kill "$kiln_pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$kiln_pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$kiln_pid" 2>/dev/null || true
    wait "$kiln_pid" 2>/dev/null || true
  fi
}

free_port() {
  if [[ -n "${node_bin:-}" ]]; then
    "$node_bin" -e '
      const s = require("net").createServer();
      s.listen(0, "127.0.0.1", () => { console.log(s.address().port); s.close(); });'
  else
    "$py_bin" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
  fi
}

# is_healthy URL: whether GET URL answers 2xx.
is_healthy() {
  if [[ -n "${node_bin:-}" ]]; then
    "$node_bin" -e '
      fetch(process.argv[1]).then((r) => process.exit(r.ok ? 0 : 1), () => process.exit(1));' "$1"
  else
    "$py_bin" -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=5)' "$1" 2>/dev/null
  fi
}

# start_kiln [extra `kiln serve` flags...]: up to three tries (a free port can be taken between
# finding and binding it); fails after printing the server's log.
start_kiln() {
  local healthy="" attempt port
  for attempt in 1 2 3; do
    port="$(free_port)"
    export KILN_URL="http://127.0.0.1:$port/"
    mkdir -p "$work/data"
    log "starting $kiln_bin on $KILN_URL (attempt $attempt)"
    "$kiln_bin" serve --listen "127.0.0.1:$port" --base-url "$KILN_URL" --data-dir "$work/data" \
      "$@" >"$work/kiln.log" 2>&1 &
    kiln_pid=$!
    for _ in $(seq 300); do
      if ! kill -0 "$kiln_pid" 2>/dev/null; then break; fi
      if is_healthy "${KILN_URL}healthcheck"; then
        healthy=1
        break
      fi
      sleep 0.1
    done
    [[ -n "$healthy" ]] && return 0
    log "kiln did not become healthy:"
    tail -n 20 "$work/kiln.log" >&2 || true
    kill "$kiln_pid" 2>/dev/null || true
    wait "$kiln_pid" 2>/dev/null || true
    kiln_pid=""
    rm -rf "$work/data"
  done
  return 1
}
