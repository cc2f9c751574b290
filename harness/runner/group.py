"""One worker group's points (backend, model, quant and load options), run by the sweep itself or
as one launcher job.

First the agreement references the group lacks (a worker of the oracle's own), then one worker
that loads the engine once and serves the points in sweep order. Every point ends with a row:
  ok        measured;
  oom       CUDA out of memory (the worker frees its cache and goes on);
  error     an exception (one line here, the traceback in logs/<group>.log), or the worker died
            (the signal is named) and is restarted for the points after it;
  timeout   no result within workload.timeout_s: the worker is killed and restarted;
  skipped   the model, or the point's batch, does not fit (harness.engine.DoesNotFit), with required_gib.
A load that fails gives its status to every remaining point of the group.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone

import pandas as pd

from harness.analysis.calibration import Ceilings
from harness.analysis.roofline import roofline
from harness.results import env_fingerprint
from harness.runner.reference import ReferenceCache, references
from harness.runner import messages as M
from harness.runner.point import Point, model_spec
from harness.runner.run_folder import RunFolder
from harness.runner.terminal import SweepProgress
from harness.runner.worker_process import WorkerDied, WorkerProcess, WorkerTimeout

log = logging.getLogger(__name__)


def _frame(rec: dict | None) -> pd.DataFrame | None:
    """A table a worker sent; None when it has no rows (no NVML, no profiled window)."""
    return None if rec is None or not rec["data"] else pd.DataFrame(rec["data"], columns=rec["columns"])


class GroupRun:
    def __init__(self, run: RunFolder, group: str, progress: SweepProgress):
        self.run, self.group, self.progress = run, group, progress
        self.settings = run.config()
        self.log_path = run.log(group)
        self.host = env_fingerprint()
        self.facts: dict = {}  # what the worker reported of its device and software
        self.loaded: dict = {}
        self.columns: dict[str, str] = {}  # the backend's own columns and their types

    # ---- rows ---------------------------------------------------------------------------------
    def row(self, point: Point, started_at: str, status: str, **columns) -> dict:
        c, w = point.config, point.config.workload
        spec = model_spec(c.model)
        gpu_name = self.facts.get("gpu_name", self.host["gpu_name"])
        row = {
            "run_id": self.run.run_id, "point_id": point.point_id, "group": self.group, "started_at": started_at,
            "backend": c.backend.name, "setup": point.setup, "backend_version": self.loaded.get("backend_version"),
            "model": spec.name, "quant": c.quant, "seed": w.seed, "router_skew": w.router_skew,
            "batch_size": w.batch_size, "context_len": w.context_len, "new_tokens": w.new_tokens,
            "repeats": w.repeats, "gpu_name": gpu_name, "gpu_uuid": self._gpu_uuid(), **c.parallel.columns(),
            "hardware": self.settings["hardware"] or gpu_name or self.facts.get("cpu_model", self.host["cpu_model"]),
            "device_mem_gib": self.facts.get("device_mem_gib"), "load_s": self.loaded.get("load_s"),
            "status": status, "error": "",
            **columns,
        }
        ceilings = self.loaded.get("ceilings")
        row.update(roofline(spec, c.quant, w.batch_size, w.context_len, w.new_tokens, row.get("tpot_ms_mean"),
                            row.get("ttft_ms"), gpu_name, Ceilings.from_dict(ceilings) if ceilings else None,
                            c.parallel))
        return row

    def _gpu_uuid(self) -> str | None:
        """The UUIDs of the GPUs the loaded worker samples (none before a load, or without NVML)."""
        gpus = (self.loaded.get("telemetry_env") or {}).get("gpus") or []
        return ",".join(g["uuid"] for g in gpus if g.get("uuid")) or None

    def record(self, point: Point, row: dict, result: dict | None = None) -> None:
        if row["status"] != "ok" and row["error"] and "logs/" not in row["error"]:
            row["error"] += f" (logs/{self.log_path.name})"
        samples = None
        if result is not None:
            samples = pd.DataFrame(result["samples"], columns=["repeat", "step", "tpot_ms"])
            samples.insert(0, "point_id", point.point_id)
        self.run.add_point(row, samples, _frame(result and result["telemetry"]), _frame(result and result["kernels"]),
                           self.columns)
        self.progress.done(row["status"])
        self._note(f"{point.point_id}: {row['status']} {row['error']}")

    def _note(self, text: str) -> None:
        with open(self.log_path, "a") as f:
            f.write(f"== {text}\n")

    def _on_record(self, rec) -> None:
        if isinstance(rec, M.Phase):
            self.progress.phase(rec.phase)
        elif isinstance(rec, M.Facts):
            self.facts = rec.facts

    # ---- the worker ---------------------------------------------------------------------------
    def start(self, points: list[Point]) -> tuple[WorkerProcess, M.Result]:
        """A worker with the engine loaded for `points` (the load result, status ok or not)."""
        c = points[0].config
        self._note(f"starting a worker for {len(points)} points")
        self.progress.phase("starting worker")
        worker = WorkerProcess(c.backend.python, self.log_path)
        load = M.Load.for_points(c.backend, [p.config for p in points], self.settings["cache_dir"],
                                 str(self.run.path / "traces"))
        try:
            worker.request(None, c.workload.load_timeout_s)
            loaded = worker.request(load, c.workload.load_timeout_s, self._on_record)
        except WorkerTimeout as e:
            worker.kill()
            return worker, M.Result("timeout", f"loading: {e}")
        except WorkerDied as e:
            return worker, M.Result("error", f"worker died while loading: {e}")
        if loaded.status == "ok":
            self.loaded, self.columns = loaded.data, loaded.data["columns"]
            self.run.update_env(self.host, self.group, {**self.facts, "backend_version": loaded.data["backend_version"],
                                                        "telemetry": loaded.data["telemetry_env"],
                                                        "ceilings": loaded.data["ceilings"]})
        return worker, loaded

    def __call__(self, points: list[Point]) -> None:
        refs = references(points, ReferenceCache(self.settings["cache_dir"]), self.log_path,
                          self.settings["cache_dir"], self.progress.phase)
        worker = None
        try:
            for i, point in enumerate(points):
                self.progress.start(point.point_id)
                started_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
                if worker is None:
                    worker, loaded = self.start(points[i:])
                    if loaded.status != "ok":
                        for p in points[i:]:
                            if p is not point:
                                self.progress.start(p.point_id)
                            self.record(p, self.row(p, started_at, loaded.status, error=loaded.error,
                                                    required_gib=loaded.required_gib))
                        break
                worker = self.measure(worker, point, started_at, refs[point.point_id])
        except BaseException:
            if worker is not None:
                worker.kill()  # interrupted: the engine must not outlive the sweep
            raise
        if worker is not None:
            worker.close()

    def measure(self, worker: WorkerProcess, point: Point, started_at: str, reference) -> WorkerProcess | None:
        """Run one point and record its row; the worker to go on with (None: it was lost)."""
        w = point.config.workload
        try:
            res = worker.request(M.RunPoint(point.point_id, w, reference), w.timeout_s, self._on_record)
        except WorkerTimeout as e:
            worker.kill()
            self.record(point, self.row(point, started_at, "timeout", error=f"{e}; the worker was killed"))
            return None
        except WorkerDied as e:
            self.record(point, self.row(point, started_at, "error", error=f"worker died: {e}"))
            return None
        if res.status == "ok":
            self.record(point, self.row(point, started_at, "ok", **res.data["row"]), res.data)
        else:
            self.record(point, self.row(point, started_at, res.status, error=res.error, required_gib=res.required_gib))
        return worker


def run_group(run: RunFolder, group: str) -> None:
    """Run the points of `group` that have no ok row yet."""
    done = run.ok_point_ids()
    points = [p for p in run.points() if p.group == group and p.point_id not in done]
    if not points:
        return
    log.info("group %s: %d points, log %s", group, len(points), run.log(group))
    if SweepProgress.active is not None:
        GroupRun(run, group, SweepProgress.active)(points)
    else:
        with SweepProgress(len(points)) as progress:
            GroupRun(run, group, progress)(points)
