#!/usr/bin/env bash
# OpenAPI check: the /openapi.json of a freshly started Kiln passes openapi-spec-validator, and a
# bounded schemathesis run against the live server (with an administrator's token) over reads,
# searches and writes finds no 5xx and no response that contradicts the document.
#
#   interop/openapi/run.sh            # from anywhere
#
# Environment:
#   KILN_BIN               kiln binary to test (default: ${CARGO_TARGET_DIR:-target}/debug/kiln,
#                          relative to the repo root; built with `cargo build -p kiln` if missing)
#   KILN_INTEROP_NO_BUILD  =1: never run cargo; fail if the binary is missing
#   KILN_OPENAPI_VENV      the Python venv with the pinned tools (default ~/.cache/kiln/venv-openapi)
#   KILN_OPENAPI_EXAMPLES  schemathesis examples per operation (default 25)
#
# Exits non-zero if anything fails. The server is always stopped.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
started=$SECONDS

log() { printf '[interop/openapi] %s\n' "$*" >&2; }

# --- Python tools (a cached venv; every package pinned in requirements.txt) ----------------
venv="${KILN_OPENAPI_VENV:-$HOME/.cache/kiln/venv-openapi}"
if [[ ! -x "$venv/bin/python" ]] || ! cmp -s "$here/requirements.txt" "$venv/.kiln-installed-requirements" 2>/dev/null; then
  python="${PYTHON:-python3}"
  command -v "$python" >/dev/null || { log "FATAL: $python is required (3.10 or newer)"; exit 1; }
  log "python venv $venv ($("$python" --version 2>&1)) with requirements.txt"
  rm -rf "$venv"
  mkdir -p "$(dirname "$venv")"
  "$python" -m venv "$venv" || { log "FATAL: '$python -m venv' failed (on Debian: apt-get install python3-venv)"; exit 1; }
  # Every package is pinned in the file, so --no-deps: nothing unpinned comes in.
  "$venv/bin/python" -m pip install --disable-pip-version-check -q --no-deps -r "$here/requirements.txt" >&2 \
    || { log "FATAL: pip install -r requirements.txt failed"; rm -rf "$venv"; exit 1; }
  cp "$here/requirements.txt" "$venv/.kiln-installed-requirements"
fi
py_bin="$venv/bin/python"
for tool in openapi-spec-validator st; do
  [[ -x "$venv/bin/$tool" ]] || { log "FATAL: $tool is missing from $venv"; exit 1; }
done

# --- kiln binary ----------------------------------------------------------------------------
# shellcheck source=../kiln.sh
source "$here/../kiln.sh"
find_kiln_bin || exit 1

# --- start kiln -----------------------------------------------------------------------------
work="$(mktemp -d "${TMPDIR:-/tmp}/kiln-interop-openapi.XXXXXX")"
kiln_pid=""
status=1
cleanup() { finish_kiln "work dir kept: $work"; }
trap cleanup EXIT
trap 'exit 130' INT TERM

export KILN_ADMIN_EMAIL="${KILN_ADMIN_EMAIL:-admin@example.com}"
export KILN_ADMIN_PASSWORD="${KILN_ADMIN_PASSWORD:-openapi_admin}"
start_kiln --registration open || exit 1

# --- the checks -----------------------------------------------------------------------------
token="$("$py_bin" "$here/prepare.py" "$work/openapi.json")"

log "openapi-spec-validator"
"$venv/bin/openapi-spec-validator" "$work/openapi.json" >&2

# One schemathesis run against the live server with the administrator's token; the arguments
# choose the operations and the generation. Every answer must be a non-5xx that the document
# describes (status, content type, body). From the work dir: schemathesis keeps a cache of
# failures (.schemathesis/) where it runs.
schemathesis() {
  (cd "$work" && "$venv/bin/st" --config-file "$here/schemathesis.toml" run "$work/openapi.json" \
    --url "${KILN_URL%/}" \
    --header "Authorization: Bearer $token" \
    --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance \
    --seed 1 \
    --no-color "$@" >&2)
}

# The reads, histories and searches of a few resource types, system search and history,
# compartment search, $everything, the CapabilityStatement, the caller's account and the
# discovery documents, with generated (mostly invalid) ids, parameters and query values.
# (Both filters are regexes so that they apply together: separate include filters are ORed.)
log "schemathesis"
paths='^(/fhir/R4/(Patient|Observation|Condition|Encounter)(/\{id\}(/_history(/\{vid\})?)?|/_history)?'
paths+='|/fhir/R4|/fhir/R4/_history|/fhir/R4/metadata|/fhir/R4/Patient/\{id\}/(\$everything|\{type\})'
paths+='|/auth/me|/oauth2/userinfo'
paths+='|/\.well-known/(smart-configuration|openid-configuration|jwks\.json)|/healthcheck)$'
schemathesis \
  --include-path-regex "$paths" \
  --include-method-regex '(?i)^get$' \
  --max-examples "${KILN_OPENAPI_EXAMPLES:-25}" \
  --phases examples,coverage,fuzzing

# The writes: create, update, patch and delete of two resource types, with generated bodies
# (schema-shaped resources, most of them invalid FHIR) and ids. Kiln must refuse what is wrong
# with a documented 4xx and an OperationOutcome, store the rest, and never answer 5xx.
# Generating instances of these schemas is slow and most drafts are filtered (hypothesis's
# health checks say so); fuzzing alone, with those two checks off, keeps this to minutes.
log "schemathesis (writes)"
schemathesis \
  --include-path-regex '^/fhir/R4/(Patient|Observation)(/\{id\})?$' \
  --include-method-regex '(?i)^(post|put|patch|delete)$' \
  --max-examples "${KILN_OPENAPI_WRITE_EXAMPLES:-10}" \
  --phases fuzzing \
  --suppress-health-check=too_slow,filter_too_much
status=0
log "passed in $((SECONDS - started))s"
