"""Our timing of vLLM against vLLM's own `vllm bench latency` on the same points (issue 15's
cross-check): each latency-BxN.json (written by gpu_peers.sh's `latency` step) against the vLLM
point of the run folder at batch B. With N = 1 bench's latency is the prefill and one token, so it
is set against our TTFT; with N = the run's new_tokens, against our whole call (e2e_ms).

    python benchmarks/cross_check.py RUN_DIR LATENCY_JSON... [--setup moe_path=auto] [--tolerance 0.05]

A run folder with several vLLM set-ups (sweep=peers' arms) needs --setup: the one `bench latency`
ran (its default MoE path is `moe_path=auto`).

Our TTFT is the median of the point's repeats (`ttft_ms_repeat_p50`; the mean for runs from before
that column), set against bench's median; each side's spread (cv) stands beside it, since a 5%
verdict means little where either side's own iterations spread by more.

`bench latency` calls `LLM.generate`, which adds its requests one by one to an engine that is
already running, so its first step may start with part of the batch: its TTFT is like for like with
points admitted the same way (`backend.admit=stream`). With `admit=batch` (the default: all prompts
in before the scheduler runs) ours is the lower one at batch 8 (H200, 2026-12-04, one machine:
101.8 ms against bench's 133.5 ms, whose iterations ran from 104.8 to 136.6 ms beside two of 0.6
and 1.1 s). The table names each point's admission.

bench latency's iterations are not all alike: its first timed ones can still be slow after its 8
warm-up iterations (1.31 and 1.37 s beside 0.11 s at batch 8, 2026-12-03). The verdict is against
its median; the median of its last half is shown beside it. Prints one markdown table; exits 1 when
a point is outside the tolerance or missing.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from pathlib import Path

import pandas as pd
import yaml

from harness.results import load


def bench_latency(path: Path) -> tuple[int, int, list[float]]:
    """(batch, output tokens, iteration latencies in ms) of one `vllm bench latency --output-json`."""
    m = re.fullmatch(r"latency-(\d+)x(\d+)(@\d+)?\.json", path.name)
    if m is None:
        raise SystemExit(f"{path}: expected a name latency-BATCHxOUT[@CHUNK].json, as gpu_peers.sh writes")
    return int(m[1]), int(m[2]), [s * 1e3 for s in json.loads(path.read_text())["latencies"]]


def _percent(x) -> str:
    return "" if x is None or pd.isna(x) else f"{x:.1%}"


def admissions(run: Path) -> dict[str, str]:
    """point_id -> backend.admit of the run's points as its config.yaml stored them."""
    path = Path(run) / "config.yaml"
    points = yaml.safe_load(path.read_text())["sweep"]["points"] if path.is_file() else []
    return {p["point_id"]: str(p["config"]["backend"]["options"].get("admit", "")) for p in points}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", help="a run folder with backend=vllm points")
    ap.add_argument("latency", nargs="+", type=Path, help="latency-BxN.json files")
    ap.add_argument("--context", type=int, default=1024, help="the points' context (gpu_peers.sh: --input-len 1024)")
    ap.add_argument("--setup", help="the vLLM set-up to check, where the run has several (e.g. moe_path=auto)")
    ap.add_argument("--tolerance", type=float, default=0.05)
    args = ap.parse_args(argv)
    points = load(args.run)
    points = points[(points.backend == "vllm") & (points.status == "ok") & (points.context_len == args.context)]
    setups = sorted(points.setup.unique())
    if args.setup is not None:
        points = points[points.setup == args.setup]
        if points.empty:
            raise SystemExit(f"--setup {args.setup}: no ok vLLM point at context {args.context} has it; "
                             f"the run's set-ups: {', '.join(setups) or 'none'}")
    elif len(setups) > 1:
        raise SystemExit(f"{args.run} has several vLLM set-ups ({', '.join(setups)}): name the one "
                         f"`bench latency` ran with --setup (its default MoE path: moe_path=auto)")
    points = points.drop_duplicates("batch_size", keep="last").set_index("batch_size")
    admitted = admissions(args.run)
    print("| batch | admitted | ours | ours' cv | bench latency p50 | its cv | its last half | ours vs p50 | within |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    failed = False
    for path in sorted(args.latency, key=lambda p: bench_latency(p)[:2]):
        batch, out, lat = bench_latency(path)
        if batch not in points.index:
            print(f"| {batch} | | no ok vLLM point in {args.run} | | | | | | no |")
            failed = True
            continue
        p = points.loc[batch]
        if out == 1:  # the repeats' median against bench's (the mean for runs without that column)
            p50_known = "ttft_ms_repeat_p50" in p and not pd.isna(p.ttft_ms_repeat_p50)
            what, ours, cv = ("TTFT", p.ttft_ms_repeat_p50, p.ttft_cv) if p50_known else ("TTFT mean", p.ttft_ms, None)
        elif out == p.new_tokens:
            what, ours, cv = "e2e", p.e2e_ms, p.cv  # the repeats' mean steps spread as their e2e does
        else:
            print(f"| {batch} | | {path.name}: {out} tokens, the run's points made {p.new_tokens} | | | | | | no |")
            failed = True
            continue
        p50, late = statistics.median(lat), statistics.median(lat[len(lat) // 2:])
        its_cv = statistics.stdev(lat) / statistics.mean(lat) if len(lat) > 1 else None
        off = ours / p50 - 1
        ok = abs(off) <= args.tolerance
        failed |= not ok
        print(f"| {batch} | {admitted.get(p.point_id, '')} | {what} {ours:,.1f} ms | {_percent(cv)} | {p50:,.1f} ms | "
              f"{_percent(its_cv)} | {late:,.1f} ms | {off:+.1%} | {'yes' if ok else 'no'} |")
    return int(failed)


if __name__ == "__main__":
    sys.exit(main())
