#!/usr/bin/env bash
# A/B of the AVX2 integer decode kernels (kernels/cpu/kv_int_avx2.cc) of two versions in ONE
# process (bench/kernel_ab): both are compiled into one binary under different namespaces and run
# interleaved on the same buffers, L1-hot and swept over a 256 MiB pool from DRAM, so that a noisy
# host (steal, frequency) slows both alike. Separate binaries run minutes apart moved by 30-50% on
# the shared hosts this project measures on; this gives new / old to a few percent.
#
#   scripts/kernel_ab.sh OLD [NEW] [L1|DRAM|both] [bits,d,rows,key_group,value_group ...]
#
# OLD and NEW are commits (NEW defaults to the working tree, "."). Needs g++ with AVX2; runs the
# AVX2 kernels whatever the CPU's widest ISA.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
[ $# -ge 1 ] || { sed -n '2,12p' "$0"; exit 2; }
old="$1"
new="${2:-.}"
shift $(( $# >= 2 ? 2 : 1 ))
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

# The tree of a version: the working tree for ".", else the commit's kernels/ and base/.
tree_of() {
  if [ "$1" = . ]; then echo "$root"; return; fi
  mkdir -p "$tmp/$2"
  git -C "$root" archive "$1" kernels base | tar -x -C "$tmp/$2"
  echo "$tmp/$2"
}
old_tree="$(tree_of "$old" old)"
new_tree="$(tree_of "$new" new)"

flags=(-O3 -DNDEBUG -fno-semantic-interposition -fopenmp -std=c++20)  # the kernels' flags in CMake
for v in old new; do
  t="${v}_tree"
  g++ "${flags[@]}" -I"${!t}" -Dkvlab="kvlab_ab_$v" -DENTRY="kernel_ab_$v" \
      -DKERNELS="\"${!t}/kernels/cpu/kv_int_avx2.cc\"" -c "$root/bench/kernel_ab/version.cc" -o "$tmp/$v.o"
done
g++ "${flags[@]}" "$root/bench/kernel_ab/main.cc" "$tmp/old.o" "$tmp/new.o" -o "$tmp/kernel_ab"
cpu="$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), family $(grep -m1 'cpu family' /proc/cpuinfo | cut -d: -f2 | xargs) model $(grep -m1 '^model' /proc/cpuinfo | grep -v name | cut -d: -f2 | xargs)"
echo "kernel_ab: old $old, new $new; $cpu; AVX2 kernels, one thread"
"$tmp/kernel_ab" "$@"
