#!/usr/bin/env bash
# The GPU acceptance runs of the model layer, the native engine, telemetry, reports and the
# transformers adapter, as sweeps of the harness itself. Figures go to benchmarks/LOG.md.
#
#   bash benchmarks/gpu_acceptance.sh STAGE OUT_DIR      # STAGE: models | engines | all
#
# Each stage fits one 10-minute call on an H100; results and reports are packed into OUT_DIR.
set -uo pipefail
stage=${1:?stage: models, engines or all}
out=${2:?output folder}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 GPTOSS_BENCH_CACHE=${GPTOSS_BENCH_CACHE:-/tmp/gptoss-cache}
res=${GPTOSS_RESULTS:-/tmp/gptoss-results}
bench() { python3 -m harness "$@" results_dir="$res" reports_dir="$res/reports"; }  # sweeps are multirun by default

nvidia-smi --query-gpu=name,driver_version,memory.total,power.limit,clocks.max.sm --format=csv | tee "$out/gpu.txt"

if [[ $stage == models || $stage == all ]]; then
  timeout 120 python3 -m pytest -m gpu -q -p no:cacheprovider tests/test_telemetry_gpu.py tests/test_torch_ref.py 2>&1 | tail -15
  # Model layer: the synthetic 20b checkpoint on disk, generated, validated and loaded by torch_ref;
  # 120b device-direct. Batch 4, 16 decode steps after the prefill.
  python3 -m harness.model.synthetic --model gpt-oss-20b --seed 0
  python3 -c "import time; from harness.model.checkpoint import validate_checkpoint; from harness.model.synthetic import synthetic_checkpoint; from harness.model.spec import get_spec; p = synthetic_checkpoint(get_spec('gpt-oss-20b'), progress=False); t = time.perf_counter(); validate_checkpoint(p); print(f'validated {p} in {time.perf_counter() - t:.2f} s')"
  for m in "model=gpt-oss-20b" "model=gpt-oss-120b model.synthetic=device"; do
    timeout 200 bash -c "$(declare -f bench); res=$res; bench backend=torch_ref $m sweep=none workload.batch_size=4 \
      workload.context_len=1024 workload.new_tokens=17 workload.repeats=1 agreement.enabled=false hardware=H100"
  done
  timeout 60 python3 benchmarks/telemetry_overhead.py 2>&1 | tail -12
  # The native engine's acceptance sweep (NVML on, the first point profiled).
  timeout 240 bash -c "$(declare -f bench); res=$res; bench backend=triton_mxfp4 model=gpt-oss-20b model.synthetic=device \
    workload.batch_size=1,8,64 workload.context_len=1024,8192 telemetry.profile=first hardware=H100"
fi

if [[ $stage == engines || $stage == all ]]; then
  # Engines side by side on 20b, same checkpoint, then the native engine on 120b.
  timeout 330 bash -c "$(declare -f bench); res=$res; bench backend=triton_mxfp4,torch_ref,transformers model=gpt-oss-20b \
    workload.batch_size=1,8 workload.context_len=1024 telemetry.profile=first hardware=H100"
  timeout 240 bash -c "$(declare -f bench); res=$res; bench backend=triton_mxfp4 model=gpt-oss-120b model.synthetic=device \
    workload.batch_size=1,8 workload.context_len=1024,8192 telemetry.profile=first hardware=H100"
fi

python3 - "$res" <<'EOF' | tee "$out/points.txt"
import sys, pandas as pd, harness.results as R
df = R.load(f"{sys.argv[1]}/2*")
cols = ["run_id", "backend", "model", "quant", "batch_size", "context_len", "status", "ttft_ms", "tpot_ms_p50",
        "decode_tok_s", "mbu", "mfu", "prefill_mfu", "agreement", "load_s", "weights_gib", "peak_mem_gib",
        "torch_peak_gib", "power_w_mean", "energy_j_per_tok", "energy_source", "throttled", "error"]
pd.set_option("display.width", 250, "display.max_columns", 40, "display.max_colwidth", 60)
print(df[[c for c in cols if c in df]].to_string())
EOF
tar czf "$out/results-$stage.tgz" -C "$res" .
