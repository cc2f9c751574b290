"""What a person watching a sweep sees: a progress bar over points naming the current point and
its phase, then one summary line per point."""

from __future__ import annotations

import pandas as pd
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

console = Console()
STATUS_STYLE = {"ok": "green", "oom": "yellow", "skipped": "cyan", "timeout": "magenta", "error": "red"}


class SweepProgress:
    """A rich progress bar over the points of a sweep. Jobs that run in this process (Hydra's basic
    launcher) find it as `SweepProgress.active`; a job in a process of its own makes its own."""

    active: "SweepProgress | None" = None

    def __init__(self, total: int):
        self.progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                                 MofNCompleteColumn(), TimeElapsedColumn(), console=console)
        self.task = self.progress.add_task("starting", total=total)
        self.point_id = ""

    def __enter__(self) -> "SweepProgress":
        self.progress.start()
        SweepProgress.active = self
        return self

    def __exit__(self, *exc) -> None:
        SweepProgress.active = None
        self.progress.update(self.task, description="sweep done")
        self.progress.stop()

    def start(self, point_id: str) -> None:
        self.point_id = point_id
        self.phase("start")

    def phase(self, name: str) -> None:
        self.progress.update(self.task, description=f"{self.point_id} [dim]{name}[/]")

    def done(self, status: str) -> None:
        self.progress.console.print(f"[{STATUS_STYLE.get(status, 'white')}]{status:>7}[/] {self.point_id}")
        self.progress.advance(self.task)


def _fmt(value, spec: str) -> str:
    return "" if value is None or pd.isna(value) else format(value, spec)


def summary(points: pd.DataFrame, reference: str = "torch_ref") -> list:
    """A table per worker group, one line per point, then the error of each failed point. mem is
    NVML's device peak where there is one, else torch's; `self` in the agree column marks the
    reference compared with itself (a determinism check, not an agreement)."""
    out = []
    for group, rows in points.groupby("group", sort=False):
        setup = rows["setup"].iloc[0] if "setup" in rows else None
        table = Table(title=escape(f"{group} [{setup}]") if setup else group, title_justify="left", title_style="bold")
        for name in ("point", "status", "ttft ms", "tpot p50 ms", "tok/s", "mem GiB", "agree"):
            table.add_column(name, justify="left" if name in ("point", "status") else "right", no_wrap=True)
        errors = []
        for r in rows.itertuples():
            mem = r.peak_mem_gib if pd.notna(r.peak_mem_gib) else r.torch_peak_gib
            label = r.point_id.removeprefix(f"{group}-")
            table.add_row(label, f"[{STATUS_STYLE.get(r.status, 'white')}]{r.status}[/]", _fmt(r.ttft_ms, ".1f"),
                          _fmt(r.tpot_ms_p50, ".2f"), _fmt(r.decode_tok_s, ".0f"), _fmt(mem, ".2f"),
                          "self" if r.backend == reference and pd.notna(r.agreement) else _fmt(r.agreement, ".3f"))
            if r.error:
                errors.append(f"  {label}: {r.error}")
        out += [table, *errors]
    if len(points) and points.peak_mem_gib.isna().all() and points.torch_peak_gib.isna().all():
        out.append("mem GiB: not measured here (no GPU: NVML and torch's CUDA allocator count device memory only)")
    return out
