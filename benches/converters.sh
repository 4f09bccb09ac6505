#!/usr/bin/env bash
# Times converto's STL -> OBJ against `assimp export` on the same generated STL, binary and
# ASCII, in one run, and prints each ratio and converto's peak memory. Downloads nothing: needs
# the Rust toolchain and `assimp` (Debian package assimp-utils).
#
#   benches/converters.sh                 # binary: 1,000,000 triangles; ASCII: 260,000 (~70 MB)
#   TRIANGLES=200000 ASCII_TRIANGLES=100000 RUNS=5 benches/converters.sh
#   MESH_BIN=/tmp/old/mesh_convert MESH_ONLY=1 benches/converters.sh   # another build; no image part
set -euo pipefail
cd "$(dirname "$0")/.."

triangles=${TRIANGLES:-1000000}
ascii_triangles=${ASCII_TRIANGLES:-260000}
runs=${RUNS:-3}

if ! command -v assimp >/dev/null; then
  echo "needs the assimp command (Debian package assimp-utils)" >&2
  exit 1
fi

ours=${MESH_BIN:-}
if [ -z "$ours" ]; then
  cargo build --release --quiet --features mesh --example mesh_convert
  ours=target/release/examples/mesh_convert
fi
echo "load before the run: $(cut -d' ' -f1-3 /proc/loadavg) (others on this machine skew the figures)"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# Prints the best wall time in seconds of $runs runs of the command. With $fresh set, that file
# (the command's output) is removed before each run, untimed: every run then writes a new file,
# as the first does and as a conversion does (replacing the last run's output made ext4 write
# it back and drop the old file's pages within the timed run: 5-15 ms for either tool).
best_of() {
  local best="" start end elapsed
  for _ in $(seq "$runs"); do
    if [ -n "${fresh:-}" ]; then rm -f "$fresh"; fi
    start=$(date +%s%N)
    "$@" >/dev/null 2>&1
    end=$(date +%s%N)
    elapsed=$(( end - start ))
    if [ -z "$best" ] || [ "$elapsed" -lt "$best" ]; then best=$elapsed; fi
  done
  awk -v ns="$best" 'BEGIN { printf "%.3f", ns / 1e9 }'
}

# Peak resident memory (MiB) and CPU seconds (user + system) of one run of the command (GNU
# time), or "?" without it. On a loaded machine CPU time varies less than wall time.
peak_and_cpu() {
  if [ -x /usr/bin/time ]; then
    /usr/bin/time -f '%M %U %S' -o "$work/rss" "$@" >/dev/null 2>&1 \
      && awk '{ printf "%.0f MiB, cpu %.2fs", $1 / 1024, $2 + $3 }' "$work/rss"
  else
    printf '?'
  fi
}

faces() { assimp info "$1" -r 2>/dev/null | awk '/^Faces:/ { print $2 }'; }

# STL -> OBJ by both, on the file $1 (described as $2). Without the preview: assimp renders none.
mesh_bench() {
  local input=$1 what=$2 t_ours t_assimp
  echo "== STL -> OBJ, $what: $(stat -c %s "$input") bytes"
  t_ours=$(fresh="$work/ours.obj" best_of "$ours" "$input" "$work/ours.obj" '{"preview": false}')
  t_assimp=$(fresh="$work/assimp.obj" best_of assimp export "$input" "$work/assimp.obj")
  echo "converto: ${t_ours}s, peak $(peak_and_cpu "$ours" "$input" "$work/ours.obj" '{"preview": false}') -> $(faces "$work/ours.obj") faces (assimp info -r), $(stat -c %s "$work/ours.obj") bytes"
  echo "assimp:   ${t_assimp}s, peak $(peak_and_cpu assimp export "$input" "$work/assimp.obj") -> $(faces "$work/assimp.obj") faces (assimp info -r), $(stat -c %s "$work/assimp.obj") bytes"
  awk -v a="$t_assimp" -v o="$t_ours" -v w="$what" 'BEGIN { printf "ratio (%s): converto is %.1fx faster than assimp export (goal: 6x; best of '"$runs"' runs each)\n", w, a / o }'
  rm -f "$work/ours.obj" "$work/assimp.obj"
}

"$ours" generate "$work/in.stl" "$triangles"
mesh_bench "$work/in.stl" "binary STL, $(( ($(stat -c %s "$work/in.stl") - 84) / 50 )) triangles"
rm -f "$work/in.stl"
"$ours" generate "$work/in-ascii.stl" "$ascii_triangles" ascii
mesh_bench "$work/in-ascii.stl" "ASCII STL, $(grep -c '^ *facet' "$work/in-ascii.stl") triangles"
rm -f "$work/in-ascii.stl"
[ -n "${MESH_ONLY:-}" ] && exit 0

# ---------------------------------------------------------------------------------------------
# Image: a 24-megapixel JPEG (6000x4000, a synthetic photo) to 240p and 720p JPEGs at quality 85:
# converto (one conversion, both variants, examples/image_thumbs.rs) against vipsthumbnail (one
# run per size, as it makes one size a run), best of $runs each. Needs vipsthumbnail (Debian
# package libvips-tools).
#
#   RUNS=5 benches/converters.sh

if ! command -v vipsthumbnail >/dev/null; then
  echo "image: needs the vipsthumbnail command (Debian package libvips-tools)" >&2
  exit 1
fi

cargo build --release --quiet --features image --example image_thumbs
thumbs=target/release/examples/image_thumbs

"$thumbs" generate "$work/photo.jpeg" 6000x4000
mkdir -p "$work/thumbs"

vips_720p() { vipsthumbnail "$work/photo.jpeg" -s x720 -o "$work/vips_720p.jpeg[Q=85]"; }
vips_both() {
  vips_720p && vipsthumbnail "$work/photo.jpeg" -s x240 -o "$work/vips_240p.jpeg[Q=85]"
}

t_ours_img=$(best_of "$thumbs" thumbs "$work/photo.jpeg" "$work/thumbs" 240p,720p 85)
t_vips=$(best_of vips_both)
t_vips_720=$(best_of vips_720p)

sizes() { for f in "$@"; do vipsheader "$f" | awk '{ printf "%s ", $2 }'; done; }
echo "converto:      ${t_ours_img}s  -> $(sizes "$work"/thumbs/out/240p.jpeg "$work"/thumbs/out/720p.jpeg)"
echo "vipsthumbnail: ${t_vips}s  -> $(sizes "$work/vips_240p.jpeg" "$work/vips_720p.jpeg")(720p alone: ${t_vips_720}s)"
awk -v v="$t_vips" -v o="$t_ours_img" 'BEGIN { printf "ratio: converto takes %.2fx the time of vipsthumbnail for both sizes (goal: at most 1.5x; best of '"$runs"' runs each)\n", o / v }'
