"""The thresholds a regression verdict needs, read from yaml (thresholds.yaml beside this module
holds the defaults and says what each key means).

A user's file is laid over the defaults key by key, so it names only what it changes. A bad file
raises ThresholdError with one line naming the file and the key.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from harness.analysis.yaml_file import read_yaml

DEFAULTS = Path(__file__).with_name("thresholds.yaml")
IDENTITY = ("backend", "setup", "model", "quant", "batch_size", "context_len", "new_tokens", "router_skew",
            "hardware", "gpu_name")


class ThresholdError(ValueError):
    """One line: the file, the key, what is wrong."""


@dataclass(frozen=True)
class MetricThreshold:
    min_effect: float
    noise_floor: float
    single_value_noise: float  # run-to-run sd assumed when one baseline run gives one value a side


KEYS = tuple(f.name for f in fields(MetricThreshold))  # what a file may set per metric


@dataclass(frozen=True)
class PointOverride:
    match: dict  # identity column -> value
    metrics: dict[str, dict]  # metric -> the keys of MetricThreshold it sets

    def matches(self, identity: dict) -> bool:
        return all(str(identity.get(k)) == str(v) for k, v in self.match.items())


@dataclass(frozen=True)
class Thresholds:
    confidence: float
    min_history: int
    metrics: dict[str, MetricThreshold]
    points: list[PointOverride] = field(default_factory=list)

    def of(self, metric: str, identity: dict) -> MetricThreshold:
        """The thresholds of `metric` at the point of `identity`: the defaults, then each matching
        override in file order."""
        t = self.metrics[metric]
        for o in self.points:
            if metric in o.metrics and o.matches(identity):
                t = replace(t, **o.metrics[metric])
        return t


def _number(where: str, value, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise ThresholdError(f"{where}: {value!r} is not a number in [{low}, {high}]")
    return float(value)


def _metric_keys(where: str, value, metrics) -> dict[str, dict]:
    if not isinstance(value, dict):
        raise ThresholdError(f"{where}: expected a mapping of metric -> {{{', '.join(KEYS)}}}")
    out = {}
    for metric, keys in value.items():
        if metric not in metrics:
            raise ThresholdError(f"{where}.{metric}: unknown metric (expected one of {', '.join(metrics)})")
        if not isinstance(keys, dict):
            raise ThresholdError(f"{where}.{metric}: expected a mapping with some of {', '.join(KEYS)}")
        for k, v in keys.items():
            if k not in KEYS:
                raise ThresholdError(f"{where}.{metric}.{k}: unknown key (expected {', '.join(KEYS)})")
            _number(f"{where}.{metric}.{k}", v, 0.0, 1.0)
        out[metric] = {k: float(v) for k, v in keys.items()}
    return out


def _read(path: Path) -> dict:
    data = read_yaml(path, ThresholdError)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ThresholdError(f"{path}: expected a mapping with keys confidence, min_history, metrics, points")
    return data


def load(path: Path | str | None = None) -> Thresholds:
    """The defaults, with the file at `path` (if any) laid over them."""
    base = _read(DEFAULTS)
    metrics = {m: MetricThreshold(**v) for m, v in base["metrics"].items()}
    confidence, min_history, points = base["confidence"], base["min_history"], []
    if path is not None:
        path = Path(path)
        user = _read(path)
        for key in user:
            if key not in ("confidence", "min_history", "metrics", "points"):
                raise ThresholdError(f"{path}: {key}: unknown key (expected confidence, min_history, metrics, points)")
        if "confidence" in user:
            confidence = _number(f"{path}: confidence", user["confidence"], 0.5, 0.999999)
        if "min_history" in user:
            min_history = int(_number(f"{path}: min_history", user["min_history"], 2, 1000))
        for m, keys in _metric_keys(f"{path}: metrics", user.get("metrics") or {}, metrics).items():
            metrics[m] = replace(metrics[m], **keys)
        entries = user.get("points") or []
        if not isinstance(entries, list):
            raise ThresholdError(f"{path}: points: expected a list of {{match, metrics}}")
        for i, entry in enumerate(entries):
            where = f"{path}: points[{i}]"
            if not isinstance(entry, dict) or set(entry) != {"match", "metrics"}:
                raise ThresholdError(f"{where}: expected exactly the keys match and metrics")
            if not isinstance(entry["match"], dict) or not entry["match"]:
                raise ThresholdError(f"{where}.match: expected a mapping of identity column -> value")
            for k in entry["match"]:
                if k not in IDENTITY:
                    raise ThresholdError(f"{where}.match.{k}: not an identity column (expected one of {', '.join(IDENTITY)})")
            points.append(PointOverride(dict(entry["match"]), _metric_keys(f"{where}.metrics", entry["metrics"], metrics)))
    return Thresholds(confidence, min_history, metrics, points)
