"""Checks a run folder's telemetry against issue 5's acceptance, point by point.

    python benchmarks/telemetry_check.py RESULTS/<run_id>

Prints, per ok point: NVML samples per phase; the energy columns against mean power x measured
time (prefill: ttft x repeats, decode: steps x tpot_ms_mean); for a profiled point, kernels.parquet's
decode rows per step (kernels + launch gaps) against tpot_ms_mean, by category; and whether its
trace under traces/ is a Chrome trace whose complete events nest per thread, as Perfetto's JSON
importer wants them (an event that starts inside another and ends after it is counted).
"""

from __future__ import annotations

import sys
from collections import defaultdict
from pathlib import Path

import pandas as pd
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness import results  # noqa: E402
from harness.telemetry.kernel_timeline import load_trace  # noqa: E402


def misnested(events: list[dict]) -> tuple[int, int]:
    """(complete events, those that overlap a sibling without nesting in it), per thread."""
    by_thread = defaultdict(list)
    for e in events:
        if e.get("ph") == "X":
            by_thread[(e["pid"], e["tid"])].append((float(e["ts"]), float(e.get("dur", 0))))
    bad = total = 0
    for spans in by_thread.values():
        stack: list[float] = []  # end times of the open events
        for ts, dur in sorted(spans, key=lambda s: (s[0], -s[1])):
            total += 1
            while stack and stack[-1] <= ts:
                stack.pop()
            if stack and ts + dur > stack[-1] + 1e-3:  # ends after its parent (ts in us, 1 ns slack)
                bad += 1
                continue
            stack.append(ts + dur)
    return total, bad


def main(run_dir: Path) -> None:
    points = results.load(run_dir)
    tel = results.load(run_dir, "telemetry")
    kernels = results.load(run_dir, "kernels")
    steps = yaml.safe_load((run_dir / "config.yaml").read_text())["telemetry"]["profile_steps"]
    pd.set_option("display.width", 200)
    for _, p in points[points.status == "ok"].iterrows():
        if pd.isna(p.power_w_mean):
            print(f"{p.point_id}: no NVML samples")
        else:
            s = tel[tel.point_id == p.point_id]
            prefill_s = p.repeats * p.ttft_ms / 1e3
            decode_s = p.repeats * (p.new_tokens - 1) * p.tpot_ms_mean / 1e3
            energy = (p.prefill_energy_j or 0) + (p.decode_energy_j or 0)
            expected = p.power_w_mean * (prefill_s + decode_s)
            print(f"{p.point_id}: samples {s.phase.fillna('-').value_counts().to_dict()}; energy {energy:.1f} J "
                  f"vs mean power x time {expected:.1f} J ({energy / expected - 1:+.1%}), source "
                  f"{p.energy_source}, power_valid {p.power_valid}, throttled {p.throttled} "
                  f"{p.throttle_reasons or ''}")
        k = kernels[(kernels.point_id == p.point_id) & (kernels.phase == "decode")]
        if k.empty:
            continue
        per_cat = k.groupby("category").total_ms.sum().sort_values(ascending=False) / steps
        print(f"  profiled: {per_cat.sum():.4f} ms a decode step (kernels + launch gaps) vs tpot_ms_mean "
              f"{p.tpot_ms_mean:.4f} ({per_cat.sum() / p.tpot_ms_mean - 1:+.1%}); "
              + ", ".join(f"{c} {ms:.3f}" for c, ms in per_cat.items()))
        trace = run_dir / "traces" / f"{p.point_id}.json.gz"
        total, bad = misnested(load_trace(trace))
        print(f"  trace {trace.name}: {trace.stat().st_size / 1e6:.2f} MB, {total} complete events, {bad} misnested")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
