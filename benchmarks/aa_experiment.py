"""A/A experiment: how much a sweep moves from run to run on one machine when nothing changed, and
the smallest slowdown the regression verdicts (harness/analysis/regression.py) see through that
noise (issue 13's acceptance).

    gptoss-bench sweep=nightly backend=triton_mxfp4 model=gpt-oss-20b run_id=aa1   # three times
    python benchmarks/aa_experiment.py results/aa1 results/aa2 results/aa3 >> benchmarks/LOG.md

Prints markdown for benchmarks/LOG.md:
1. each point's tpot_ms_p50 in each run and its cv across the runs (the run-to-run noise), and
   per metric measured once a point, its cv and largest change between two runs against the
   band thresholds.yaml's single_value_noise gives a comparison with one baseline run;
2. every ordered pair of runs compared as gptoss-compare would with one baseline: verdict counts,
   where any regression is a false alarm;
3. slowdowns planted on the real samples (the candidate's decode steps times 1 + s, every point at
   once): the share of point-comparisons whose decode step time is flagged, with the default
   thresholds and with the noise test alone (min_effect 0), so the table shows both what the
   3% minimum costs and what the noise would allow; the A/A row is the false-alarm rate.

The smallest slowdown is the smallest planted one flagged in at least DETECTED of the
point-comparisons, given at most 1 false alarm in 100 at 0%. Exit 1 when an A/A pair has any
regression.
"""

from __future__ import annotations

import argparse
import itertools
import math
import sys
from dataclasses import replace
from pathlib import Path

import pandas as pd
from scipy import stats

from harness.analysis import regression, thresholds as thresholds_file
from harness.analysis.regression import Run

DETECTED = 0.95
MAX_FALSE_ALARMS = 0.01


def shifted(run: Run, samples: pd.DataFrame, shift: float) -> Run:
    """The run with every decode step of every point slowed by `shift` (0.03: 3% longer)."""
    return replace(run, repeats=regression.per_repeat(samples.assign(tpot_ms=samples["tpot_ms"] * (1 + shift)), run.points))


def noise_table(runs: list[Run]) -> list[str]:
    p = pd.concat([r.points.assign(run=r.run_id) for r in runs], ignore_index=True)
    p = p[p["status"] == "ok"]
    wide = p.pivot_table(index="key", columns="run", values="tpot_ms_p50", aggfunc="last")[[r.run_id for r in runs]]
    labels = p.drop_duplicates("key").set_index("key").apply(regression.point_label, axis=1)
    cv = wide.std(axis=1, ddof=1) / wide.mean(axis=1)
    lines = ["| point | " + " | ".join(f"{r.run_id} tpot p50 ms" for r in runs) + " | cv |",
             "| --- |" + " ---: |" * (len(runs) + 1)]
    for key in cv.sort_values(ascending=False).index:
        lines.append(f"| {labels[key]} | " + " | ".join(f"{v:.4g}" for v in wide.loc[key]) + f" | {cv[key]:.2%} |")
    lines += ["", f"Run-to-run cv of tpot_ms_p50 over {len(cv)} points: median {cv.median():.2%}, max {cv.max():.2%}."]
    return lines


