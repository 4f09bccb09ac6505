#!/usr/bin/env bash
# converto's PostgreSQL queue and engine beside graphile-worker 0.18, on the same PostgreSQL, in
# one run, with the ratios (issue 14).
#
#   benches/graphile.sh
#
# graphile-worker is installed from npm into a temporary directory (removed afterwards) when
# `node` and `npm` are there, and skipped with a message otherwise. It runs in its own schema
# (`graphile_bench`, dropped afterwards), one process, no-op tasks:
#   - c8:   concurrency 8 (each slot fetches and completes its own job);
#   - c24:  concurrency 24 with `localQueue.size` 500 and batched completion
#           (`completeJobBatchDelay` and `failJobBatchDelay` 0).
# converto, against the same server with synchronous commits on (the defaults):
#   - queue reserve1_ack_x8:     eight consumers reserving one job each, acking each (c8's shape);
#   - queue reserve500_ack_many: reserve 500, one `ack_many` (c24's prefetch + batched completion);
#     (with the raw `SKIP LOCKED` loops they are summarised against; the queue bench also
#     completes 100,000 jobs between its phases, which takes a while);
#   - engine postgres_c64, postgres_c512: the whole engine (records, transitions, events,
#                                artifacts in memory) on PostgreSQL, `run_workers` at concurrency
#                                64 and 512, draining jobs submitted beforehand (as graphile-worker's
#                                are); the steady runs (submitting while working) print latencies.
#
# Environment: CONVERTO_BENCH_POSTGRES_URL (default postgres://postgres@127.0.0.1:5432/test),
# GRAPHILE_JOBS_C8 (default 5000), GRAPHILE_JOBS_C24 (default 40000), CONVERTO_BENCH_JOBS (the
# engine's jobs, default 20000).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_INCREMENTAL=${CARGO_INCREMENTAL:-0}
URL=${CONVERTO_BENCH_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/test}
export CONVERTO_BENCH_POSTGRES_URL=$URL

echo "== load: $(uptime)"
echo "== building the benches (release)"
cargo bench --no-run --features postgres --bench queues --bench engine >/dev/null 2>&1 ||
  cargo bench --no-run --features postgres --bench queues --bench engine

gw_c8="" gw_c24=""
if command -v node >/dev/null && command -v npm >/dev/null; then
  dir=$(mktemp -d)
  trap 'rm -rf "$dir"' EXIT
  echo "== installing graphile-worker@0.18 into $dir"
  (cd "$dir" && npm init -y >/dev/null &&
    npm install --silent --no-audit --no-fund graphile-worker@0.18 >/dev/null 2>&1)
  cp benches/graphile/bench.js "$dir/"
  rate() { node "$dir/bench.js" "$@" 2>/dev/null | awk '/^jobs\/s/ {print $2}'; }
  echo "== graphile-worker c8"
  gw_c8=$(rate "$URL" graphile_bench "${GRAPHILE_JOBS_C8:-5000}" 8)
  echo "== graphile-worker c24 + localQueue 500 + batched completion"
  gw_c24=$(GRAPHILE_BENCH_DROP=1 rate "$URL" graphile_bench "${GRAPHILE_JOBS_C24:-40000}" 24 500)
else
  echo "graphile-worker SKIPPED: node and npm are needed (https://nodejs.org); converto alone:"
fi

echo "== converto queue"
queue_out=$(cargo bench --bench queues --features postgres -- \
  '^postgres/(reserve1_ack_x8|reserve500_ack_many|raw_claim1_complete_x8|raw_claim64_complete)$' 2>/dev/null)
q_c8=$(awk '$1 == "postgres" && $2 == "reserve1_ack_x8" {print $3}' <<<"$queue_out")
q_batch=$(awk '$1 == "postgres" && $2 == "reserve500_ack_many" {print $3}' <<<"$queue_out")
echo "== converto engine on PostgreSQL"
engine_out=$(cargo bench --bench engine --features postgres -- postgres 2>/dev/null)
echo "$engine_out"
drain() { awk -v c="$1" '$1 == "engine" && $2 == c && $3 == "drain" {print $5}' <<<"$engine_out"; }
e_pg64=$(drain postgres_c64)
e_pg=$(drain postgres_c512)

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a > 0 && b > 0) printf "%.2fx", a / b; else print "n/a" }'; }
echo
echo "jobs/s, same run ($(uptime | sed 's/.*load/load/'))"
printf '  %-48s %9s\n' "graphile-worker c8" "${gw_c8:-skipped}" \
  "graphile-worker c24 + localQueue 500 + batch" "${gw_c24:-skipped}" \
  "converto queue reserve1_ack_x8" "${q_c8:-?}" \
  "converto queue reserve500_ack_many" "${q_batch:-?}" \
  "converto engine postgres_c64 (drain)" "${e_pg64:-?}" \
  "converto engine postgres_c512 (drain)" "${e_pg:-?}"
if [[ -n $gw_c8 && -n $gw_c24 ]]; then
  echo "ratios (converto / graphile-worker):"
  echo "  queue one per slot  (reserve1_ack_x8 / c8):             $(ratio "${q_c8:-0}" "$gw_c8")   target >= 1"
  echo "  queue batched       (reserve500_ack_many / c24 batched): $(ratio "${q_batch:-0}" "$gw_c24")   target >= 1"
  echo "  engine on postgres  (postgres_c512 / c24 batched):       $(ratio "${e_pg:-0}" "$gw_c24")   target >= 0.5"
fi
