# What the device scripts (gpu_h200.sh, gpu_peers.sh) share; sourced after `out` and `budget` are
# set: the results folder, the cache, the interpreter path (the tree, then the wheels carried to
# /tmp/site), and `step CAP_S CMD...`, which runs CMD (a program or an exported function) for at
# most CAP_S seconds and never past the call's budget, so a 10-minute call keeps its last seconds
# for packing the results.
deadline=$(( SECONDS + budget - 30 ))
mkdir -p "$out"
export PYTHONUNBUFFERED=1 GPTOSS_BENCH_CACHE=${GPTOSS_BENCH_CACHE:-/tmp/gptoss-cache}
export res=${GPTOSS_RESULTS:-/tmp/gptoss-results}
export PYTHONPATH=$PWD:/tmp/site${PYTHONPATH:+:$PYTHONPATH}

step() {
  local cap=$1; shift
  local left=$(( deadline - SECONDS ))
  (( left < 20 )) && { echo "skipped for time: $*"; return; }
  echo "== $(date +%T) $* ($(( cap < left ? cap : left )) s)"
  timeout $(( cap < left ? cap : left )) bash -c '"$@"' _ "$@"
}

# `gpu_tests [FILE...]`: the Triton kernel tests, unmarked (they run on the GPU wherever there is
# one, in the interpreter on a CPU), then every gpu-marked test (the browser tests import selenium,
# which the GPU images lack; none of them is gpu-marked); with files given, those files whole.
# Output in $out/tests.txt.
pt() { python3 -m pytest -q -p no:cacheprovider "$@"; }
export -f pt
gpu_tests() {
  if (( $# )); then step 300 pt "$@" > "$out/tests.txt" 2>&1
  else
    step 200 pt tests/test_triton_moe.py tests/test_triton_attention.py tests/test_triton_kernels.py \
      tests/test_triton_mxfp8.py > "$out/tests.txt" 2>&1
    step 300 pt -m gpu --ignore=tests/test_report_browser.py --ignore=tests/test_procurement.py tests \
      >> "$out/tests.txt" 2>&1
  fi
  grep -E "passed|failed|error" "$out/tests.txt" | tail -4
}
