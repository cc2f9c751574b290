#!/usr/bin/env bash
# The H200 runs of issues 15 and 16: vLLM 0.26.0 from an offline bundle beside our engine, its
# server, its own `vllm bench latency` as a cross-check, and the engine's own targets. Named steps,
# so that each 10-minute device call runs the ones it has time for; figures go to benchmarks/LOG.md.
#
#   bash benchmarks/gpu_peers.sh OUT_DIR SECONDS STEP...
#   steps: stage:N (copy .carryN/* to /tmp/stage)  wheels  restore (RESTORE=benchmarks/runs/...)  install
#          sweep  peers  peers8k  peers120b  paths (PATHS="marlin ..." to choose, PATH_CAP=seconds each)
#          ttft  serve  openloop  latency (LATENCY="BATCHxOUT[@CHUNK] ...")  ab (ROUNDS=3)  check
#          engine  gemv  llama  tests (TESTS="tests/test_x.py ...")
#
# The bundle (docs/offline-bundles.md) arrives in chunks, one device call each, in ignored .carryN
# folders; `install` verifies and unpacks it. Worker groups of vLLM capture CUDA graphs only at the
# batch sizes measured (cudagraph_capture_sizes): the same graphs those batches replay under vLLM's
# default list, without ~70 s of capturing the 80 others.
set -uo pipefail
out=${1:?output folder}; budget=${2:?seconds}; shift 2
. "$(dirname "$0")/device_steps.sh"
[ -f /tmp/vllm.env ] && . /tmp/vllm.env
bench() { python3 -m harness results_dir="$res" reports_dir="$res/reports" hardware=H200 model=gpt-oss-20b \
  workload.context_len=1024 workload.new_tokens=256 workload.repeats=3 "$@"; }
# Full-length warm-up calls until their TTFTs settle and none compiles (workload.warmup_max): vLLM's
# JIT monitor logged Triton compilations of its MoE routing kernels inside measured requests after one
# 4-token warm-up,
# and its own `bench latency` at batch 8 prefilled in 1.39, 0.15, 1.31, 1.37, 0.71 s, then in 0.11 s
# (2026-12-03); `bench latency` itself gets 8 warm-up iterations. Both modes and `bench latency`
# prefill in chunks of the same 16384 tokens (vLLM's offline default on an H200; its server's is
# 8192), so their TTFTs compare.
CHUNK=16384
# Every vLLM point is profiled (vLLM's own profiler in its engine core: kernels.parquet, traces/), and
# every Triton compilation inside inference logged (vLLM names a kernel once otherwise), so that
# the warm-up sees each one and jit_compiles counts them all.
JIT=+backend.engine_args.jit_monitor_verbose=true
vllm_bench() { bench backend=vllm backend.python=python3 '+backend.engine_args.cudagraph_capture_sizes=[1,8,64,256]' $JIT \
  backend.max_num_batched_tokens=$CHUNK workload.warmup=2 workload.warmup_tokens=256 workload.warmup_max=10 \
  telemetry.profile=all "$@"; }
serve() { bench backend=vllm_serve backend.python=python3 backend.slo_ttft_ms=2000 backend.slo_tpot_ms=15 \
  backend.max_num_batched_tokens=$CHUNK 'backend.serve_args=["--cudagraph-capture-sizes","1","8","64"]' \
  workload.warmup=2 workload.warmup_tokens=256 workload.warmup_max=10 "$@"; }
