"""gptoss-compare BASELINE... CANDIDATE: regression verdicts of a run against its baseline runs
(harness/analysis/regression.py says how they are reached), for a terminal, CI and people.

    gptoss-compare results/20261201T0300Z results/20261202T0300Z
    gptoss-compare 'results/*' results/$RUN --last 7 --history 'results/*' \\
        --junit verdicts.xml --markdown summary.md --html compare.html

The verdicts always go to CANDIDATE/verdicts.json too: `gptoss-bench rerun=CANDIDATE
only=regressed` reads them to re-measure what was flagged. Exit code 0: no regression; 1: a
regression or a failed point; 2: nothing to compare (no point in common, an unreadable run, a bad
argument or thresholds file), with one line saying which.
"""

from __future__ import annotations

import argparse
import sys
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path
from typing import Sequence

from rich.console import Console
from rich.table import Table

from harness.analysis import regression, thresholds as thresholds_file
from harness.analysis.regression import FLAGGED, VERDICTS, Run, Verdict
from harness.report import numbers
from harness.report.compare_page import write_compare_page
from harness.results import run_dirs, write_text_atomic

STYLE = {"regression": "bold red", "failed": "bold red", "inconclusive": "yellow", "improvement": "green",
         "fixed": "green", "new": "cyan", "missing": "magenta", "unchanged": "dim"}
TABLE_ROWS = 200  # the terminal lists at most this many verdicts that are not `unchanged`


class InputError(Exception):
    """One line for the user; exit code 2."""


# ---- the words of a verdict -----------------------------------------------------------------------

def number(value: float | None) -> str:
    return "" if value is None else numbers.number(value)


def ratio_text(v: Verdict) -> str:
    if v.ratio is None:
        return ""
    interval = f" [{v.ci_low:.3f}, {v.ci_high:.3f}]" if v.ci_low is not None else ""
    return f"{v.ratio:.3f}{interval}"


def sides_text(v: Verdict) -> str:
    """What differs between the sides of a point: commit, engine version, driver."""
    if v.baseline_run is None or v.candidate_run is None:  # new or missing: one side only
        return ""
    parts = []
    for name, b, c in (("commit", v.baseline_commit, v.candidate_commit), ("engine", v.baseline_engine, v.candidate_engine),
                       ("driver", v.baseline_driver, v.candidate_driver)):
        if b != c and (b or c):
            short = (lambda s: (s or "?")[:10]) if name == "commit" else (lambda s: s or "?")
            parts.append(f"{name} {short(b)}→{short(c)}")
    return ", ".join(parts)


def counts_text(verdicts: Sequence[Verdict]) -> str:
    n = Counter(v.verdict for v in verdicts)
    points = len({v.label for v in verdicts})
    return f"{points} points, {len(verdicts)} verdicts: " + ", ".join(f"{n[k]} {k}" for k in VERDICTS if n[k])


def notable(verdicts: Sequence[Verdict]) -> list[Verdict]:
    return [v for v in verdicts if v.verdict != "unchanged"]


# ---- outputs --------------------------------------------------------------------------------------

def print_table(verdicts: Sequence[Verdict], candidate: Run, baselines: Sequence[Run], console: Console) -> None:
    """Regressions and failures first, then inconclusive, then the rest; unchanged only counted."""
    console.print(f"candidate [bold]{candidate.run_id}[/] (commit {(candidate.commit or '?')[:10]}) against "
                  f"{len(baselines)} baseline run(s) {baselines[0].run_id} … {baselines[-1].run_id}")
    rows = notable(verdicts)
    if rows:
        table = Table(show_lines=False, header_style="bold")
        for title in ("verdict", "point", "metric", "baseline", "candidate", "ratio [interval]", "runs", "reason",
                      "changed"):
            table.add_column(title, overflow="fold", no_wrap=title in ("verdict", "metric"))
        for v in rows[:TABLE_ROWS]:
            table.add_row(f"[{STYLE[v.verdict]}]{v.verdict}[/]", v.label, v.metric, number(v.baseline_value),
                          number(v.candidate_value), ratio_text(v), str(v.baseline_runs), v.reason, sides_text(v))
        console.print(table)
        if len(rows) > TABLE_ROWS:
            console.print(f"… and {len(rows) - TABLE_ROWS} more (--json or --markdown lists all)")
    console.print(counts_text(verdicts))


def markdown(verdicts: Sequence[Verdict], candidate: Run, baselines: Sequence[Run]) -> str:
    """A job summary or pull-request comment: the counts and every verdict but `unchanged`."""
    flagged = sum(v.verdict in FLAGGED for v in verdicts)
    lines = [f"## gptoss-compare: {candidate.run_id}", "",
             f"{'**' + str(flagged) + ' flagged**' if flagged else 'No regression'} against {len(baselines)} baseline "
             f"run(s) ({baselines[0].run_id} … {baselines[-1].run_id}); candidate commit "
             f"`{(candidate.commit or '?')[:10]}`.", "", counts_text(verdicts) + ".", ""]
    rows = notable(verdicts)
    if rows:
        lines += ["| verdict | point | metric | baseline | candidate | ratio [interval] | runs | reason | changed |",
                  "| --- | --- | --- | ---: | ---: | --- | ---: | --- | --- |"]
        lines += [f"| {'**' + v.verdict + '**' if v.verdict in FLAGGED else v.verdict} | {v.label} | {v.metric} | "
                  f"{number(v.baseline_value)} | {number(v.candidate_value)} | {ratio_text(v)} | {v.baseline_runs} | "
                  f"{v.reason} | {sides_text(v)} |".replace("\n", " ") for v in rows]
    return "\n".join(lines) + "\n"


