#!/usr/bin/env bash
# The GPU acceptance runs of the model layer, the native engine, telemetry, reports and the
# transformers adapter, as sweeps of the harness itself, in one 10-minute call on an H100.
# Figures go to benchmarks/LOG.md.
#
#   bash benchmarks/gpu_acceptance.sh OUT_DIR [SECONDS]
#
# Steps run in order of importance, each bounded so that the whole ends within SECONDS (default
# 540) and the results and reports are still packed into OUT_DIR.
set -uo pipefail
out=${1:?output folder}
deadline=$(( SECONDS + ${2:-540} - 25 ))
mkdir -p "$out"
export PYTHONUNBUFFERED=1 GPTOSS_BENCH_CACHE=${GPTOSS_BENCH_CACHE:-/tmp/gptoss-cache}
res=${GPTOSS_RESULTS:-/tmp/gptoss-results}

step() {  # step CAP_S CMD...: run CMD with at most CAP_S seconds and no more than what is left
  local cap=$1; shift
  local left=$(( deadline - SECONDS ))
  (( left < 20 )) && { echo "skipped for time: $*"; return; }
  timeout $(( cap < left ? cap : left )) "$@"
}
bench() { python3 -m harness workload.repeats=2 workload.new_tokens=16 "$@" results_dir="$res" reports_dir="$res/reports"; }
export -f bench; export res

nvidia-smi --query-gpu=name,driver_version,memory.total,power.limit,clocks.max.sm --format=csv | tee "$out/gpu.txt"
# The synthetic 20b checkpoint on disk: generated, then validated (every engine below loads it).
step 60 python3 -m harness.model.synthetic --model gpt-oss-20b --seed 0
# The native engine's acceptance sweep, NVML on, the first point profiled.
step 170 bash -c 'bench backend=triton_mxfp4 model=gpt-oss-20b workload.batch_size=1,8,64 workload.context_len=1024,8192 telemetry.profile=first hardware=H100'
# Model layer: torch_ref on 20b from disk and on 120b built in device memory, batch 4, 16 decode steps.
for m in 'model=gpt-oss-20b' 'model=gpt-oss-120b model.synthetic=device'; do
  step 90 bash -c "bench backend=torch_ref $m sweep=none workload.batch_size=4 workload.context_len=1024 workload.new_tokens=17 workload.repeats=1 agreement.enabled=false hardware=H100"
done
# Engines side by side on the same 20b checkpoint.
step 200 bash -c 'bench backend=triton_mxfp4,torch_ref,transformers model=gpt-oss-20b workload.batch_size=1,8 workload.context_len=1024 telemetry.profile=first hardware=H100'
step 150 bash -c 'bench backend=triton_mxfp4 model=gpt-oss-120b model.synthetic=device workload.batch_size=1,8 workload.context_len=1024 hardware=H100'
step 60 python3 benchmarks/telemetry_overhead.py --rounds 3 --steps 100

python3 - "$res" <<'EOF' | tee "$out/points.txt"
import sys, pandas as pd, harness.results as R
df = R.load(f"{sys.argv[1]}/2*")
cols = ["run_id", "backend", "model", "batch_size", "context_len", "status", "ttft_ms", "tpot_ms_p50", "tpot_ms_p99",
        "decode_tok_s", "mbu", "prefill_mfu", "agreement", "load_s", "weights_gib", "kv_cache_gib", "peak_mem_gib",
        "torch_peak_gib", "power_w_mean", "decode_energy_j", "energy_j_per_tok", "energy_source", "throttled", "error"]
pd.set_option("display.width", 300, "display.max_columns", 40, "display.max_colwidth", 50)
print(df[[c for c in cols if c in df]].to_string())
EOF
tar czf "$out/results.tgz" -C "$res" .
