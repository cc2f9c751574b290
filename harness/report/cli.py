"""gptoss-report RUN_DIR [RUN_DIR ...] [-o FILE]: one HTML page for one run, or several overlaid."""

from __future__ import annotations

import argparse
from pathlib import Path

from harness.report.page import write_report
from harness.results import run_dirs


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="gptoss-report", description=__doc__.split(": ", 1)[1])
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR",
                        help="a results/<run_id> folder, a folder of them, or a glob")
    parser.add_argument("-o", "--output", type=Path,
                        help="HTML file to write (default reports/<run_id>.html, run ids joined by '+' for several)")
    args = parser.parse_args(argv)
    try:
        dirs = run_dirs(args.runs)
    except FileNotFoundError as e:
        parser.exit(2, f"gptoss-report: {e}\n")
    out = args.output or Path("reports") / ("+".join(d.name for d in dirs) + ".html")
    print(write_report(dirs, out))


if __name__ == "__main__":
    main()
