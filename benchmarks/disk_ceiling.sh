#!/usr/bin/env bash
# What the disk under a directory gives at all, cold, whatever reads it: one 1 GiB file of random
# bytes read with dd (O_DIRECT and buffered, several block sizes) and with fio (O_DIRECT at several
# queue depths and request sizes; psync threads as a thread pool issues them), the whole page cache
# dropped before every read (root). Each point runs REPEATS times; prints min / median / max MB/s.
# The ceiling the cold path (docs/usage.md, Cold reads) is measured against, issue 14.
#
#   sudo bash benchmarks/disk_ceiling.sh [DIR (default /tmp/fst-ceiling)] [REPEATS (default 3)]
set -euo pipefail
dir=${1:-/tmp/fst-ceiling}
repeats=${2:-3}
file=$dir/ceiling-1g.bin
mkdir -p "$dir"
if [[ ! -f $file || $(stat -c %s "$file") -ne $((1 << 30)) ]]; then
  dd if=/dev/urandom of="$file" bs=4M count=256 status=none
  sync
fi

drop() { sync; echo 3 > /proc/sys/vm/drop_caches; }

# MB/s of one dd read of the file (the last field dd prints, normalised to MB/s).
dd_rate() {
  drop
  dd if="$file" of=/dev/null "$@" 2>&1 | awk '/copied/ {v=$(NF-1); u=$NF; if (u=="GB/s") v*=1000; if (u=="kB/s") v/=1000; print v}'
}

# MB/s of one fio read of the file.
fio_rate() {
  drop
  fio --name=ceiling --filename="$file" --readonly --rw=read --size=1G --output-format=terse --terse-version=3 "$@" |
    awk -F';' '{printf "%.0f\n", $7 / 1000 * 1.024}'  # field 7: read bandwidth in KiB/s
}

# min median max of the numbers on stdin.
spread() { sort -n | awk '{v[NR]=$1} END {printf "%8.0f %8.0f %8.0f\n", v[1], v[int((NR+1)/2)], v[NR]}'; }

point() {
  local label=$1; shift
  printf '%-52s' "$label"
  for _ in $(seq "$repeats"); do "$@"; done | spread
}

echo "disk of $dir: $(df --output=source "$dir" | tail -1); $repeats reads per point, page cache dropped before each"
printf '%-52s%8s %8s %8s\n' "point" "min" "median" "max"
for bs in 1M 4M 16M 64M; do
  point "dd bs=$bs iflag=direct" dd_rate bs=$bs iflag=direct
done
point "dd bs=16M buffered" dd_rate bs=16M
for bs in 1M 4M 16M; do
  for depth in 1 4 16 32; do
    point "fio libaio O_DIRECT bs=$bs iodepth=$depth" fio_rate --ioengine=libaio --direct=1 --bs=$bs --iodepth=$depth
  done
done
for bs in 4M 16M; do
  for jobs in 4 16; do
    # Each job reads its own 1/jobs of the file (offset_increment), as reader threads share a file.
    point "fio psync O_DIRECT bs=$bs threads=$jobs" fio_rate --ioengine=psync --direct=1 --bs=$bs --thread \
      --numjobs=$jobs --size=$((1024 / jobs))M --offset_increment=$((1024 / jobs))M --group_reporting
    point "fio psync buffered bs=$bs threads=$jobs" fio_rate --ioengine=psync --direct=0 --bs=$bs --thread \
      --numjobs=$jobs --size=$((1024 / jobs))M --offset_increment=$((1024 / jobs))M --group_reporting
  done
done
