#!/usr/bin/env bash
# The GPU checks of the CUDA backend, in two steps, for a GPU machine that has the CUDA driver,
# compute-sanitizer and PyTorch but no GoogleTest, Google Benchmark or Eigen (the device tool's
# machines):
#
#   scripts/cuda_device_check.sh build   here, where nvcc and the -dev packages are: builds the
#                                        GPU test and benchmark into build-cuda/ (with the shared
#                                        libraries they need that a bare machine lacks)
#   scripts/cuda_device_check.sh run     there, build-cuda/ carried beside the tree: the GPU tests,
#                                        compute-sanitizer memcheck on them, the attention benchmark
#                                        at the issue's rows, torch SDPA on the same shapes, the
#                                        factorization benchmark; results and logs in $OUT (or
#                                        ./cuda-check-out)
#
# e.g. device run with carry ["build-cuda"] and command "scripts/cuda_device_check.sh run".
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="$root/build-cuda"

case "${1:-}" in
  build)
    cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release -DKVLAB_CUDA=ON >/dev/null
    cmake --build "$build" -j"$(nproc)" --target cuda_kernels_test decode_attention_cuda low_rank_cuda_bench
    mkdir -p "$build/lib"
    for bin in "$build/bin/cuda_kernels_test" "$build/bin/decode_attention_cuda" "$build/bin/low_rank_cuda_bench"; do
      ldd "$bin" | awk '/libbenchmark|libgomp/ { print $3 }' | xargs -r cp -L -t "$build/lib"
    done
    echo "[cuda_device_check] built: $(ls "$build/bin" | tr '\n' ' ')"
    ;;
  run)
    out="${OUT:-$root/cuda-check-out}"
    mkdir -p "$out"
    # A GPU test that finds no GPU fails here instead of skipping (an old driver, say).
    export KVLAB_EXPECT_GPU=1
    export LD_LIBRARY_PATH="$build/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    # cuBLAS and cuSOLVER (and what they load) come from the machine's CUDA 13 toolkit, too large
    # to carry: the usual places, then Python's nvidia packages.
    for dir in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib /usr/local/cuda-13*/lib64 \
      $(python3 -c 'import glob, site; print(" ".join(glob.glob(site.getsitepackages()[0] + "/nvidia/*/lib")))' 2>/dev/null); do
      if [ -d "$dir" ]; then export LD_LIBRARY_PATH="$LD_LIBRARY_PATH:$dir"; fi
    done
    missing="$(ldd "$build/bin/cuda_kernels_test" | awk '/not found/ { print $1 }' | tr '\n' ' ')"
    [ -z "$missing" ] || { echo "[cuda_device_check] libraries not found: $missing" >&2; exit 1; }
    sanitizer="$(command -v compute-sanitizer || echo "${CUDA_HOME:-/usr/local/cuda}/bin/compute-sanitizer")"
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv | tee "$out/gpu.txt"
    status=0
    echo "[cuda_device_check] GPU tests"
    timeout 300 "$build/bin/cuda_kernels_test" 2>&1 | tee "$out/tests.log" | tail -n 30 || status=1
    echo "[cuda_device_check] compute-sanitizer memcheck on the GPU tests"
    timeout 300 "$sanitizer" --tool memcheck --error-exitcode 3 "$build/bin/cuda_kernels_test" \
      --gtest_filter='CudaDecodeAttention.*:CudaWrite.*:CudaLowRank.*' >"$out/memcheck.log" 2>&1 || status=1
    tail -n 5 "$out/memcheck.log"
    echo "[cuda_device_check] decode_attention_cuda (the issue's rows: ctx 32768, both layouts, b 1 and 8)"
    timeout 300 "$build/bin/decode_attention_cuda" --benchmark_filter='ctx:32768/' --benchmark_min_time=0.2 \
      --benchmark_format=json --benchmark_out="$out/decode_attention_cuda.json" --benchmark_out_format=json |
      tail -n 45 || status=1
    grep -q '"real_time"' "$out/decode_attention_cuda.json" || { echo "[cuda_device_check] nothing measured" >&2; status=1; }
    echo "[cuda_device_check] xKV's group factorization, GPU against CPU"
    timeout 120 "$build/bin/low_rank_cuda_bench" --benchmark_format=json --benchmark_out="$out/low_rank.json" \
      --benchmark_out_format=json | tail -n 8 || status=1
    echo "[cuda_device_check] torch SDPA f16, the same shapes"
    timeout 120 python3 "$root/bench/torch_sdpa.py" | tee "$out/torch_sdpa.jsonl" || status=1
    exit $status
    ;;
  *)
    echo "usage: scripts/cuda_device_check.sh build|run" >&2
    exit 2
    ;;
esac