def junit(verdicts: Sequence[Verdict]) -> str:
    """One testcase per point and metric: regressions and failed points fail; inconclusive, new and
    missing are skipped, with the reason."""
    suite = ET.Element("testsuite", name="gptoss-compare", tests=str(len(verdicts)),
                       failures=str(sum(v.verdict in FLAGGED for v in verdicts)), errors="0",
                       skipped=str(sum(v.verdict in ("inconclusive", "new", "missing") for v in verdicts)))
    for v in verdicts:
        case = ET.SubElement(suite, "testcase", classname=v.label, name=v.metric)
        message = "; ".join(s for s in (v.verdict, ratio_text(v) and f"ratio {ratio_text(v)}", v.reason, sides_text(v)) if s)
        if v.verdict in FLAGGED:
            ET.SubElement(case, "failure", message=message, type=v.verdict).text = (
                f"baseline {number(v.baseline_value)} ({v.baseline_runs} runs), candidate {number(v.candidate_value)}")
        elif v.verdict in ("inconclusive", "new", "missing"):
            ET.SubElement(case, "skipped", message=message)
    root = ET.Element("testsuites")
    root.append(suite)
    ET.indent(root)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def _text(text: str, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(text, path)


# ---- the command ----------------------------------------------------------------------------------

def read_runs(args: argparse.Namespace) -> tuple[list[Run], Run, list[Run]]:
    """Baselines, candidate and history runs (each folder read once); raises InputError."""
    try:
        candidates = run_dirs(args.runs[-1])
        base_dirs = run_dirs(args.runs[:-1])
        history_dirs = run_dirs(args.history) if args.history else []
    except FileNotFoundError as e:
        raise InputError(str(e)) from None
    if len(candidates) != 1:
        raise InputError(f"{args.runs[-1]}: the candidate must be one run folder, found {len(candidates)}")
    read: dict[Path, Run] = {}
    try:
        for d in dict.fromkeys([*base_dirs, *history_dirs, *candidates]):
            read[d.resolve()] = regression.read_run(d)
    except regression.UnreadableRun as e:
        raise InputError(f"unreadable run: {e}") from None
    candidate = read[candidates[0].resolve()]
    baselines = [read[d.resolve()] for d in base_dirs if d.resolve() != candidates[0].resolve()]
    if not baselines:
        raise InputError(f"no baseline run: {' '.join(args.runs[:-1])} names only the candidate")
    history = sorted(read.values(), key=lambda r: r.started) if args.history else []
    return sorted(baselines, key=lambda r: r.started), candidate, history


def _hardware(runs: Sequence[Run]) -> str:
    return ", ".join(sorted({str(h) for r in runs for h in r.points["hardware"].dropna()})) or "none"


def run(args: argparse.Namespace, console: Console) -> int:
    thresholds = thresholds_file.load(args.thresholds)
    baselines, candidate, history = read_runs(args)
    verdicts = regression.compare(baselines, candidate, thresholds, last=args.last)
    records = regression.verdicts_json(verdicts)
    try:
        write_text_atomic(records, candidate.path / regression.VERDICTS_FILE)
    except OSError as e:  # a read-only results folder (a CI artifact): the other outputs still come
        console.print(f"[yellow]gptoss-compare: cannot write {candidate.path / regression.VERDICTS_FILE} ({e.strerror})[/]")
    if not regression.comparable(verdicts):
        raise InputError(f"nothing comparable: no point of {candidate.path} ({len(candidate.points)} points, hardware "
                         f"{_hardware([candidate])}) has the identity of a baseline point (hardware "
                         f"{_hardware(baselines)}); a point is matched on {', '.join(thresholds_file.IDENTITY)}")
    print_table(verdicts, candidate, baselines, console)
    if args.json:
        _text(records, args.json)
    if args.junit:
        _text(junit(verdicts), args.junit)
    if args.markdown:
        _text(markdown(verdicts, candidate, baselines), args.markdown)
    if args.html:
        write_compare_page(verdicts, candidate, baselines, history, thresholds, args.html)
    return 1 if any(v.verdict in FLAGGED for v in verdicts) else 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gptoss-compare", description=__doc__.split("\n\n")[0].split(": ", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    p.add_argument("runs", nargs="+", metavar="RUN",
                   help="baseline run folders or globs (several form a history), then the candidate run folder")
    p.add_argument("--history", metavar="GLOB", action="append",
                   help="runs whose trend the HTML page draws per point, in time order (repeatable)")
    p.add_argument("--last", type=int, default=7, metavar="N",
                   help="rolling baseline: each point's last N baseline runs (default 7)")
    p.add_argument("--thresholds", type=Path, metavar="YAML",
                   help="thresholds laid over the defaults (harness/analysis/thresholds.yaml)")
    p.add_argument("--json", type=Path, metavar="PATH", help="the verdicts as a list of records")
    p.add_argument("--junit", type=Path, metavar="PATH", help="JUnit XML: one testcase per point and metric")
    p.add_argument("--markdown", type=Path, metavar="PATH", help="a job summary / pull-request comment")
    p.add_argument("--html", type=Path, metavar="PATH", help="a page of ratios with their intervals and the trends")
    return p


def main(argv: list[str] | None = None) -> None:
    p = parser()
    args = p.parse_args(argv)
    if len(args.runs) < 2:
        p.exit(2, "gptoss-compare: give one or more baseline runs, then the candidate run\n")
    if args.last < 1:
        p.exit(2, f"gptoss-compare: --last {args.last}: must be 1 or more\n")
    try:
        # a CI log is no terminal, and rich's 80 columns would fold every row of the table
        code = run(args, Console(highlight=False, width=None if sys.stdout.isatty() else 200))
    except (InputError, thresholds_file.ThresholdError) as e:
        p.exit(2, f"gptoss-compare: {e}\n")
    sys.exit(code)


if __name__ == "__main__":
    main()
