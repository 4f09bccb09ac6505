#!/usr/bin/env bash
# Search benchmark, release build: requests/s and latency percentiles of a mix of search
# requests (`GET /v1/conversions` with tags, full text, statuses, labels, time ranges and every
# sort order; 20 records a page) at 100 connections (wrk), over 100,000 records, on SQLite and
# on PostgreSQL. The anchor is 476 req/s with p99 373 ms; the aim >= 4,760 req/s, p99 < 50 ms.
#
# The records are written in one statement each (the fixtures the index-plan test uses,
# converto-adapters/tests/fixtures/search_*.sql) into a database `converto migrate` created,
# then analysed; the server runs without workers, so only searches load it.
# Needs wrk, curl, bc, sqlite3 and psql (Debian packages); downloads nothing.
#
#   benches/search.sh                        # both backends, 30 s each
#   DURATION=10s BACKENDS=sqlite benches/search.sh
#   POSTGRES_URL=postgres://postgres@127.0.0.1:5432/test benches/search.sh
#   CONVERTO_BIN=/tmp/old/converto benches/search.sh   # an already built binary (before/after)
#   PER_QUERY=3s benches/search.sh           # also each request of the mix alone, 3 s each
#
# Besides requests/s, it prints the server's CPU time per request (user + system, from
# /proc), which other load on the machine skews far less than the rate.
set -euo pipefail
cd "$(dirname "$0")/.."

duration=${DURATION:-30s}
records=${RECORDS:-100000}
port=${PORT:-18081}
backends=${BACKENDS:-sqlite postgres}
pg_url=${POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/test}
pg_schema=converto_search_bench

for tool in wrk curl bc sqlite3 psql; do
  command -v "$tool" >/dev/null || { echo "needs $tool (apt-get install $tool)" >&2; exit 1; }
done

bin=${CONVERTO_BIN:-}
if [ -z "$bin" ]; then
  # Only the backends searched (and local blobs): the search path is the same in every build.
  cargo build --release --quiet -p converto-http --no-default-features --features sqlite,postgres,local
  bin=$PWD/target/release/converto
