"""Run folders (docs/results.md) read back into the frames the figures draw from.

Every row of every frame carries `run` (the run's label: its hardware label, plus the run id
when labels repeat) and `series` (backend and quant; prefixed by the model when the runs hold
more than one, and by the run when there are several), so figures of several runs and models
overlay them without knowing how many there are, and never draw one line through two models.

A run whose points.parquet cannot be read (truncated, corrupt, not parquet) is left out with a
warning naming the file and why, so one bad folder does not sink the report of the others.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pyarrow as pa

from harness import results

log = logging.getLogger(__name__)

# What reading a table can raise on a damaged file: pyarrow's errors (ArrowInvalid is also a
# ValueError) and the operating system's.
UNREADABLE = (OSError, ValueError, pa.ArrowException)


class NoReadableRun(ValueError):
    """None of the run folders named has a readable points.parquet; the message names each and why."""


@dataclass
class RunInfo:
    label: str
    run_id: str
    path: Path
    hardware: str
    env: dict
    config: str | None  # config.yaml as written
    # What the run's `mbu` column is measured against: runs written before calibration have no
    # `mbu_datasheet` column and their `mbu` is against the datasheet's peak bandwidth.
    mbu_ceiling: str = "measured copy bandwidth"


@dataclass
class SkippedRun:
    path: Path  # the file that could not be read
    reason: str


@dataclass
class Runs:
    infos: list[RunInfo]
    points: pd.DataFrame  # every POINT_COLUMNS column (null where a run lacks it), then backends' own
    telemetry: pd.DataFrame | None  # None: no run has the table
    kernels: pd.DataFrame | None
    skipped: list[SkippedRun] = field(default_factory=list)  # runs left out, each with why


def _why(error: Exception) -> str:
    """The reader's reason, without the path it repeats (the report names the file itself)."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return re.sub(r"^Could not open Parquet input source '[^']*': ", "", text)


def _read(path: Path, table: str, skipped: list[SkippedRun]) -> pd.DataFrame | None:
    """A run's table; None (and a SkippedRun naming the file) when it cannot be read."""
    try:
        return results.load(path, table)
    except UNREADABLE as e:
        skipped.append(SkippedRun(path / f"{table}.parquet", _why(e)))
        log.warning("report leaves out %s: %s", skipped[-1].path, skipped[-1].reason)
        return None


def _env(path: Path, skipped: list[SkippedRun]) -> dict:
    f = path / "env.json"
    if not f.is_file():
        return {}
    try:
        return json.loads(f.read_text())
    except (OSError, ValueError) as e:  # the run's points are still worth reporting
        skipped.append(SkippedRun(f, _why(e)))
        log.warning("report leaves out %s: %s", f, skipped[-1].reason)
        return {}


def _hardware(points: pd.DataFrame, env: dict) -> str:
    for value in (*points["hardware"].dropna(), *points["gpu_name"].dropna(), env.get("gpu_name"), env.get("cpu_model")):
        if value:
            return str(value)
    return "unknown hardware"


def _capacity(points: pd.DataFrame, env: dict) -> pd.Series:
    """device_mem_gib, from env.json's first GPU where the points lack it."""
    gpus = env.get("gpus") or [{}]
    return points["device_mem_gib"].astype(float).fillna(gpus[0].get("memory_gib"))


def series_parts(points: pd.DataFrame) -> list[str]:
    """The columns a series is keyed by: backend (with its set-up where a sweep ran it in several)
    and quant, the model where the points hold more than one, the run where they come from more
    than one."""
    return ((["run"] if points["run"].nunique() > 1 else []) + (["model"] if points["model"].nunique() > 1 else [])
            + ["backend", "quant"])


def series_title(points: pd.DataFrame) -> str:
    """The legend's title: what a series name is made of."""
    return " · ".join(series_parts(points))


def _series(points: pd.DataFrame) -> pd.Categorical:
    parts = series_parts(points)
    name = pd.Series([f"{results.engine_label(b, s)} {q}" for b, s, q in
                      zip(points["backend"], points["setup"], points["quant"])], index=points.index)
    for part in reversed(parts[:-2]):  # run, then model, before the engine
        name = points[part].fillna("?").astype(str) + " · " + name
    # one category order for all frames, so a series keeps its colour and legend place everywhere
    return pd.Categorical(name, sorted(name.unique()))


def load_runs(paths) -> Runs:
    """Read run folders (paths or globs, as harness.results.run_dirs takes them); raises
    FileNotFoundError naming a path that holds no run, NoReadableRun when no run can be read."""
    # one folder named twice (a relative and an absolute path, say) is one run, in its first place
    dirs = list({d.resolve(): d for d in results.run_dirs(paths)}.values())
    skipped: list[SkippedRun] = []
    read = [(d, _read(d, "points", skipped)) for d in dirs]
    read = [(d, p) for d, p in read if p is not None]
    if not read:
        raise NoReadableRun("no readable run: " + "; ".join(f"{s.path}: {s.reason}" for s in skipped))
    dirs = [d for d, _ in read]
    # every harness column (null where a run lacks it), then a backend's own (serving metrics, say)
    points = [p.reindex(columns=list(dict.fromkeys([*results.POINT_COLUMNS, *p.columns]))) for _, p in read]
    ceilings = ["measured copy bandwidth" if "mbu_datasheet" in p.columns else "datasheet bandwidth" for _, p in read]
    envs = [_env(d, skipped) for d in dirs]
    hardware = [_hardware(p, env) for p, env in zip(points, envs)]
    run_ids = [p["run_id"].dropna().iloc[0] if p["run_id"].notna().any() else d.name for d, p in zip(dirs, points)]
    unique = len(set(hardware)) == len(hardware)
    labels = [h if unique else f"{h} · {r}" for h, r in zip(hardware, run_ids)]

    infos, telemetry, kernels = [], [], []
    for d, p, env, label, hw, run_id, ceiling in zip(dirs, points, envs, labels, hardware, run_ids, ceilings):
        config = d / "config.yaml"
        infos.append(RunInfo(label, run_id, d, hw, env, config.read_text() if config.is_file() else None, ceiling))
        telemetry.append(_nonempty(_read(d, "telemetry", skipped)))
        kernels.append(_nonempty(_read(d, "kernels", skipped)))
    points = pd.concat([p.assign(run=label, device_mem_gib=_capacity(p, env))
                        for p, env, label in zip(points, envs, labels)], ignore_index=True)
    points["setup"] = points["setup"].fillna("")  # runs from before set-ups were recorded
    points["series"] = _series(points)
    return Runs(infos, points, _with_points(telemetry, labels, points), _with_points(kernels, labels, points), skipped)


def _nonempty(df: pd.DataFrame | None) -> pd.DataFrame | None:
    return df if df is not None and len(df) else None


def _with_points(frames: list[pd.DataFrame | None], labels: list[str], points: pd.DataFrame) -> pd.DataFrame | None:
    """One per-point table over the runs, each row given the series, batch and context of its point."""
    frames = [f.assign(run=label) for f, label in zip(frames, labels) if f is not None]
    if not frames:
        return None
    keys = points[["run", "point_id", "series", "batch_size", "context_len"]]
    return pd.concat(frames, ignore_index=True).merge(keys, on=["run", "point_id"], how="inner")
