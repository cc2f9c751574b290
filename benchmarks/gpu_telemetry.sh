#!/usr/bin/env bash
# Issue 5's GPU acceptance in one call on an H100: the gpu-marked telemetry tests, the overhead
# benchmark on the launch-bound stand-in and on triton_mxfp4 (20b), a 20b sweep with NVML on and
# every point profiled, and benchmarks/telemetry_check.py on its run folder. Figures go to
# benchmarks/LOG.md.
#
#   bash benchmarks/gpu_telemetry.sh OUT_DIR
set -uo pipefail
out=${1:?output folder}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 GPTOSS_BENCH_CACHE=${GPTOSS_BENCH_CACHE:-/tmp/gptoss-cache}
res=${GPTOSS_RESULTS:-/tmp/gptoss-results}

nvidia-smi --query-gpu=name,driver_version,power.limit,clocks.max.sm --format=csv | tee "$out/gpu.txt"
timeout 150 python3 -m pytest -q -s -p no:cacheprovider tests/test_telemetry_gpu.py tests/test_telemetry.py \
  tests/test_telemetry_kernels.py > "$out/tests.txt" 2>&1; tail -3 "$out/tests.txt"
timeout 150 python3 benchmarks/telemetry_overhead.py --rounds 15 --steps 100 | tee "$out/overhead_decode_like.md"
timeout 200 python3 benchmarks/telemetry_overhead.py --backend triton_mxfp4 --model gpt-oss-20b --rounds 8 \
  --steps 200 | tee "$out/overhead_triton_20b.md"
timeout 200 python3 -m harness backend=triton_mxfp4 model=gpt-oss-20b model.synthetic=device \
  workload.batch_size=1,8 workload.context_len=1024,8192 workload.repeats=2 workload.new_tokens=512 \
  telemetry.profile=all hardware=H100 results_dir="$res" reports_dir="$res/reports" 2>&1 | tail -15
run=$(ls -d "$res"/2* | tail -1)
python3 benchmarks/telemetry_check.py "$run" | tee "$out/check.txt"
tar czf "$out/run.tgz" -C "$run" --exclude logs .
cp "$res"/reports/*.html "$out/report.html"
ls -la "$out"
