"""kernels.parquet from a torch.profiler Chrome trace: per phase, per kernel, where the time went.

The phases are the record_function ranges that PointTelemetry.phases opens around the profiled
generate (or that an engine's own trace carries, backends.vllm.profile); a kernel belongs to the
phase its launch fell in, so an engine whose host runs a step ahead of its GPU (vLLM's async
scheduling) still has each kernel in the phase of the step that launched it. The time in a phase's
range that no kernel, memcpy or memset of it covers is the phase's `launch_gap` line: the GPU idle,
waiting for the host (PointTelemetry's phases synchronise the device at both ends, so their ranges
hold all their GPU work; an engine's own step ranges are approximate at a phase's ends). A kernel's
category may come from the ranges and operators its launch sat in (record_function("attention"),
aten::rms_norm; see kernel_categories), found through the launch's correlation id.

A trace without GPU activity (a CPU run) is read the same way with the outermost CPU operators
of each phase standing in for kernels, and the gap is the host's time outside any operator.

Kernels on one stream can overlap: cuBLASLt launches its split-K reduce with programmatic
dependent launch, so it starts before the GEMM it reduces ends. Perfetto wants the complete events
of a thread (here: a stream) strictly nested, so `nest` moves each such event to a track of its own
beside the stream before the trace is written.
"""

from __future__ import annotations

import gzip
import json
from collections import defaultdict
from itertools import count
from pathlib import Path
from typing import Callable, Iterable, Sequence

import pandas as pd

from harness.telemetry.kernel_categories import LAUNCH_GAP, categorize

DEVICE = {"kernel", "gpu_memcpy", "gpu_memset"}
LAUNCH = {"cuda_runtime", "cuda_driver"}
COLUMNS = ["phase", "kernel", "category", "calls", "total_ms", "mean_us", "share"]


def load_trace(path: str | Path) -> list[dict]:
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as f:
        return json.load(f)["traceEvents"]


def nest_trace(path: str | Path) -> list[dict]:
    """Rewrite the gzipped trace at `path` with its events nested (`nest`); returns the events."""
    with gzip.open(path, "rt") as f:
        trace = json.load(f)
    trace["traceEvents"] = nest(trace["traceEvents"])
    with gzip.open(path, "wt") as f:
        json.dump(trace, f)
    return trace["traceEvents"]


OVERLAP_TID = 10**9  # lane k of thread t is thread t + k * OVERLAP_TID: above any Linux tid or stream id


def nest(events: Sequence[dict]) -> list[dict]:
    """The events, with each complete event that overlaps another of its thread without nesting in
    it moved to the first overlap lane of that thread where it nests, named after the thread."""
    out = [dict(e) for e in events]
    names = {(e["pid"], e["tid"]): e["args"].get("name") for e in out
             if e.get("ph") == "M" and e.get("name") == "thread_name" and isinstance(e.get("args"), dict)}
    by_thread: dict[tuple, list[dict]] = defaultdict(list)
    for e in out:
        if e.get("ph") == "X" and isinstance(e.get("tid"), int):
            by_thread[(e["pid"], e["tid"])].append(e)
    lanes_used = set()
    for (pid, tid), spans in by_thread.items():
        open_ends: dict[int, list[float]] = defaultdict(list)  # lane -> end times of its open events
        for e in sorted(spans, key=lambda e: (float(e["ts"]), -float(e.get("dur", 0)))):
            ts, end = float(e["ts"]), float(e["ts"]) + float(e.get("dur", 0))
            for lane in count():
                stack = open_ends[lane]
                while stack and stack[-1] <= ts:
                    stack.pop()
                if not stack or end <= stack[-1]:
                    stack.append(end)
                    break
            if lane:
                e["tid"] = tid + lane * OVERLAP_TID
                lanes_used.add((pid, tid, lane))
    for pid, tid, lane in sorted(lanes_used):
        name = (names.get((pid, tid)) or f"thread {tid}").strip()
        out.append({"ph": "M", "name": "thread_name", "pid": pid, "tid": tid + lane * OVERLAP_TID,
                    "args": {"name": f"{name} (overlapping, {lane})"}})
    return out


def merge(intervals: Iterable[tuple[float, float]]) -> list[tuple[float, float]]:
    out: list[list[float]] = []
    for a, b in sorted(intervals):
        if out and a <= out[-1][1]:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return [(a, b) for a, b in out]