def once_table(runs: list[Run], t) -> list[str]:
    """Per metric without repeat-level samples: how far identical runs differ, and the band
    (z sqrt(2) single_value_noise) within which one baseline run cannot call a change."""
    p = pd.concat([r.points.assign(run=r.run_id) for r in runs], ignore_index=True)
    p = p[p["status"] == "ok"]
    z = stats.norm.ppf((1 + t.confidence) / 2) * math.sqrt(2)
    lines = ["| metric (one value a run) | median cv | max cv | largest change between two runs | "
             "single_value_noise | band with one baseline |", "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for m in (m for m in regression.METRICS if not m.from_repeats and m.name != "agreement"):
        wide = p.pivot_table(index="key", columns="run", values=m.name, aggfunc="last").dropna()
        if wide.empty:
            continue
        cv = wide.std(axis=1, ddof=1) / wide.mean(axis=1)
        change = (wide.max(axis=1) / wide.min(axis=1) - 1).max()
        noise = t.metrics[m.name].single_value_noise
        lines.append(f"| {m.name} | {cv.median():.2%} | {cv.max():.2%} | {change:.1%} | {noise:g} | ±{z * noise:.0%} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="three or more run folders of the same sweep")
    parser.add_argument("--shifts", default="0.01,0.02,0.03,0.04,0.05,0.07,0.1",
                        help="planted slowdowns, comma-separated fractions")
    parser.add_argument("--thresholds", type=Path, help="thresholds laid over the defaults")
    args = parser.parse_args(argv)
    if len(args.runs) < 2:
        parser.error("give two or more run folders (three for the issue's experiment)")
    try:
        shifts = [float(s) for s in args.shifts.split(",")]
        t = thresholds_file.load(args.thresholds)
        runs = [regression.read_run(d) for d in args.runs]
    except (ValueError, regression.UnreadableRun) as e:
        parser.exit(2, f"aa_experiment: {e}\n")
    samples = [pd.read_parquet(d / "samples.parquet") for d in args.runs]
    noise_only = replace(t, metrics={**t.metrics, "tpot_ms": replace(t.metrics["tpot_ms"], min_effect=0.0)})
    pairs = list(itertools.permutations(range(len(runs)), 2))

    print(f"### A/A experiment: {', '.join(r.run_id for r in runs)}\n")
    print("\n".join(noise_table(runs)) + "\n")
    print("\n".join(once_table(runs, t)) + "\n")

    verdict_names = list(regression.VERDICTS)
    print("| baseline → candidate | " + " | ".join(verdict_names) + " |")
    print("| --- |" + " ---: |" * len(verdict_names))
    false_alarms = 0
    for a, b in pairs:
        vs = regression.compare([runs[a]], runs[b], t)
        n = {name: sum(v.verdict == name for v in vs) for name in verdict_names}
        false_alarms += n["regression"]
        print(f"| {runs[a].run_id} → {runs[b].run_id} | " + " | ".join(str(n[k]) for k in verdict_names) + " |")
    print()

    def flagged(shift: float, th) -> tuple[int, int]:
        hits = total = 0
        for a, b in pairs:
            cand = shifted(runs[b], samples[b], shift) if shift else runs[b]
            tpot = [v for v in regression.compare([runs[a]], cand, th) if v.metric == "tpot_ms"]
            hits += sum(v.verdict == "regression" for v in tpot)
            total += len(tpot)
        return hits, total

    rates = {name: [] for name in ("default thresholds", "noise only (min_effect 0)")}
    print("| planted slowdown | " + " | ".join(f"tpot_ms flagged, {name}" for name in rates) + " |")
    print("| --- | ---: | ---: |")
    for shift in [0.0, *shifts]:
        cells = []
        for name, th in zip(rates, (t, noise_only)):
            hits, total = flagged(shift, th)
            rates[name].append((shift, hits / total if total else float("nan")))
            cells.append(f"{hits}/{total} ({hits / total:.0%})" if total else "–")
        row = "0% (A/A: false alarms)" if shift == 0 else f"+{shift * 100:g}%"
        print(f"| {row} | " + " | ".join(cells) + " |")
    print()
    for name, rate in rates.items():
        alarm = rate[0][1]
        seen = [s for s, r in rate[1:] if r >= DETECTED]
        if alarm > MAX_FALSE_ALARMS:
            print(f"- {name}: {alarm:.1%} false alarms at 0%, above {MAX_FALSE_ALARMS:.0%}: no smallest slowdown to quote.")
        else:
            smallest = f"+{min(seen) * 100:g}%" if seen else f"none of the planted ones (largest +{max(shifts) * 100:g}%)"
            print(f"- {name}: {alarm:.1%} false alarms at 0%; smallest slowdown flagged in ≥ {DETECTED:.0%} of "
                  f"point-comparisons: {smallest}.")
    print(f"- A/A pairwise comparisons (all metrics): {false_alarms} regression(s).")
    return 1 if false_alarms else 0


if __name__ == "__main__":
    sys.exit(main())
