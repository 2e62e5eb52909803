# Shared by the interop suites (sourced, not run): start the Kiln under test on a free port.
# Needs: node_bin (Node), kiln_bin (the binary), work (a scratch dir), log (a function).
# Sets: KILN_URL (exported, with a trailing slash) and kiln_pid (the suite's cleanup stops it).

free_port() {
  "$node_bin" -e '
    const s = require("net").createServer();
    s.listen(0, "127.0.0.1", () => { console.log(s.address().port); s.close(); });'
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
      if "$node_bin" -e '
        fetch(process.argv[1]).then((r) => process.exit(r.ok ? 0 : 1), () => process.exit(1));' \
        "${KILN_URL}healthcheck"; then
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
