"""gptoss-report: one HTML page for one run or several overlaid, or with --procurement a comparison
of machines at target interactivities (tokens per second per GPU, per joule and per dollar).

    gptoss-report RUN_DIR [RUN_DIR ...] [-o FILE]
    gptoss-report --procurement RUN... [--prices prices.yaml] [--interactivity 50,100,200]
                  [--load TOK_S] [--assume-fp4] [--csv PATH] [-o PAGE.html]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from harness.analysis.prices import PriceFileError, load_prices
from harness.analysis.procurement import DEFAULT_LOAD_TOK_S, DEFAULT_TARGETS, compare, export
from harness.report.page import write_report
from harness.report.procurement_page import write_procurement_page
from harness.report.runs import NoReadableRun
from harness.results import run_dirs


def default_name(dirs: list[Path]) -> str:
    """The page's file name without a folder: the run id for one run; for several, the first and
    last run ids and the count, so a glob over many runs gives a short name that stays the same."""
    names = sorted(d.name for d in dirs)
    return names[0] if len(names) == 1 else f"{names[0]}..{names[-1]}-{len(names)}runs"


def _targets(text: str) -> tuple[float, ...]:
    try:
        targets = tuple(float(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated tok/s per user, e.g. 50,100,200")
    if not targets or min(targets) <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: targets must be positive tok/s per user")
    return tuple(sorted(set(targets)))


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a positive number of tok/s")
    return value


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="gptoss-report", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR",
                        help="a results/<run_id> folder, a folder of them, or a glob")
    parser.add_argument("-o", "--output", type=Path,
                        help="HTML file to write (default reports/<run_id>.html; for several runs "
                             "reports/<first>..<last>-<n>runs.html, procurement- in front with --procurement)")
    proc = parser.add_argument_group("procurement (--procurement)")
    proc.add_argument("--procurement", action="store_true",
                      help="compare machines (runs pooled by hardware label) at target interactivities")
    proc.add_argument("--prices", type=Path, help="price file (yaml; see harness/conf/prices.example.yaml)")
    proc.add_argument("--interactivity", type=_targets, default=DEFAULT_TARGETS, metavar="T1,T2,...",
                      help="target tok/s per user (default %(default)s)")
    proc.add_argument("--load", type=_positive, default=DEFAULT_LOAD_TOK_S, metavar="TOK_S",
                      help="aggregate output tok/s to size 'GPUs needed' for (default %(default)g)")
    proc.add_argument("--assume-fp4", action="store_true",
                      help="project GPUs with FP4 tensor cores at their FP4 rate (default: BF16, the measured "
                           "engines' W4A16 math)")
    proc.add_argument("--csv", type=Path, help="write the ranked rows as CSV here, and as parquet beside it")
    args = parser.parse_args(argv)
    extras = [f"--{name.replace('_', '-')}" for name in ("prices", "csv", "assume_fp4") if getattr(args, name)]
    if extras and not args.procurement:
        parser.exit(2, f"gptoss-report: only with --procurement: {', '.join(extras)}\n")
    try:
        dirs = run_dirs(args.runs)
        prices = load_prices(args.prices) if args.prices else None
    except (FileNotFoundError, PriceFileError) as e:
        parser.exit(2, f"gptoss-report: {e}\n")
    if not args.procurement:
        try:
            print(write_report(dirs, args.output or Path("reports") / f"{default_name(dirs)}.html"))
        except NoReadableRun as e:
            parser.exit(2, f"gptoss-report: {e}\n")
        return
    comparison = compare(dirs, args.interactivity, prices, args.load, args.assume_fp4)
    if args.csv:
        for path in export(comparison.rows, args.csv):
            print(path)
    print(write_procurement_page(comparison, args.output or Path("reports") / f"procurement-{default_name(dirs)}.html"))


if __name__ == "__main__":
    main()
