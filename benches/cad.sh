#!/usr/bin/env bash
# STEP -> STL: `converto convert` (the OpenCASCADE route, run as the service runs it: staged
# input, occt-draw child, output streamed back) against occt-draw's own command line doing the
# same work (read, incmesh with the same deflections, writestl) on the same file. Wall time and
# peak resident memory from /usr/bin/time -v (the largest single process of each run: for
# converto, the larger of converto itself and its occt-draw child), best of $RUNS.
#
# Needs occt-draw, libocct-draw-dev and occt-misc (the sample parts), and GNU time:
#   apt-get install --no-install-recommends occt-draw libocct-draw-dev occt-misc time
#
#   benches/cad.sh                                  # the largest sample part, linkrods.step
#   PART=/path/to/part.step LINEAR=0.05 RUNS=5 benches/cad.sh
#   CONVERTO=target/debug/converto benches/cad.sh   # skip the release build
set -euo pipefail
cd "$(dirname "$0")/.."

part=${PART:-/usr/share/opencascade/data/step/linkrods.step}
linear=${LINEAR:-0.1}
angular=${ANGULAR:-20}
runs=${RUNS:-3}

for cmd in occt-draw /usr/bin/time; do
  command -v "$cmd" >/dev/null || { echo "needs $cmd (see the header of $0)" >&2; exit 1; }
done
[ -f "$part" ] || { echo "no part at $part (Debian package occt-misc)" >&2; exit 1; }

if [ -z "${CONVERTO:-}" ]; then
  cargo build --release --quiet -p converto-http
  CONVERTO=target/release/converto
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "part: $part ($(stat -c %s "$part") bytes), linear_deflection $linear, angular_deflection $angular"

# Runs "$@" $runs times (from a fresh data directory); prints the best wall time (s) and the
# peak RSS (MiB) of that run.
measure() {
  local best="" best_rss=""
  for _ in $(seq "$runs"); do
    rm -rf "$work/data"
    /usr/bin/time -v -o "$work/time.txt" "$@" >/dev/null 2>&1
    local wall rss
    wall=$(awk -F': ' '/Elapsed \(wall clock\)/ { n = split($2, p, ":"); s = 0; for (i = 1; i <= n; i++) s = s * 60 + p[i]; print s }' "$work/time.txt")
    rss=$(awk -F': ' '/Maximum resident set size/ { print $2 }' "$work/time.txt")
    if [ -z "$best" ] || awk -v a="$wall" -v b="$best" 'BEGIN { exit !(a < b) }'; then
      best=$wall best_rss=$rss
    fi
  done
  awk -v w="$best" -v r="$best_rss" 'BEGIN { printf "%.2f s, peak %.0f MiB", w, r / 1024 }'
}

ours=("$CONVERTO" --data-dir "$work/data" convert "$part" --to stl -o "$work/ours.stl"
  --options "{\"linear_deflection\": $linear, \"angular_deflection\": $angular}")
engine=(env -i LC_ALL=C occt-draw -b -c
  "pload MODELING DATAEXCHANGE; testreadstep {$part} s; incmesh s $linear -a $angular; writestl s {$work/engine.stl}; exit 0")

echo "converto convert: $(measure "${ours[@]}")  -> $(stat -c %s "$work/ours.stl") bytes"
echo "occt-draw alone:  $(measure "${engine[@]}")  -> $(stat -c %s "$work/engine.stl") bytes"
