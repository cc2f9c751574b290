"""Run folders (shared/design/RESULTS.md) read back into the frames the figures draw from.

Every row of every frame carries `run` (the run's label: its hardware label, plus the run id
when labels repeat) and `series` (backend and quant, prefixed by the run when there are
several), so figures of several runs overlay them without knowing how many there are.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from harness import results


@dataclass
class RunInfo:
    label: str
    run_id: str
    path: Path
    hardware: str
    env: dict
    config: str | None  # config.yaml as written


@dataclass
class Runs:
    infos: list[RunInfo]
    points: pd.DataFrame  # every POINT_COLUMNS column, null where a run lacks it
    telemetry: pd.DataFrame | None  # None: no run has the table
    kernels: pd.DataFrame | None


def _table(path: Path, table: str) -> pd.DataFrame | None:
    df = results.load(path, table)
    return df if len(df) else None


def _hardware(points: pd.DataFrame, env: dict) -> str:
    for value in (*points["hardware"].dropna(), *points["gpu_name"].dropna(), env.get("gpu_name"), env.get("cpu_model")):
        if value:
            return str(value)
    return "unknown hardware"


def _capacity(points: pd.DataFrame, env: dict) -> pd.Series:
    """device_mem_gib, from env.json's first GPU where the points lack it."""
    gpus = env.get("gpus") or [{}]
    return points["device_mem_gib"].astype(float).fillna(gpus[0].get("memory_gib"))


def load_runs(paths) -> Runs:
    """Read run folders (paths or globs, as harness.results.run_dirs takes them); raises
    FileNotFoundError naming a path that holds no run."""
    dirs = results.run_dirs(paths)
    points = [results.load(d, "points").reindex(columns=list(results.POINT_COLUMNS)) for d in dirs]
    envs = [json.loads((d / "env.json").read_text()) if (d / "env.json").is_file() else {} for d in dirs]
    hardware = [_hardware(p, env) for p, env in zip(points, envs)]
    run_ids = [p["run_id"].dropna().iloc[0] if p["run_id"].notna().any() else d.name for d, p in zip(dirs, points)]
    unique = len(set(hardware)) == len(hardware)
    labels = [h if unique else f"{h} · {r}" for h, r in zip(hardware, run_ids)]

    infos, telemetry, kernels = [], [], []
    for d, p, env, label, hw, run_id in zip(dirs, points, envs, labels, hardware, run_ids):
        config = d / "config.yaml"
        infos.append(RunInfo(label, run_id, d, hw, env, config.read_text() if config.is_file() else None))
        telemetry.append(_table(d, "telemetry"))
        kernels.append(_table(d, "kernels"))
    points = pd.concat([p.assign(run=label, device_mem_gib=_capacity(p, env))
                        for p, env, label in zip(points, envs, labels)], ignore_index=True)
    prefix = points["run"] + " · " if len(dirs) > 1 else ""
    points["series"] = prefix + points["backend"].astype(str) + " " + points["quant"].astype(str)
    # one category order for all frames, so a series keeps its colour and legend place everywhere
    points["series"] = pd.Categorical(points["series"], sorted(points["series"].unique()))
    return Runs(infos, points, _with_points(telemetry, labels, points), _with_points(kernels, labels, points))


def _with_points(frames: list[pd.DataFrame | None], labels: list[str], points: pd.DataFrame) -> pd.DataFrame | None:
    """One per-point table over the runs, each row given the series, batch and context of its point."""
    frames = [f.assign(run=label) for f, label in zip(frames, labels) if f is not None]
    if not frames:
        return None
    keys = points[["run", "point_id", "series", "batch_size", "context_len"]]
    return pd.concat(frames, ignore_index=True).merge(keys, on=["run", "point_id"], how="inner")