def enclosing_ranges(annotations: Sequence[dict], points: Sequence[tuple]) -> list[tuple[str, ...]]:
    """For each point (pid, tid, ts): the names of the spans (ranges, operators) on that thread
    around it, outermost first. One sweep per thread in time order."""
    out: list[tuple[str, ...]] = [()] * len(points)
    by_thread: dict[tuple, list] = defaultdict(list)
    for a in annotations:  # an annotation starting where a point is sorts first: it holds the point
        by_thread[(a["pid"], a["tid"])].append((a["ts"], 0, -a["dur"], a))
    for i, (pid, tid, ts) in enumerate(points):
        by_thread[(pid, tid)].append((ts, 1, 0.0, i))
    for items in by_thread.values():
        stack: list[dict] = []
        for ts, kind, _, item in sorted(items, key=lambda x: x[:3]):
            while stack and stack[-1]["ts"] + stack[-1]["dur"] < ts:
                stack.pop()
            if kind == 0:
                stack.append(item)
            else:
                out[item] = tuple(a["name"] for a in stack)
    return out


def outermost(ops: Sequence[dict]) -> list[dict]:
    """The operators not nested in another one on the same thread."""
    top, end = [], {}
    for op in sorted(ops, key=lambda e: (e["ts"], -e["dur"])):
        key = (op["pid"], op["tid"])
        if op["ts"] >= end.get(key, float("-inf")):
            top.append(op)
            end[key] = op["ts"] + op["dur"]
    return top


def kernel_table(events: Sequence[dict], phases: Sequence[str],
                 backend_category: Callable[[str], str | None] | None = None) -> pd.DataFrame:
    """Rows of COLUMNS for the named phases, in their order; within a phase the kernels by total
    time, then the launch_gap line. The shares of a phase sum to 1."""
    spans = [e for e in events if e.get("ph") == "X" and "dur" in e]
    annotations = [e for e in spans if e.get("cat") == "user_annotation"]
    windows = {p: merge((a["ts"], a["ts"] + a["dur"]) for a in annotations if a["name"] == p) for p in phases}
    ops = [e for e in spans if e.get("cat") in DEVICE]
    if ops:
        launches = {e["args"]["correlation"]: e for e in spans
                    if e.get("cat") in LAUNCH and "correlation" in e.get("args", {})}
        origin = [launches.get(op.get("args", {}).get("correlation")) for op in ops]
    else:
        ops = outermost([e for e in spans if e.get("cat") == "cpu_op"])
        origin = ops
    at = [(o["pid"], o["tid"], o["ts"]) if o is not None else None for o in origin]
    found = [i for i, a in enumerate(at) if a is not None]
    when = [a[2] if a is not None else op["ts"] for a, op in zip(at, ops)]  # the launch's time, else the op's
    context = [e for e in spans if e.get("cat") in ("user_annotation", "cpu_op")]
    ranges = dict(zip(found, enclosing_ranges(context, [at[i] for i in found])))
    category = {}  # (name, ranges) -> category: the same GEMM may serve attention and the MoE

    rows = []
    for phase, ws in windows.items():
        if not ws:
            continue
        members = [i for i in range(len(ops)) if any(a <= when[i] <= b for a, b in ws)]
        per_kernel: dict[tuple[str, str], list[float]] = defaultdict(list)
        for i in members:
            key = (ops[i]["name"], ranges.get(i, ()))
            if key not in category:
                category[key] = categorize(*key, backend=backend_category)
            per_kernel[(key[0], category[key])].append(ops[i]["dur"])
        phase_rows = [{"phase": phase, "kernel": name, "category": cat, "calls": len(d),
                       "total_ms": sum(d) / 1e3, "mean_us": sum(d) / len(d)}
                      for (name, cat), d in per_kernel.items()]
        phase_rows.sort(key=lambda r: -r["total_ms"])
        busy = [(ops[i]["ts"], ops[i]["ts"] + ops[i]["dur"]) for i in members]
        idle = [gap for w in ws for gap in _gaps(busy, w)]
        phase_rows.append({"phase": phase, "kernel": LAUNCH_GAP, "category": LAUNCH_GAP, "calls": len(idle),
                           "total_ms": sum(idle) / 1e3, "mean_us": sum(idle) / len(idle) if idle else 0.0})
        phase_sum = sum(r["total_ms"] for r in phase_rows)
        for r in phase_rows:
            r["share"] = r["total_ms"] / phase_sum if phase_sum else 0.0
        rows += phase_rows
    return pd.DataFrame(rows, columns=COLUMNS)


def _gaps(busy: Iterable[tuple[float, float]], window: tuple[float, float]) -> list[float]:
    """Lengths of the idle stretches of a window."""
    lo, hi = window
    gaps, t = [], lo
    for a, b in merge(busy):
        if b <= lo or a >= hi:
            continue
        if a > t:
            gaps.append(a - t)
        t = max(t, b)
    if hi > t:
        gaps.append(hi - t)
    return gaps
