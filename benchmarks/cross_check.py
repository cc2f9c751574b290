"""Our timing of vLLM against vLLM's own `vllm bench latency` on the same points (issue 15's
cross-check): each latency-BxN.json (written by gpu_peers.sh's `latency` step) against the vLLM
point of the run folder at batch B. With N = 1 bench's latency is the prefill and one token, so it
is set against our TTFT; with N = the run's new_tokens, against our whole call (e2e_ms).

    python benchmarks/cross_check.py RUN_DIR LATENCY_JSON... [--setup moe_path=auto] [--tolerance 0.05]
    python benchmarks/cross_check.py --rounds RESULTS_DIR      # gpu_peers.sh's `ab` step: ab-rN/, ab-rN-latency/

Rounds of the same point, bench and ours in turn, are judged by the median of their offsets: a
launch-bound point (batch 1's 1,024-token prefill) varies by ~10% from one engine start to the
next on one machine (H200, 2026-12-04), more than the 5% to be checked.

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


HEADER = ["batch", "admitted", "ours", "ours' cv", "bench latency p50", "its cv", "its last half", "ours vs p50",
          "within"]


def vllm_points(run: Path, context: int, setup: str | None) -> pd.DataFrame:
    """The run's ok vLLM points at `context` of one set-up, indexed by batch size."""
    try:
        points = load(run)
    except FileNotFoundError as e:
        raise SystemExit(str(e)) from None
    points = points[(points.backend == "vllm") & (points.status == "ok") & (points.context_len == context)]
    setups = sorted(points.setup.unique())
    if setup is not None:
        points = points[points.setup == setup]
        if points.empty:
            raise SystemExit(f"--setup {setup}: no ok vLLM point at context {context} has it; "
                             f"the run's set-ups: {', '.join(setups) or 'none'}")
    elif len(setups) > 1:
        raise SystemExit(f"{run} has several vLLM set-ups ({', '.join(setups)}): name the one "
                         f"`bench latency` ran with --setup (its default MoE path: moe_path=auto)")
    return points.drop_duplicates("batch_size", keep="last").set_index("batch_size")


def _row(head: list[str], tail: list[str], width: int) -> None:
    """One markdown table row of `width` cells: `head`, empty cells, `tail`."""
    print("| " + " | ".join(head + [""] * (width - len(head) - len(tail)) + tail) + " |")


def _header(cells: list[str]) -> None:
    print("| " + " | ".join(cells) + " |\n|" + " --- |" * len(cells))


def check(run: Path, points: pd.DataFrame, latency: list[Path], args, lead: list[str]) -> list[float | None]:
    """Print one table row per latency JSON (after the `lead` cells) against the run's `points`
    (vllm_points); each row's offset from bench's median, None where no point sets against it."""
    admitted, width = admissions(run), len(lead) + len(HEADER)
    offs = []
    for path in sorted(latency, key=lambda p: bench_latency(p)[:2]):
        batch, out, lat = bench_latency(path)
        cells = [*lead, str(batch)]
        if batch not in points.index:
            _row(cells + ["", f"no ok vLLM point in {run}"], ["no"], width)
            offs.append(None)
            continue
        p = points.loc[batch]
        if out == 1:  # the repeats' median against bench's (the mean for runs without that column)
            p50_known = "ttft_ms_repeat_p50" in p and not pd.isna(p.ttft_ms_repeat_p50)
            what, ours, cv = ("TTFT", p.ttft_ms_repeat_p50, p.ttft_cv) if p50_known else ("TTFT mean", p.ttft_ms, None)
        elif out == p.new_tokens:
            what, ours, cv = "e2e", p.e2e_ms, p.cv  # the repeats' mean steps spread as their e2e does
        else:
            _row(cells + ["", f"{path.name}: {out} tokens, the run's points made {p.new_tokens}"], ["no"], width)
            offs.append(None)
            continue
        p50, late = statistics.median(lat), statistics.median(lat[len(lat) // 2:])
        its_cv = statistics.stdev(lat) / statistics.mean(lat) if len(lat) > 1 else None
        off = ours / p50 - 1
        offs.append(off)
        verdict = [f"{off:+.1%}", "yes" if abs(off) <= args.tolerance else "no"]
        _row(cells + [admitted.get(p.point_id, ""), f"{what} {ours:,.1f} ms", _percent(cv), f"{p50:,.1f} ms",
                      _percent(its_cv), f"{late:,.1f} ms"], verdict, width)
    return offs


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", nargs="?", type=Path, help="a run folder with backend=vllm points")
    ap.add_argument("latency", nargs="*", type=Path, help="latency-BxN.json files")
    ap.add_argument("--rounds", type=Path, metavar="DIR",
                    help="instead: every round of gpu_peers.sh's `ab` step in DIR (ab-rN/ and ab-rN-latency/), "
                         "judged by the median of the rounds' offsets")
    ap.add_argument("--context", type=int, default=1024, help="the points' context (gpu_peers.sh: --input-len 1024)")
    ap.add_argument("--setup", help="the vLLM set-up to check, where the run has several (e.g. moe_path=auto)")
    ap.add_argument("--tolerance", type=float, default=0.05)
    args = ap.parse_args(argv)
    if (args.rounds is None) == (args.run is None) or (args.run is not None and not args.latency):
        ap.error("give a run folder and its latency JSONs, or --rounds DIR")
    if args.rounds is None:
        points = vllm_points(args.run, args.context, args.setup)
        _header(HEADER)
        return int(not all(off is not None and abs(off) <= args.tolerance
                           for off in check(args.run, points, args.latency, args, [])))
    rounds = sorted((d for d in args.rounds.glob("ab-r*") if re.fullmatch(r"ab-r\d+", d.name)
                     and (d / "points.parquet").is_file()),  # a round cut short before its run wrote nothing
                    key=lambda d: int(d.name[4:]))
    if not rounds:
        raise SystemExit(f"{args.rounds}: no round (ab-rN/ beside ab-rN-latency/), as gpu_peers.sh's `ab` step leaves")
    points = [vllm_points(d, args.context, args.setup) for d in rounds]
    _header(["round", *HEADER])
    offs = [off for d, p in zip(rounds, points)
            for off in check(d, p, sorted((args.rounds / f"{d.name}-latency").glob("latency-*.json")), args,
                             [d.name[4:]])]
    if None in offs or not offs:
        return 1
    median = statistics.median(offs)
    within = abs(median) <= args.tolerance
    _row([f"all {len(rounds)}", "median of the rounds' offsets"], [f"{median:+.1%}", "yes" if within else "no"],
         len(HEADER) + 1)
    return int(not within)


if __name__ == "__main__":
    sys.exit(main())
