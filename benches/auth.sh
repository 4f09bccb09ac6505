#!/usr/bin/env bash
# What authentication costs: status GETs per second (wrk, 100 connections) against the same
# release build and the same SQLite data, with --auth none, keys (one store lookup per request)
# and jwt (one RS256 verification per request, key from a PEM file), one after the other.
# Needs wrk, curl and openssl (Debian packages); downloads nothing. The JWT key pair is the
# test-only one in converto-http/tests/data/auth.
#
#   benches/auth.sh                  # 15 s per mode
#   DURATION=5s benches/auth.sh
set -euo pipefail
cd "$(dirname "$0")/.."

duration=${DURATION:-15s}
port=${PORT:-18081}
keys_dir=converto-http/tests/data/auth

for tool in wrk curl openssl; do
  command -v "$tool" >/dev/null || { echo "needs $tool (apt-get install $tool)" >&2; exit 1; }
done

cargo build --release --quiet -p converto-http
bin=target/release/converto
work=$(mktemp -d)
server=
cleanup() { [ -n "$server" ] && kill "$server" 2>/dev/null; wait 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

b64url() { base64 -w0 | tr '+/' '-_' | tr -d '='; }

# An RS256 token for tenant acme, valid for an hour.
jwt() {
  local now header payload sig
  now=$(date +%s)
  header=$(printf '{"alg":"RS256","typ":"JWT"}' | b64url)
  payload=$(printf '{"sub":"bench","tenant":"acme","scope":"read write","exp":%d}' $((now + 3600)) | b64url)
  sig=$(printf '%s.%s' "$header" "$payload" | openssl dgst -sha256 -sign "$keys_dir/rsa-private.pem" | b64url)
  printf '%s.%s.%s' "$header" "$payload" "$sig"
}

# The per-tenant request rate would cap every mode alike: measure without it.
printf '[tenant_defaults]\nrequests_per_second = 0\n' >"$work/converto.toml"

key=$(CONVERTO_LOG=warn "$bin" --data-dir "$work/data" keys create --tenant acme --scopes read,write)
token=$(jwt)

declare -A results
for mode in none keys jwt; do
  CONVERTO_LOG=warn "$bin" --config "$work/converto.toml" --data-dir "$work/data" serve --listen "127.0.0.1:$port" --no-workers \
    --auth "$mode" --jwt-public-key "$keys_dir/rsa-public.pem" >"$work/server-$mode.log" 2>&1 &
  server=$!
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.1; done
  case $mode in
    none) auth=() ;;
    keys) auth=(-H "Authorization: Bearer $key") ;;
    jwt) auth=(-H "Authorization: Bearer $token") ;;
  esac
  # One record of this mode's tenant to GET.
  id=$(curl -sf "${auth[@]}" -F file=@examples/data/cube.stl -F target_format=obj \
    "http://127.0.0.1:$port/v1/conversions" | sed -E 's/.*"id":"([^"]+)".*/\1/')
  curl -sf -o /dev/null "${auth[@]}" "http://127.0.0.1:$port/v1/conversions/$id"
  echo "== --auth $mode: wrk -t2 -c100 -d$duration GET /v1/conversions/{id}"
  wrk -t2 -c100 -d"$duration" --latency "${auth[@]}" "http://127.0.0.1:$port/v1/conversions/$id" \
    | tee "$work/wrk-$mode.txt"
  non2xx=$(awk '/Non-2xx/ {print $NF}' "$work/wrk-$mode.txt")
  [ -z "$non2xx" ] || { echo "--auth $mode: $non2xx answers were not 2xx" >&2; exit 1; }
  results[$mode]="$(awk '/Requests\/sec/ {print $2}' "$work/wrk-$mode.txt") req/s, p99 $(awk '$1 == "99%" {print $2}' "$work/wrk-$mode.txt")"
  kill "$server"; wait "$server" 2>/dev/null || true; server=
  echo
done

echo "== summary (status GETs, 100 connections, $duration each)"
for mode in none keys jwt; do printf '  --auth %-5s %s\n' "$mode" "${results[$mode]}"; done
