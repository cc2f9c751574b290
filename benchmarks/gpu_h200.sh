#!/usr/bin/env bash
# The H200 runs of issues 11-14 (harness shape, MXFP4 explanation, regression verdicts,
# procurement), as named steps, so that a 10-minute device call runs the ones it has time for.
# Results and reports are packed into OUT_DIR; figures go to benchmarks/LOG.md.
#
#   bash benchmarks/gpu_h200.sh OUT_DIR SECONDS STEP...
#   steps: tests explain move procurement aa mxfp8 quant
set -uo pipefail
out=${1:?output folder}; budget=${2:?seconds}; shift 2
. "$(dirname "$0")/device_steps.sh"
bench() { python3 -m harness results_dir="$res" reports_dir="$res/reports" hardware=H200 "$@"; }
export -f bench

nvidia-smi --query-gpu=name,driver_version,memory.total,power.limit,clocks.max.sm --format=csv | tee "$out/gpu.txt"
for s in "$@"; do case $s in
  tests) gpu_tests;;  # the kernel tests and every gpu-marked one (device_steps.sh)
  explain)  # measured ceilings and each engine's MXFP4 path with kernel evidence
    step 150 python3 -m harness.explain_cli -o "$out/explain.html" 2>&1 | tee "$out/explain.txt";;
  move)  # issue 11: the native engine after the harness reshaping, same points as the LOG's baseline
    step 200 bash -c 'bench backend=triton_mxfp4 model=gpt-oss-20b model.synthetic=device sweep=none \
      -m workload.batch_size=1,8,64 workload.context_len=1024 workload.new_tokens=256 workload.repeats=3 run_id=move';;
  procurement)  # issue 14: batch ladders of both models at 1k and 8k context
    step 260 bash -c 'bench sweep=procurement backend=triton_mxfp4 model=gpt-oss-20b,gpt-oss-120b \
      model.synthetic=device workload.context_len=1024 workload.batch_size=1,4,16,64,256 workload.new_tokens=128 \
      workload.repeats=2 agreement.enabled=false run_id=procurement-1k'
    step 200 bash -c 'bench sweep=procurement backend=triton_mxfp4 model=gpt-oss-20b,gpt-oss-120b \
      model.synthetic=device workload.context_len=8192 workload.batch_size=1,4,16,64 workload.new_tokens=128 \
      workload.repeats=2 agreement.enabled=false run_id=procurement-8k';;
  aa)  # issue 13: the nightly subset three times in a row, an A/A experiment
    for i in 1 2 3; do
      step 120 bash -c "bench sweep=none backend=triton_mxfp4 model=gpt-oss-20b model.synthetic=device \
        -m workload.batch_size=1,8,64 workload.context_len=128,2048 workload.new_tokens=128 workload.repeats=5 \
        workload.warmup=2 agreement.enabled=false run_id=aa-$i"
    done;;
  mxfp8)  # issue 12: mxfp4_mxfp8 against mxfp4 on both models
    step 260 python3 benchmarks/bench_mxfp8.py 2>&1 | tee "$out/mxfp8.md";;
  quant)  # issue 12: MXFP4 against bf16, the explain preset, both models
    step 300 bash -c 'bench sweep=explain backend=triton_mxfp4 model=gpt-oss-20b,gpt-oss-120b \
      model.synthetic=device allow_failed_points=true run_id=quant';;
  *) echo "unknown step $s";;
esac; done
ls "$res" 2>/dev/null && tar czf "$out/results.tgz" -C "$res" --exclude '*.json.gz' .
ls -la "$out"
