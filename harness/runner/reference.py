"""Agreement references: the oracle's greedy tokens on the same weights and prompt rows.

Computed once per (weights, quant, seed, context_len, seqs, tokens, oracle) in a worker of their
own, before the group's engine starts, so two engines are never in memory together; cached as
JSON under <cache_dir>/agreement/ and reused by every later sweep. The oracle (agreement.reference,
torch_ref) also gets a reference for its own group: agreement then checks it is deterministic.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict
from pathlib import Path

from harness.config import Parallel, TelemetryConfig
from harness.model.spec import weight_format
from harness.results import write_text_atomic
from harness.runner import messages as M
from harness.runner.point import Point
from harness.runner.worker_process import WorkerDied, WorkerProcess, WorkerTimeout

log = logging.getLogger(__name__)
QUIET = TelemetryConfig(nvml=False, nvtx=False)  # the reference worker is not measured


def reference_key(point: Point) -> dict | None:
    """What a point's reference depends on; None when agreement is off."""
    c = point.config
    a, m, w = c.agreement, c.model, c.workload
    if not a.enabled:
        return None
    weights = {"checkpoint": m.path} if m.path else {"synthetic": m.name, "seed": w.seed, "router_skew": w.router_skew}
    return {"weights": weights, "quant": weight_format(c.quant), "seed": w.seed, "context_len": w.context_len,
            "seqs": min(w.batch_size, a.seqs), "tokens": a.tokens, "oracle": asdict(a.reference)}


class ReferenceCache:
    def __init__(self, cache_dir: str | Path):
        self.dir = Path(cache_dir).expanduser() / "agreement"

    def _path(self, key: dict) -> Path:
        return self.dir / (hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24] + ".json")

    def get(self, key: dict) -> list[list[int]] | None:
        path = self._path(key)
        return json.loads(path.read_text())["tokens"] if path.is_file() else None

    def put(self, key: dict, tokens: list[list[int]]) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(json.dumps({"key": key, "tokens": tokens}), self._path(key))


def references(points: list[Point], cache: ReferenceCache, log_path: Path, cache_dir: str,
               phase=lambda name: None) -> dict[str, list[list[int]] | None]:
    """point_id -> reference tokens (None: agreement off, or the oracle failed; see the log)."""
    keys = {p.point_id: reference_key(p) for p in points}
    missing = list({json.dumps(k, sort_keys=True): k for k in keys.values()
                    if k is not None and cache.get(k) is None}.values())
    if missing:
        phase("agreement reference")
        _compute(missing, points[0], cache, log_path, cache_dir)
    return {pid: cache.get(k) if k is not None else None for pid, k in keys.items()}


def _compute(keys: list[dict], point: Point, cache: ReferenceCache, log_path: Path, cache_dir: str) -> None:
    oracle = point.config.agreement.reference
    with open(log_path, "a") as f:
        f.write(f"== agreement references: {len(keys)} prompt shapes on {oracle.name}\n")
    worker = WorkerProcess(oracle.python, log_path)
    try:
        _ask(worker, keys, point, cache, cache_dir)
    except (WorkerTimeout, WorkerDied) as e:
        log.warning("agreement reference worker: %s; agreement stays null", e)
    except BaseException:
        worker.kill()
        raise
    worker.close()


def _ask(worker: WorkerProcess, keys: list[dict], point: Point, cache: ReferenceCache, cache_dir: str) -> None:
    c = point.config
    oracle, w = c.agreement.reference, c.workload
    worker.request(None, w.load_timeout_s)
    load = M.Load.for_points(oracle, [c], cache_dir, None, telemetry=QUIET,
                             max_batch_size=max(k["seqs"] for k in keys),
                             max_seq_len=max(k["context_len"] + k["tokens"] for k in keys),
                             parallel=Parallel())  # the oracle runs on one GPU
    load.quant = weight_format(c.quant)
    loaded = worker.request(load, w.load_timeout_s)
    if loaded.status != "ok":
        log.warning("agreement reference: %s could not load (%s); agreement stays null", oracle.name, loaded.error)
        return
    for key in keys:
        res = worker.request(M.Reference(key["seed"], key["context_len"], key["seqs"], key["tokens"]), w.timeout_s)
        if res.status == "ok":
            cache.put(key, res.data["tokens"])
        else:
            log.warning("agreement reference at context %d failed (%s)", key["context_len"], res.error)
