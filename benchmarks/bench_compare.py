"""How long gptoss-compare takes on a large comparison: a 1,000-point candidate run with 1M decode
samples against a 10-run history of the same sweep (issue 13: under 10 s on the 2-core CPU
machine), all written to a temporary folder first.

    python benchmarks/bench_compare.py [--points 1000] [--repeats 10] [--steps 100] [--history 10] [--html]

Prints the time of the whole command in this process (reading the 11 runs, the verdicts, the
terminal table, verdicts.json, --json, --junit and --markdown), best of --tries, and with --html
the page's time apart. The candidate has 1% of its points slowed by 5% and 2 failed, so every
output has something to say.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from harness.compare_cli import main as compare
from harness.results import POINT_COLUMNS, SAMPLE_COLUMNS, to_table, write_atomic, write_env


def write_run(folder: Path, i: int, n_points: int, repeats: int, steps: int, rng, slow=(), failed=()) -> None:
    """One run: points over quant x batch x context, steps drawn per repeat (0.5% repeat offset, 2% step noise)."""
    folder.mkdir(parents=True)
    quant = np.where(np.arange(n_points) % 2, "mxfp4", "bf16")
    batch = 2 ** (np.arange(n_points) // 2 % 10)
    context = 128 * (1 + np.arange(n_points) // 20)
    level = (2.0 + 0.05 * batch + context / 8192) * (1 + rng.normal(0, 0.005))  # ms; the run's own offset
    level[list(slow)] *= 1.05
    step_ms = (level[:, None, None] * (1 + rng.normal(0, 0.005, (n_points, repeats, 1)))
               * (1 + rng.normal(0, 0.02, (n_points, repeats, steps))))
    ids = np.array([f"p{k:04d}" for k in range(n_points)])
    status = np.full(n_points, "ok", dtype=object)
    status[list(failed)] = "oom"
    mean = step_ms.reshape(n_points, -1).mean(axis=1)
    points = pd.DataFrame(dict(
        run_id=folder.name, point_id=ids, started_at=f"2026-12-{i + 1:02d}T03:00:00Z", backend="triton_mxfp4",
        backend_version="0.1", model="gpt-oss-20b", quant=quant, batch_size=batch, context_len=context, new_tokens=steps + 1,
        repeats=repeats, seed=0, router_skew=0.0, gpu_name="NVIDIA H200", gpu_count=1, hardware="H200", status=status,
        error=np.where(status == "ok", "", "CUDA out of memory"),
        ttft_ms=context * batch / 100 * (1 + rng.normal(0, 0.005, n_points)),
        prefill_tok_s=1e5, tpot_ms_mean=mean, tpot_ms_p50=np.median(step_ms.reshape(n_points, -1), axis=1),
        decode_tok_s=batch * 1e3 / mean, peak_mem_gib=14 + batch * context / 2**16, torch_peak_gib=13.0,
        energy_j_per_tok=0.3 * mean / batch, power_valid=True, throttled=False, agreement=1.0))
    write_atomic(to_table(points, POINT_COLUMNS), folder / "points.parquet")
    ok = status == "ok"
    samples = pd.DataFrame(dict(point_id=np.repeat(ids[ok], repeats * steps),
                                repeat=np.tile(np.repeat(np.arange(repeats), steps), ok.sum()),
                                step=np.tile(np.arange(1, steps + 1), ok.sum() * repeats),
                                tpot_ms=step_ms[ok].ravel()))
    # to_table converts through Python objects, minutes for a million rows: the schema alone is enough here
    write_atomic(pa.Table.from_pandas(samples, schema=pa.schema(SAMPLE_COLUMNS.items()), preserve_index=False),
                 folder / "samples.parquet")
    write_env(folder / "env.json", {"git_commit": f"{i:040x}", "driver_version": "570.86"})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--points", type=int, default=1000)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--history", type=int, default=10)
    p.add_argument("--tries", type=int, default=3)
    p.add_argument("--html", action="store_true", help="time the HTML page too")
    args = p.parse_args()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        for i in range(args.history):
            write_run(root / "history" / f"202612{i + 1:02d}T030000Z", i, args.points, args.repeats, args.steps, rng)
        cand = root / "candidate" / "20261231T030000Z"
        slow = range(0, args.points, 100)
        write_run(cand, args.history, args.points, args.repeats, args.steps, rng, slow=slow, failed=(1, 3))
        print(f"wrote {args.history} + 1 runs of {args.points} points, "
              f"{args.points * args.repeats * args.steps:,} samples each, in {time.perf_counter() - t0:.1f} s")
        argv = [str(root / "history" / "*"), str(cand), "--last", str(args.history), "--json", str(root / "v.json"),
                "--junit", str(root / "v.xml"), "--markdown", str(root / "v.md")]
        times = []
        for _ in range(args.tries):
            t0 = time.perf_counter()
            with contextlib.redirect_stdout(io.StringIO()) as out, contextlib.suppress(SystemExit):
                compare(argv)
            times.append(time.perf_counter() - t0)
        print(out.getvalue().strip().splitlines()[-1])
        print(f"gptoss-compare, {args.points} points x {args.history}-run history: best {min(times):.2f} s "
              f"of {args.tries} ({', '.join(f'{t:.2f}' for t in times)})")
        if args.html:
            t0 = time.perf_counter()
            with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):
                compare([*argv, "--html", str(root / "v.html"), "--history", str(root / "history" / "*")])
            print(f"with --html and --history: {time.perf_counter() - t0:.2f} s, page "
                  f"{(root / 'v.html').stat().st_size / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
