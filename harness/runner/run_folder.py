"""One run folder, results/<run_id>/ (docs/results.md), shared by every job of a sweep.

Jobs may run at once (a parallel Hydra launcher), so every update of a table is a
read-modify-write under an exclusive lock on <run>/.lock, and every write is atomic: readers
(and a sweep killed mid-write) only ever see whole files.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import json
import re
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import pyarrow as pa
from omegaconf import OmegaConf

from harness.results import (POINT_COLUMNS, SAMPLE_COLUMNS, env_fingerprint, read_parquet, to_table, write_atomic,
                             write_env, write_text_atomic)
from harness.runner.point import Point


RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")  # a folder name every shell and URL takes as it is


class RunFolderError(ValueError):
    """A run folder that cannot be made, found or taken: the message says which and why."""


def new_run_id() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")


class RunFolder:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.run_id = self.path.name

    @classmethod
    def create(cls, results_dir: Path, run_id: str | None) -> "RunFolder":
        """A new, empty run folder; a timestamp id gets a suffix if that second is taken."""
        if run_id is not None and not RUN_ID.fullmatch(str(run_id)):
            raise RunFolderError(f"run_id={run_id!r}: use letters, digits, '.', '_' and '-' only "
                                 "(it names a folder and a report file)")
        results_dir.mkdir(parents=True, exist_ok=True)
        base = run_id or new_run_id()
        for n in itertools.count():
            path = results_dir / (base if n == 0 else f"{base}-{n}")
            try:
                path.mkdir()
                break
            except FileExistsError:
                if run_id:
                    raise RunFolderError(f"run folder {path} exists: pick another run_id or resume=true") from None
        run = cls(path)
        (path / "logs").mkdir()
        write_atomic(to_table(pd.DataFrame(), POINT_COLUMNS), path / "points.parquet")
        write_atomic(to_table(pd.DataFrame(), SAMPLE_COLUMNS), path / "samples.parquet")
        write_env(path / "env.json", env_fingerprint())
        return run

    @classmethod
    def existing(cls, path: Path) -> "RunFolder":
        if not (path / "config.yaml").is_file():
            raise RunFolderError(f"{path}: not a run folder of gptoss-bench (no config.yaml)")
        return cls(path)

    @contextlib.contextmanager
    def exclusive(self):
        """Held while a sweep runs the folder's points: a second sweep of the same run (two
        resumes at once) is refused instead of measuring the same points twice."""
        with open(self.path / ".sweep.lock", "a") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise RunFolderError(f"{self.path} is being run by another gptoss-bench right now; "
                                     "wait for it to end, then resume if points are left") from None
            try:
                yield self
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    # ---- the sweep ----------------------------------------------------------------------------
    def write_config(self, config: dict, overrides: list[str], points: list[Point]) -> None:
        """config.yaml: the resolved configuration, the sweep's overrides and every point."""
        doc = {**config, "run_id": self.run_id,
               "sweep": {"overrides": overrides, "points": [p.to_dict() for p in points]}}
        write_text_atomic(OmegaConf.to_yaml(OmegaConf.create(doc)), self.path / "config.yaml")

    def config(self) -> dict:
        return OmegaConf.to_container(OmegaConf.load(self.path / "config.yaml"))

    def points(self) -> list[Point]:
        return [Point.from_dict(p) for p in self.config()["sweep"]["points"]]

    def ok_point_ids(self) -> set[str]:
        points = read_parquet(self.path / "points.parquet", columns=["point_id", "status"])
        return set(points.point_id[points.status == "ok"])

    def log(self, group: str) -> Path:
        return self.path / "logs" / f"{group}.log"

    # ---- results ------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _locked(self):
        with open(self.path / ".lock", "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def _replace(self, name: str, point_id: str, new: pd.DataFrame | None, columns: dict) -> None:
        """Rows of `point_id` in <name>.parquet become `new` (none when None)."""
        path = self.path / f"{name}.parquet"
        old = read_parquet(path) if path.is_file() else None
        if old is None and new is None:
            return
        frames = [df for df in (old[old.point_id != point_id] if old is not None else None, new)
                  if df is not None and len(df)]
        table = pd.concat(frames, ignore_index=True) if frames else (old if old is not None else new).iloc[:0]
        write_atomic(to_table(table, columns), path)

    def add_point(self, row: dict, samples: pd.DataFrame | None = None, telemetry: pd.DataFrame | None = None,
                  kernels: pd.DataFrame | None = None, backend_columns: dict[str, str] | None = None) -> None:
        """Record one point's outcome, replacing what an earlier attempt at it left.
        backend_columns: the engine's own columns and their arrow types (Backend.columns_schema)."""
        from harness.telemetry import KERNEL_COLUMNS, TELEMETRY_COLUMNS
        pid = row["point_id"]
        extra = {k: pa.type_for_alias(v) for k, v in (backend_columns or {}).items() if k not in POINT_COLUMNS}
        with self._locked():
            self._replace("samples", pid, samples, SAMPLE_COLUMNS)
            self._replace("telemetry", pid, telemetry, TELEMETRY_COLUMNS)
            self._replace("kernels", pid, kernels, KERNEL_COLUMNS)
            self._replace("points", pid, pd.DataFrame([row]), {**POINT_COLUMNS, **extra})

    def update_env(self, host: dict, group: str, worker: dict) -> None:
        """env.json: the fingerprint of the host that runs the points (a SLURM node, say, rather than
        the login node that started the sweep, whose command line is kept), and under
        groups/<group> what that group's worker reported."""
        path = self.path / "env.json"
        with self._locked():
            env = json.loads(path.read_text())
            write_env(path, {**env, **host, "command": env["command"], "groups": {**env.get("groups", {}), group: worker}})
