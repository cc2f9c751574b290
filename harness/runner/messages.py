"""What the parent and a worker process say to each other (harness.runner.worker): typed records,
one JSON line each, `type` naming the record. Each is built in one place and read back with
`decode`, so both sides of the pipe share one definition.

parent -> worker: Load, RunPoint, Reference, Close
worker -> parent: Hello (first), Phase and Facts (while a command runs), Result (ends a command)
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar, Optional

from harness.config import BackendChoice, ModelChoice, Parallel, PointConfig, TelemetryConfig, Workload


@dataclass
class Load:
    """Build the backend and load the group's model once, sized for its largest point."""
    type: ClassVar[str] = "load"
    backend: BackendChoice
    model: ModelChoice
    quant: str
    workload: Workload
    device: str
    telemetry: TelemetryConfig
    cache_dir: str
    trace_dir: Optional[str]
    max_batch_size: int
    max_seq_len: int
    parallel: Parallel = field(default_factory=Parallel)  # the GPUs the engine spans

    @classmethod
    def for_points(cls, backend: BackendChoice, configs: list[PointConfig], cache_dir: str, trace_dir: str | None,
                   telemetry: TelemetryConfig | None = None, max_batch_size: int | None = None,
                   max_seq_len: int | None = None, parallel: Parallel | None = None) -> Load:
        """The load of a group of points (the engine measured) or of its oracle (`backend` given,
        telemetry quiet, sizes of the reference prompts)."""
        c = configs[0]
        return cls(backend, c.model, c.quant, c.workload, c.device, telemetry or c.telemetry, cache_dir, trace_dir,
                   max_batch_size or max(p.workload.batch_size for p in configs),
                   max_seq_len or max(p.positions() for p in configs), parallel or c.parallel)


@dataclass
class RunPoint:
    type: ClassVar[str] = "point"
    point_id: str
    workload: Workload
    reference: Optional[list] = None  # the oracle's greedy tokens [seqs][tokens]; None: no agreement


@dataclass
class Reference:
    """The greedy tokens of the first `seqs` prompt rows at `context_len`, `tokens` positions."""
    type: ClassVar[str] = "reference"
    seed: int
    context_len: int
    seqs: int
    tokens: int


@dataclass
class Close:
    type: ClassVar[str] = "close"


@dataclass
class Hello:
    type: ClassVar[str] = "hello"
    pid: int


@dataclass
class Phase:
    type: ClassVar[str] = "phase"
    phase: str


@dataclass
class Facts:
    """What the worker found of its device and software (harness.runner.worker.device_facts)."""
    type: ClassVar[str] = "facts"
    facts: dict


@dataclass
class Result:
    """The end of a command: status ok, oom, error or skipped; `data` the command's answer."""
    type: ClassVar[str] = "result"
    status: str
    error: str = ""
    data: dict = field(default_factory=dict)
    required_gib: Optional[float] = None


MESSAGES = {m.type: m for m in (Load, RunPoint, Reference, Close, Hello, Phase, Facts, Result)}


def encode(msg, default=None) -> str:
    return json.dumps({"type": msg.type, **asdict(msg)}, default=default)


def decode(line: str) -> Any:
    d = json.loads(line)
    cls = MESSAGES[d.pop("type")]
    if cls is Load:
        d.update(backend=BackendChoice(**d["backend"]), model=ModelChoice(**d["model"]),
                 workload=Workload(**d["workload"]), telemetry=TelemetryConfig.from_cfg(d["telemetry"]),
                 parallel=Parallel(**d["parallel"]))
    elif cls is RunPoint:
        d["workload"] = Workload(**d["workload"])
    return cls(**d)