fi
work=$(mktemp -d)
server=
cleanup() {
  [ -n "$server" ] && kill "$server" 2>/dev/null
  wait 2>/dev/null || true
  if [[ " $backends " == *" postgres "* ]]; then
    psql -q "$pg_url" -c "DROP SCHEMA IF EXISTS $pg_schema, ${pg_schema}_wh CASCADE" >/dev/null 2>&1 || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

# The per-tenant request rate would cap the figure at the limit, not the server's speed.
printf '[tenant_defaults]\nrequests_per_second = 0\n' >"$work/converto.toml"

# The mix: each wrk thread walks this list round-robin. The anonymous tenant is `default`,
# which holds three in four of the records.
cat >"$work/mix.lua" <<'EOF'
local paths = {
  "/v1/conversions?limit=20",
  "/v1/conversions?limit=20&tag=tag7",
  "/v1/conversions?limit=20&tag=tag7&tag=photo&status=succeeded",
  "/v1/conversions?limit=20&q=mountain",
  "/v1/conversions?limit=20&q=lunar%20rov",
  "/v1/conversions?limit=20&q=turbine&tag=tag15",
  "/v1/conversions?limit=20&sort=-finished&tag=scan",
  "/v1/conversions?limit=20&label=project%3Dp3&q=bracket",
  "/v1/conversions?limit=20&status=failed&sort=created",
  "/v1/conversions?limit=20&finished_after=2026-06-01T00:00:10Z&finished_before=2026-06-01T00:01:00Z&tag=tag11",
  "/v1/conversions?limit=20&q=batch%2042&sort=finished",
  "/v1/conversions?limit=20&target_format=obj&status=succeeded&sort=-finished",
}
local i = 0
request = function()
  i = i + 1
  return wrk.format("GET", paths[(i % #paths) + 1])
end
EOF

load() { awk '{print $1, $2, $3}' /proc/loadavg; }

run() { # name store-url
  local name=$1 store=$2
  CONVERTO_LOG=warn "$bin" --config "$work/converto.toml" --data-dir "$work/data-$name" --store "$store" \
    serve --no-workers --listen "127.0.0.1:$port" >"$work/server-$name.log" 2>&1 &
  server=$!
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.1; done
  # Warm up, and check the mix answers 200 with records.
  for p in $(grep -o '"/v1[^"]*"' "$work/mix.lua" | tr -d '"'); do
    code=$(curl -s -o "$work/body.json" -w '%{http_code}' "http://127.0.0.1:$port$p")
    [ "$code" = 200 ] || { echo "$p answered $code: $(head -c 300 "$work/body.json")" >&2; exit 1; }
  done
  if [ -n "${PER_QUERY:-}" ]; then
    # Each request of the mix on its own: its rate and the server's CPU per request.
    for p in $(grep -o '"/v1[^"]*"' "$work/mix.lua" | tr -d '"'); do
      local before after n
      before=$(cpu_ticks "$server")
      n=$(wrk -t2 -c16 -d"$PER_QUERY" "http://127.0.0.1:$port$p" | awk '/requests in/ {print $1}')
      after=$(cpu_ticks "$server")
      printf '%-9s %8s requests  %7s ms CPU/request  %s\n' "$name" "$n" \
        "$(echo "scale=3; ($after - $before) * 1000 / $(getconf CLK_TCK) / $n" | bc -l)" "$p"
    done
  fi
  echo "== $name: wrk -t2 -c100 -d$duration (load average before: $(load))"
  local cpu_before cpu_after
  cpu_before=$(cpu_ticks "$server")
  wrk -t2 -c100 -d"$duration" --latency -s "$work/mix.lua" "http://127.0.0.1:$port" | tee "$work/wrk-$name.txt"
  cpu_after=$(cpu_ticks "$server")
  local rps p99 non2xx requests cpu_ms
  rps=$(awk '/Requests\/sec/ {print $2}' "$work/wrk-$name.txt")
  p99=$(awk '$1 == "99%" {print $2}' "$work/wrk-$name.txt")
  non2xx=$(awk '/Non-2xx/ {print $NF}' "$work/wrk-$name.txt")
  requests=$(awk '/requests in/ {print $1}' "$work/wrk-$name.txt")
  cpu_ms=$(echo "scale=3; ($cpu_after - $cpu_before) * 1000 / $(getconf CLK_TCK) / $requests" | bc -l)
  kill "$server"; wait "$server" 2>/dev/null || true; server=
  summary+=$(printf '%-9s search requests/s (100 connections): %s   p99: %s   non-2xx: %s   server CPU per request: %s ms   load average after: %s' \
    "$name" "$rps" "$p99" "${non2xx:-0}" "$cpu_ms" "$(load)")$'\n'
}

# User + system clock ticks the process has used (the database server's own, for PostgreSQL,
# are not counted: compare CPU per request within one backend).
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

summary=""
for backend in $backends; do
  case $backend in
    sqlite)
      db="$work/search.db"
      "$bin" --store "sqlite://$db" migrate >/dev/null
      start=$(date +%s.%N)
      { echo "PRAGMA journal_mode = WAL;"
        sed -e "s/?1/$records/g" -e "s/?2/'default'/g" converto-adapters/tests/fixtures/search_sqlite.sql
        # Merge the full-text index into one segment, as the server's background merge leaves
        # it (converto-adapters/src/sqlite/merge.rs) but at once, as a bulk load leaves many.
        echo "INSERT INTO converto_conversions_fts (converto_conversions_fts) VALUES ('optimize');"
        echo "ANALYZE;"; } | sqlite3 "$db" >/dev/null
      echo "sqlite: $records records loaded in $(echo "$(date +%s.%N) - $start" | bc -l | cut -c1-5) s"
      run sqlite "sqlite://$db"
      ;;
    postgres)
      psql -q "$pg_url" -c "DROP SCHEMA IF EXISTS $pg_schema, ${pg_schema}_wh CASCADE" >/dev/null 2>&1
      export CONVERTO_POSTGRES_SCHEMA=$pg_schema
      "$bin" --store "$pg_url" --queue "$pg_url" migrate >/dev/null
      start=$(date +%s.%N)
      { echo "SET search_path TO $pg_schema;"
        sed -e "s/\$1::bigint/$records::bigint/g" -e "s/\$2/'default'/g" converto-adapters/tests/fixtures/search_postgres.sql
        # VACUUM as autovacuum would after a bulk load (it is off on the development machines):
        # it merges the GIN indexes' pending lists, which every search would scan otherwise.
        echo "VACUUM ANALYZE conversions;"; } | psql -q -v ON_ERROR_STOP=1 "$pg_url" >/dev/null
      echo "postgres: $records records loaded in $(echo "$(date +%s.%N) - $start" | bc -l | cut -c1-5) s"
      run postgres "$pg_url"
      ;;
    *) echo "unknown backend $backend (sqlite, postgres)" >&2; exit 1 ;;
  esac
done

echo
printf '%s' "$summary"
echo "(2 cores: wrk and the server share them; other processes' load shows in the load averages)"
