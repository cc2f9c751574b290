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
