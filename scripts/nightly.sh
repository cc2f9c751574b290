#!/usr/bin/env bash
# The nightly regression job (docs/nightly.md): run the nightly sweep, compare it with the last
# runs of each point on this machine, re-measure once what the comparison flagged, and fail only
# when the re-measurement confirms it. Cron and CI both run this file.
#
# Environment (all optional):
#   RESULTS     run folders, kept across nights: the history lives here       (default: results)
#   OUT         where the JUnit files, markdown summaries and HTML pages go   (default: nightly-out)
#   LAST        the rolling baseline: each point's last N runs                (default: 7)
#   BENCH_ARGS  more gptoss-bench overrides, e.g. "backend=triton_mxfp4 model=gpt-oss-20b hardware=h200-lab"
# Exit: 0 no confirmed regression; 1 a confirmed regression or failed point; 2 the job could not
# compare (no run written, an unreadable run).
set -uo pipefail

RESULTS=${RESULTS:-results}
OUT=${OUT:-nightly-out}
LAST=${LAST:-7}
read -ra EXTRA <<< "${BENCH_ARGS:-}"
RUN=$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$OUT"

# A failed point is a verdict of the comparison, not a reason to stop before it.
gptoss-bench sweep=nightly results_dir="$RESULTS" run_id="$RUN" allow_failed_points=true "${EXTRA[@]}"
if [[ ! -f $RESULTS/$RUN/points.parquet ]]; then
    echo "nightly: the sweep left no $RESULTS/$RUN/points.parquet" >&2
    exit 2
fi

# Every earlier run folder is a baseline; gptoss-compare keeps each point's last $LAST on the same
# hardware. Listed explicitly (not a glob) so the confirmation below is judged against the same
# runs, without tonight's unconfirmed one.
mapfile -t BASE < <(find "$RESULTS" -mindepth 2 -maxdepth 2 -name points.parquet -printf '%h\n' \
                    | grep -vxF "$RESULTS/$RUN" | sort)
if (( ${#BASE[@]} == 0 )); then
    echo "nightly: first run in $RESULTS, nothing to compare with yet"
    exit 0
fi

gptoss-compare "${BASE[@]}" "$RESULTS/$RUN" --last "$LAST" --history "$RESULTS/*" \
    --junit "$OUT/nightly.xml" --markdown "$OUT/nightly.md" --html "$OUT/nightly.html"
code=$?
(( code == 1 )) || exit "$code"

# Flagged: measure those points again, once, into a new run (the points keep their run's
# configuration, hardware label included), and judge that run alone.
gptoss-bench rerun="$RESULTS/$RUN" only=regressed results_dir="$RESULTS" run_id="$RUN-confirm" \
    allow_failed_points=true
gptoss-compare "${BASE[@]}" "$RESULTS/$RUN-confirm" --last "$LAST" \
    --junit "$OUT/confirm.xml" --markdown "$OUT/confirm.md" --html "$OUT/confirm.html"