# sweep=peers into run folder $1 (its arms, the rest of the overrides after it), or the rest of it
# where an earlier call began it; vLLM's arms capture graphs at the measured batch sizes only
VLLM="backend.python=python3 +backend.engine_args.cudagraph_capture_sizes=[1,8,64,256] $JIT"
peers_sweep() {
  local id=$1; shift
  if [ -f "$res/$id/config.yaml" ]; then
    step 570 python3 -m harness resume=true run_id=$id results_dir="$res" reports_dir="$res/reports"
  else
    step 570 python3 -m harness sweep=peers hardware=H200 run_id=$id results_dir="$res" reports_dir="$res/reports" "$@"
  fi
}
# `bench_latency BATCHxOUT[@CHUNK] DIR`: one `vllm bench latency` run, its JSON to DIR/latency-BATCHxOUT.json
bench_latency() {
  local p=$1 b=${1%x*} n=${1#*x} c=$CHUNK
  [[ $n == *@* ]] && { c=${n#*@}; n=${n%@*}; }
  mkdir -p "$2"
  ckpt=${ckpt:-$(python3 -m harness.model.synthetic --model gpt-oss-20b | tail -1 | cut -f1)}  # written once
  step 200 python3 -m vllm.entrypoints.cli.main bench latency --model "$ckpt" --input-len 1024 --output-len $n \
    --batch-size $b --num-iters-warmup 8 --num-iters 8 --disable-detokenize --skip-tokenizer-init \
    --no-enable-prefix-caching --max-model-len 1280 --max-num-seqs 256 --cudagraph-capture-sizes 1 8 64 256 \
    --max-num-batched-tokens $c --output-json "$2/latency-$p.json" > "$out/latency-$p.log" 2>&1
  tail -3 "$out/latency-$p.log"
}
export CHUNK JIT VLLM; export -f bench vllm_bench serve peers_sweep

for s in "$@"; do case $s in
  stage:*)
    mkdir -p /tmp/stage && cp ".carry${s#stage:}"/* /tmp/stage/ && ls -la /tmp/stage;;
  wheels)  # the harness's wheels the GPU image lacks (hydra, plotly, nvtx, ruptures; .whl carried)
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
      .whl/*.whl .whl/*.tar.gz;;
  restore)  # run folders an earlier machine measured, into the results folder to resume there: those
    # kept in the tree (RESTORE=benchmarks/runs/h200-2026-12-03: run folders and latency JSONs)
    mkdir -p "$res" && cp -r "${RESTORE:?RESTORE=a folder of run folders in the tree}"/* "$res"/ && ls "$res";;
  install)  # the bundle (after `wheels`)
    bash /tmp/stage/install.sh /tmp/vllm > /tmp/vllm.env && . /tmp/vllm.env && cat /tmp/vllm.env
    python3 -c "import vllm, hydra, plotly; print('vllm', vllm.__version__)"
    # the 20b checkpoint, unless CHECKPOINT=none (a call that goes on to peers120b, which deletes it)
    [ "${CHECKPOINT:-}" = none ] || step 240 python3 -m harness.model.synthetic --model gpt-oss-20b | tee "$out/checkpoint.txt";;
  peers)  # issue 15 item 2 / issue 16: both engines on the same checkpoint, context 1k
    # (ENGINES="triton vllm" and BATCHES=1,8,64,256 to choose; a subset gets a run folder of its own)
    b=${BATCHES:-1,8,64,256}; tag=${BATCHES:+-b${b//,/-}}
    [[ " ${ENGINES:-triton vllm} " == *" triton "* ]] && step 150 bench backend=triton_mxfp4 -m workload.batch_size=$b run_id=peers-triton$tag
    [[ " ${ENGINES:-triton vllm} " == *" vllm "* ]] && step 330 vllm_bench -m workload.batch_size=$b run_id=peers-vllm-auto$tag;;
  sweep)  # item 2 in one run folder: sweep=peers (triton_mxfp4 and vLLM's MoE paths, 20b, batch 1-256,
    # context 1k and 8k, every point profiled); a call that runs out of time keeps the points it
    # finished, and the next `sweep` call resumes the rest
    peers_sweep peers model=gpt-oss-20b "arms=['backend=triton_mxfp4','backend=vllm backend.moe_path=auto $VLLM',\
'backend=vllm backend.moe_path=marlin $VLLM','backend=vllm backend.moe_path=triton_unfused $VLLM']";;
  peers8k)  # context 8k (batch 256 x 8k would need 103 GB of KV cache beside 13 GB of weights)
    step 150 bench backend=triton_mxfp4 telemetry.profile=all workload.context_len=8192 -m workload.batch_size=1,8,64 run_id=peers8k-triton
    step 330 vllm_bench workload.context_len=8192 -m workload.batch_size=1,8,64 run_id=peers8k-vllm-auto;;
  peers120b)  # 120b, both engines in one run folder (resumed as `sweep` is): its 61 GiB checkpoint
    # fits the 64 GiB disk only once the 20b one is gone; vLLM's group needs ~2 min to start
    rm -rf "$GPTOSS_BENCH_CACHE"/checkpoints/gpt-oss-20b-*
    step 200 python3 -m harness.model.synthetic --model gpt-oss-120b | tee -a "$out/checkpoint.txt"
    peers_sweep peers120b model=gpt-oss-120b -m workload.batch_size=1,8,64 workload.context_len=1024 \
      "arms=['backend=triton_mxfp4','backend=vllm backend.moe_path=auto $VLLM']";;
  ttft)  # offline vLLM's TTFT with each point's batch admitted together (backend.admit=batch, the
    # default) and streamed into the running engine one by one (as LLM.generate does; ADMITS="batch"
    # or "stream" to choose); the batch-1 and batch-8 traces come back for the GPU's idle time (batch
    # 1 x 1k: 18 ms of kernels beside 31 ms of host time unprofiled, 2026-12-04)
    [[ " ${ADMITS:-batch stream} " == *" batch "* ]] && step 280 vllm_bench backend.admit=batch -m workload.batch_size=1,8,64 run_id=ttft-batch
    [[ " ${ADMITS:-batch stream} " == *" stream "* ]] && step 280 vllm_bench backend.admit=stream -m workload.batch_size=1,8,64 run_id=ttft-stream
    (cd "$res" && tar czf "$out/ttft-traces.tgz" ttft-*/traces/*-b[18]-*.json.gz);;
  check)  # the timing cross-check: the `ttft` step's points against the `latency` step's (CHECK_RUN and
    # CHECK_SETUP to choose, e.g. CHECK_RUN=peers CHECK_SETUP=moe_path=auto)
    python3 benchmarks/cross_check.py "$res/${CHECK_RUN:-ttft-batch}" "$res"/latency/latency-*.json \
      ${CHECK_SETUP:+--setup $CHECK_SETUP} | tee "$out/cross_check.md";;
  paths)  # vLLM's other MXFP4 MoE paths on sm_90 (FlashInfer's CUTLASS MoE compiles with nvcc on
    # first use: more than 300 s on the H200, 2026-12-03)
    for p in ${PATHS:-marlin triton_unfused flashinfer_cutlass_bf16}; do
      step ${PATH_CAP:-300} vllm_bench backend.moe_path=$p -m workload.batch_size=1,8,64,256 run_id=peers-vllm-$p allow_failed_points=true
    done;;
  serve)  # vLLM's server, closed loop at concurrency = batch, SLO of MLPerf's interactive gpt-oss-120b
    step 330 serve -m workload.batch_size=1,8,64 run_id=serve-closed;;
  openloop)  # the same server under Poisson arrivals of 8 req/s, 128 requests
    step 300 serve backend.request_rate=8 backend.num_requests=128 workload.batch_size=64 workload.repeats=1 run_id=serve-open;;
  latency)  # vLLM's own `vllm bench latency` on the same checkpoint and engine settings: BATCHxOUT
    # with OUT 256 checks TTFT + 255 TPOT, with OUT 1 (prefill and the first token) TTFT alone; its
    # JSONs go to $res/latency, so a `check` in a later call on the same machine finds them
    for p in ${LATENCY:-1x256 64x256 1x1 8x1 64x1}; do bench_latency "$p" "$res/latency"; done;;
  ab)  # batch 1's TTFT, bench's and ours in turn, ROUNDS rounds (3), the order swapped each round: its
    # 1,024-token prefill is launch-bound, and engine starts on one machine differed by ~10% (47.0-58.1
    # ms ours, bench 43.3, 2026-12-04), so one pair cannot settle a 5% check; each round its own
    # run folder ab-rN (with bench's engine settings) and bench JSON ab-rN-latency/; judged by the
    # median of the rounds' offsets
    for r in $(seq ${ROUNDS:-3}); do
      ours=(step 150 vllm_bench -m workload.batch_size=1 run_id=ab-r$r +backend.engine_args.max_num_seqs=256
            +backend.engine_args.max_model_len=1280)  # bench's engine settings
      (( r % 2 )) || "${ours[@]}"
      bench_latency 1x1 "$res/ab-r$r-latency"
      (( r % 2 )) && "${ours[@]}"
    done
    python3 benchmarks/cross_check.py --rounds "$res" | tee "$out/ab.md";;
  engine)  # issue 16: the engine's targets (ceilings measured in the same run); with the gemv step's
    # tiles (run before it in the same call), its gemv points a second time on those
    tiles=(); [ -f "$out/gemv/gemv_tiles.json" ] && tiles=(--gemv-tiles "$out/gemv/gemv_tiles.json")
    step 240 python3 benchmarks/bench_triton.py --model gpt-oss-20b --decode 1x1024 8x1024 64x1024 256x1024 \
      --prefill 1x8192 --breakdown 1x1024 "${tiles[@]}" --out "$out/bench_20b.md" 2>&1 | tail -40
    step 200 python3 benchmarks/bench_triton.py --model gpt-oss-120b --decode 1x1024 8x1024 64x1024 256x1024 \
      --prefill 1x8192 "${tiles[@]}" --out "$out/bench_120b.md" 2>&1 | tail -30;;
  gemv)  # the MoE gemv's tile variants alone, per kernel, at T = 1, 2, 4, 8; the fastest to gemv_tiles.json
    step 240 python3 benchmarks/bench_moe.py --gemv-grid --out "$out/gemv" 2>&1 | tail -40;;
  llama)  # llama.cpp: build llama-server for this GPU (build/llama.cpp/*.tar.gz carried), then 20b
    JOBS=16 step 300 bash scripts/build_llama_server.sh cuda > "$out/llama_build.log" 2>&1; tail -2 "$out/llama_build.log"
    step 200 bench backend=llama_cpp device=cuda workload.repeats=2 -m workload.batch_size=1,8 run_id=llama;;
  tests) gpu_tests ${TESTS:-};;  # device_steps.sh
  *) echo "unknown step $s";;
esac; done
if ls "$res"/*/points.parquet >/dev/null 2>&1; then
  python3 -m harness.report.cli $(dirname $(ls "$res"/*/points.parquet)) -o "$out/peers.html" 2>&1 | tail -2
  tar czf "$out/results.tgz" -C "$res" --exclude '*.json.gz' .
fi
ls -la "$out"
