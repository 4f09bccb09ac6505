#!/usr/bin/env bash
# HTTP benchmark of the embedded default (SQLite + local disk), release build:
#   1. status GETs per second and latency percentiles at 100 connections (wrk),
#   2. the upload rate and the server's peak RSS growth for a 1 GiB upload (curl).
# Needs wrk and curl (Debian packages); downloads nothing.
#
#   benches/http.sh                  # 30 s of GETs, a 1 GiB upload
#   DURATION=10s UPLOAD_MIB=256 benches/http.sh
#   CONVERTO_BIN=/tmp/old/converto benches/http.sh   # an already built binary (e.g. before/after)
set -euo pipefail
cd "$(dirname "$0")/.."

duration=${DURATION:-30s}
upload_mib=${UPLOAD_MIB:-1024}
port=${PORT:-18080}

for tool in wrk curl; do
  command -v "$tool" >/dev/null || { echo "needs $tool (apt-get install $tool)" >&2; exit 1; }
done

bin=${CONVERTO_BIN:-}
if [ -z "$bin" ]; then
  cargo build --release --quiet -p converto-http
  bin=target/release/converto
fi
echo "load before the run: $(cut -d' ' -f1-3 /proc/loadavg) (others on this machine skew the figures)"
work=$(mktemp -d)
server=
cleanup() { [ -n "$server" ] && kill "$server" 2>/dev/null; wait 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

# The per-tenant request rate would cap the GET figure at the limit, not the server's speed.
printf '[tenant_defaults]\nrequests_per_second = 0\n' >"$work/converto.toml"
CONVERTO_LOG=warn "$bin" --config "$work/converto.toml" --data-dir "$work/data" --max-upload-bytes $((upload_mib * 1024 * 1024 + 1)) \
  serve --listen "127.0.0.1:$port" >"$work/server.log" 2>&1 &
server=$!
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.1; done

rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$server/status"; }
hwm_kib() { awk '/^VmHWM/ {print $2}' "/proc/$server/status"; }

# One finished conversion to GET.
id=$(curl -sf -F file=@examples/data/cube.stl -F target_format=obj "http://127.0.0.1:$port/v1/conversions" \
  | sed -E 's/.*"id":"([^"]+)".*/\1/')
for _ in $(seq 100); do
  curl -sf "http://127.0.0.1:$port/v1/conversions/$id" | grep -q '"succeeded"' && break
  sleep 0.1
done

echo "== status GETs: wrk -t2 -c100 -d$duration GET /v1/conversions/{id}"
# The server's user + system clock ticks: CPU per request, which other load on the machine
# skews far less than the rate.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$server/stat"; }
cpu_before=$(cpu_ticks)
wrk -t2 -c100 -d"$duration" --latency "http://127.0.0.1:$port/v1/conversions/$id" | tee "$work/wrk.txt"
cpu_after=$(cpu_ticks)
rps=$(awk '/Requests\/sec/ {print $2}' "$work/wrk.txt")
p99=$(awk '$1 == "99%" {print $2}' "$work/wrk.txt")
requests=$(awk '/requests in/ {print $1}' "$work/wrk.txt")
cpu_us=$(echo "scale=1; ($cpu_after - $cpu_before) * 1000000 / $(getconf CLK_TCK) / $requests" | bc -l)

echo
echo "== upload: ${upload_mib} MiB through POST /v1/uploads + PUT (streamed to the blob store)"
ticket=$(curl -sf -X POST "http://127.0.0.1:$port/v1/uploads")
path=$(echo "$ticket" | sed -E 's/.*"url":"([^"]+)".*/\1/')
before=$(rss_kib)
echo 5 > "/proc/$server/clear_refs" 2>/dev/null || true   # reset the peak to the current RSS
# The client generates the body on the fly: nothing touches the disk on the client side.
start=$(date +%s.%N)
head -c $((upload_mib * 1024 * 1024)) /dev/zero \
  | curl -sf -X PUT -H 'Content-Type: application/octet-stream' -T - "http://127.0.0.1:$port$path" >/dev/null
end=$(date +%s.%N)
peak=$(hwm_kib)
secs=$(echo "$end - $start" | bc -l)
rate=$(echo "$upload_mib * 1.048576 / $secs" | bc -l)

echo
printf 'status GETs/s (100 connections): %s   p99 latency: %s   server CPU per GET: %s us\n' "$rps" "$p99" "$cpu_us"
printf 'upload: %d MiB in %.2f s = %.0f MB/s; server RSS before %d MiB, peak %d MiB (growth %d MiB)\n' \
  "$upload_mib" "$secs" "$rate" $((before / 1024)) $((peak / 1024)) $(((peak - before) / 1024))
