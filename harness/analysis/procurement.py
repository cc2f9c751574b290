"""GPUs side by side at a target interactivity: tokens per second, per joule and per dollar.

A buyer's question is "at N tokens/s per user or more, which GPU and engine give the most tokens
per second per GPU, per joule and per dollar, and how many GPUs does my load need?". Runs from
different machines are merged by their hardware label (runs of one label are pooled: a batch
measured twice counts once, at the mean, with the runs' spread). Per (hardware, model, backend,
quant, context) the Pareto front of tok/s per GPU against tok/s per user (1000 / mean TPOT, as
InferenceX draws it) is interpolated with a monotone cubic (PCHIP, in log-log) at each target;
a target beyond the most interactive measured point is "not reached" and gets no throughput;
a target below the least interactive one gets that point's throughput (it is met, with room).

GPUs nobody measured are projected from the measured GPU of the closest architecture: each
measured step is rescaled by the roof it was nearer to (bandwidth, with the engine's measured
MBU, or the tensor-core rate, with its measured MFU), prefill by the tensor-core rate. Projected
rows carry basis "projected from <hardware>" and their assumptions, and rank after every
measured row: a projection never outranks a measurement.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.interpolate import PchipInterpolator

from harness import results
from harness.analysis.hardware import KNOWN_GPUS, GpuPeak, gpu_peak
from harness.analysis import roofline
from harness.analysis.prices import Prices
from harness.config import Parallel
from harness.model.spec import SPECS, ModelSpec
from harness.analysis.pareto import pareto_front

DEFAULT_TARGETS = (50.0, 100.0, 200.0)  # tok/s per user
DEFAULT_LOAD_TOK_S = 100_000.0  # aggregate output tok/s the "GPUs needed" column sizes for
GROUP = ["hardware", "model", "backend", "quant", "context_len"]
LAYOUT = ["gpu_count", "tp", "ep", "dp"]  # one engine's GPUs (harness.config.Parallel); runs before it: 1 GPU
MEASURED = "measured"


@dataclass(frozen=True)
class Machine:
    hardware: str  # the label runs were pooled under
    gpu_name: str | None  # as NVML reported it
    peak: GpuPeak | None  # its datasheet row; None for a GPU the table lacks (or a CPU)
    run_ids: tuple[str, ...]


@dataclass(frozen=True)
class ProcurementRow:
    """One (hardware, model, backend, quant, context) at one target interactivity."""
    hardware: str
    gpu_name: str | None
    model: str
    backend: str
    quant: str
    context_len: int
    target_tok_s_per_user: float
    tok_s_per_gpu: float | None  # None: the front does not reach the target
    ttft_ms: float | None  # prefill of the batch the target falls at
    batch_size: float | None  # the (fractional) batch the target falls at, interpolated like the rest
    energy_j_per_tok: float | None  # measured: NVML counter over decode, all the point's GPUs
    tok_per_joule: float | None
    tok_per_kwh: float | None
    power_w_per_gpu: float | None
    tok_s_per_kw_all_in: float | None  # tok/s per GPU / the price file's all-in kW per GPU
    usd_per_gpu_hour: float | None  # low end of the price file's range
    usd_per_mtok: float | None  # at the low price
    usd_per_mtok_high: float | None  # at the high price
    load_tok_s: float
    gpus_needed: int | None  # GPUs for load_tok_s at this interactivity
    cv: float | None  # relative spread of the runs at the target (repeats and, pooled, runs)
    basis: str  # "measured" or "projected from <hardware>"
    assumptions: str  # what a projection assumed (which tensor-core rate, efficiencies); "" if measured
    run_ids: str
    rank: int | None = None  # within (model, context_len, target): measured rows first
    margin_to_next: float | None = None  # relative lead on the next row of the same basis
    within_noise: bool | None = None  # the lead is smaller than the two rows' spread together

    @property
    def reached(self) -> bool:
        return self.tok_s_per_gpu is not None


@dataclass(frozen=True)
class MemoryFit:
    """The largest batch at a context that fits one model on one GPU, and how that is known."""
    gpu: str
    hardware: str | None  # the measured machine; None for a datasheet estimate
    model: str
    backend: str | None
    quant: str
    context_len: int
    max_batch: int | None  # None: not even batch 1
    capacity_gib: float | None
    peak_mem_gib: float | None  # measured at max_batch
    basis: str  # "measured peak memory" or "spec: weights + KV cache"
    note: str


@dataclass(frozen=True)
class Procurement:
    machines: list[Machine]
    rows: list[ProcurementRow]  # ranked
    points: pd.DataFrame  # the pooled points (measured and projected) the fronts are drawn from
    memory: list[MemoryFit]
    targets: tuple[float, ...]
    load_tok_s: float
    prices: Prices | None


# ---- reading runs -------------------------------------------------------------------------------

def load_points(paths) -> tuple[pd.DataFrame, list[Machine]]:
    """Every point of the runs, each row labelled with its run's hardware and GPU name (points,
    else env.json), and the machines the labels name."""
    frames = []
    for d in results.run_dirs(paths):
        p = results.load(d, "points").reindex(columns=list(results.POINT_COLUMNS))
        env_file = d / "env.json"
        env = json.loads(env_file.read_text()) if env_file.is_file() else {}
        gpu = next(iter(p["gpu_name"].dropna()), None) or env.get("gpu_name")
        label = next(iter(p["hardware"].dropna()), None) or gpu or env.get("cpu_model") or "unknown hardware"
        frames.append(p.assign(hardware=str(label), gpu_name=p["gpu_name"].fillna(gpu) if gpu else p["gpu_name"],
                               run_id=p["run_id"].fillna(d.name)))
    points = pd.concat(frames, ignore_index=True)
    machines = []
    for label, p in points.groupby("hardware", sort=True):
        gpu = next(iter(p["gpu_name"].dropna()), None)
        machines.append(Machine(label, gpu, gpu_peak(gpu), tuple(sorted(p["run_id"].unique()))))
    return points, machines


def pool(points: pd.DataFrame) -> pd.DataFrame:
    """One row per (hardware, model, backend, quant, context, GPU layout, batch) of the ok points,
    runs of one hardware averaged; cv is the larger of the repeats' spread and the runs' spread.
    per_gpu is the point's tok/s over the GPUs its engine spans: a 4-GPU point competes on the
    front with 1-GPU points per GPU, and is priced at its GPUs' hours (usd_per_gpu_hour x gpus)."""
    ok = points[(points["status"] == "ok") & points["tpot_ms_mean"].notna() & points["decode_tok_s"].notna()]
    if ok.empty:
        return pd.DataFrame(columns=[*GROUP, *LAYOUT, "batch_size", "per_user", "per_gpu"])
    ok = ok.assign(**{c: ok[c].fillna(1).clip(lower=1) if c in ok else 1 for c in LAYOUT})
    g = ok.groupby([*GROUP, *LAYOUT, "batch_size"], sort=True)
    spread = g["decode_tok_s"].std(ddof=1) / g["decode_tok_s"].mean()
    pooled = g.agg(gpu_name=("gpu_name", "first"),
                   tpot_ms_mean=("tpot_ms_mean", "mean"), decode_tok_s=("decode_tok_s", "mean"),
                   ttft_ms=("ttft_ms", "mean"), energy_j_per_tok=("energy_j_per_tok", "mean"),
                   power_w_mean=("power_w_mean", "mean"), new_tokens=("new_tokens", "max"),
                   repeat_cv=("cv", "mean"), run_ids=("run_id", lambda s: ",".join(sorted(set(s)))))
    pooled["cv"] = pd.concat([pooled["repeat_cv"], spread.rename("cv")], axis=1).max(axis=1, skipna=True)
    pooled = pooled.drop(columns="repeat_cv").reset_index()
    pooled["per_user"] = 1000 / pooled["tpot_ms_mean"]
    pooled["per_gpu"] = pooled["decode_tok_s"] / pooled["gpu_count"]
    pooled["basis"] = MEASURED
    pooled["assumptions"] = ""
    return pooled


# ---- the front at a target ---------------------------------------------------------------------

def _aux(front: pd.DataFrame, column: str, x: float) -> float | None:
    """A quantity of the front's points (TTFT, energy, ...) at log-interactivity x, linear between
    neighbours; None where any front point lacks it."""
    values = front[column].astype(float)
    if values.isna().any():
        return None
    return float(np.interp(x, np.log(front["per_user"]), values))


def at_target(front: pd.DataFrame, target: float) -> dict:
    """Throughput per GPU and the front's other quantities at `target` tok/s per user: PCHIP of
    log throughput over log interactivity (monotone, as the front is), never extrapolated.
    `front` is one group's Pareto front, sorted by per_user."""
    x, y = np.log(front["per_user"].to_numpy(float)), np.log(front["per_gpu"].to_numpy(float))
    t = math.log(target)
    if t > x[-1] + 1e-12:
        return {"tok_s_per_gpu": None}
    t = max(t, x[0])  # less interactive than the slowest point: that point meets the target
    per_gpu = float(np.exp(PchipInterpolator(x, y)(t))) if len(x) > 1 else float(np.exp(y[0]))
    return {"tok_s_per_gpu": per_gpu, "ttft_ms": _aux(front, "ttft_ms", t), "batch_size": _aux(front, "batch_size", t),
            "energy_j_per_tok": _aux(front, "energy_j_per_tok", t), "cv": _aux(front, "cv", t),
            "power_w_per_gpu": _aux(front.assign(p=front["power_w_mean"] / front["gpu_count"]), "p", t)}


def rows_at_targets(pooled: pd.DataFrame, targets, prices: Prices | None, load_tok_s: float) -> list[ProcurementRow]:
    rows = []
    for key, group in pooled.groupby(GROUP, sort=True):
        front = pareto_front(group, "per_user", "per_gpu")
        first = group.iloc[0]
        price = prices.for_gpu(first["gpu_name"]) if prices else None
        for target in targets:
            v = at_target(front, target)
            per_gpu, j = v["tok_s_per_gpu"], v.get("energy_j_per_tok")
            rows.append(ProcurementRow(
                **dict(zip(GROUP, key)), gpu_name=first["gpu_name"], target_tok_s_per_user=float(target),
                tok_s_per_gpu=per_gpu, ttft_ms=v.get("ttft_ms"), batch_size=v.get("batch_size"),
                energy_j_per_tok=j, tok_per_joule=1 / j if j else None, tok_per_kwh=3.6e6 / j if j else None,
                power_w_per_gpu=v.get("power_w_per_gpu"),
                tok_s_per_kw_all_in=per_gpu / price.all_in_kw_per_gpu if per_gpu and price and price.all_in_kw_per_gpu
                else None,
                usd_per_gpu_hour=price.usd_per_gpu_hour_low if price else None,
                usd_per_mtok=usd_per_mtok(price.usd_per_gpu_hour_low, per_gpu) if price and per_gpu else None,
                usd_per_mtok_high=usd_per_mtok(price.usd_per_gpu_hour_high, per_gpu) if price and per_gpu else None,
                load_tok_s=load_tok_s, gpus_needed=gpus_needed(load_tok_s, per_gpu) if per_gpu else None,
                cv=v.get("cv"), basis=first["basis"], assumptions=first["assumptions"],
                run_ids=",".join(sorted(set(",".join(group["run_ids"]).split(","))))))
    return rows


def usd_per_mtok(usd_per_gpu_hour: float, tok_s_per_gpu: float) -> float:
    """Dollars per million generated tokens: $/GPU-hour / (tok/s per GPU x 3600 / 1e6)."""
    return usd_per_gpu_hour / (tok_s_per_gpu * 3600 / 1e6)


def gpus_needed(load_tok_s: float, tok_s_per_gpu: float) -> int:
    """GPUs an aggregate output rate needs when each runs at tok_s_per_gpu."""
    return math.ceil(load_tok_s / tok_s_per_gpu - 1e-9)


# ---- projection --------------------------------------------------------------------------------

def _cc(peak: GpuPeak) -> tuple[int, int]:
    major, minor = peak.compute_capability.split(".")
    return int(major), int(minor)


def closest_measured(target: GpuPeak, measured: list[GpuPeak]) -> GpuPeak:
    """The measured GPU of the nearest architecture (compute capability), then nearest bandwidth."""
    def distance(ref: GpuPeak):
        (tm, tn), (rm, rn) = _cc(target), _cc(ref)
        return abs(tm - rm), abs(tn - rn), abs(math.log(target.mem_bw_bytes_s / ref.mem_bw_bytes_s))
    return min(measured, key=distance)


def _rate(peak: GpuPeak, fp4: bool) -> tuple[float, str]:
    if fp4 and peak.fp4_tensor_cores:
        return peak.fp4_flops, "FP4"
    return peak.bf16_flops, "BF16"


def assumptions(target: GpuPeak, ref: Machine, fp4: bool) -> str:
    rate, name = _rate(target, fp4)
    blackwell = ""
    if target.fp4_tensor_cores:
        blackwell = (f"; has FP4 tensor cores, assumed the {name} rate"
                     + ("" if fp4 else " (the measured engine's W4A16 math; --assume-fp4 for FP4)"))
    return (f"decode steps rescaled from {ref.hardware} by the roof each was nearer to: "
            f"{target.mem_bw_bytes_s / 1e12:.2f} TB/s x the measured MBU, or {rate / 1e12:,.0f} TFLOP/s {name} "
            f"x the measured MFU; prefill at {name} x the measured prefill MFU; only batches whose weights + KV "
            f"fit {target.memory_gib:g} GiB; no energy (not measured){blackwell}")


def project(pooled: pd.DataFrame, machines: list[Machine], fp4: bool = False) -> pd.DataFrame:
    """Pooled points of every table GPU that no run measured, from the measured GPU of the
    closest architecture (rows as pool() makes them, with basis and assumptions)."""
    by_label = {m.hardware: m for m in machines}
    known = [m for m in machines if m.peak is not None]
    measured_names = {m.peak.name for m in known}
    refs = [m.peak for m in known]
    out = []
    for target in KNOWN_GPUS:
        if target.name in measured_names or not refs:
            continue
        ref_peak = closest_measured(target, refs)
        for ref in (m for m in known if m.peak == ref_peak):
            src = pooled[(pooled["hardware"] == ref.hardware) & pooled["model"].isin(SPECS)]
            projected = [_project_point(r, SPECS[r["model"]], ref_peak, target, fp4) for _, r in src.iterrows()]
            projected = [p for p in projected if p is not None]
            if projected:
                out.append(pd.DataFrame(projected).assign(
                    hardware=f"{target.name} (projected)", gpu_name=target.name,
                    basis=f"projected from {by_label[ref.hardware].hardware}",
                    assumptions=assumptions(target, ref, fp4), energy_j_per_tok=np.nan, power_w_mean=np.nan))
    return pd.concat(out, ignore_index=True) if out else pooled.iloc[:0]


def _project_point(r: pd.Series, spec: ModelSpec, ref: GpuPeak, target: GpuPeak, fp4: bool) -> dict | None:
    batch, context, gpus = int(r["batch_size"]), int(r["context_len"]), int(r["gpu_count"])
    new_tokens = int(r["new_tokens"]) if pd.notna(r["new_tokens"]) else 1
    if spec.weight_bytes(r["quant"]) + spec.kv_cache_bytes(batch, context + new_tokens) > target.memory_gib * 2**30 * gpus:
        return None
    layout = Parallel(gpus, int(r["tp"]), int(r["ep"]), int(r["dp"]))
    cost = roofline.per_gpu(spec, r["quant"], batch, context, round(context + (new_tokens - 1) / 2), layout)
    nbytes, flops = cost.decode_bytes, cost.decode_flops
    step = r["tpot_ms_mean"] / 1e3
    mbu, mfu = nbytes / step / ref.mem_bw_bytes_s, flops / step / ref.bf16_flops
    rate, _ = _rate(target, fp4)
    rescaled = nbytes / (target.mem_bw_bytes_s * mbu) if mbu >= mfu else flops / (rate * mfu)
    new_step = max(rescaled, nbytes / target.mem_bw_bytes_s, flops / rate)  # never above either roof
    ttft = r["ttft_ms"] * ref.bf16_flops / rate if pd.notna(r["ttft_ms"]) else np.nan
    return {**r.to_dict(), "tpot_ms_mean": new_step * 1e3, "decode_tok_s": r["decode_tok_s"] * step / new_step,
            "per_user": 1 / new_step, "per_gpu": r["per_gpu"] * step / new_step, "ttft_ms": ttft}


# ---- ranking -----------------------------------------------------------------------------------

def rank(rows: list[ProcurementRow]) -> list[ProcurementRow]:
    """Per (model, context, target): measured rows by throughput, then projected rows likewise,
    targets not reached last in each; each row's margin on the next reached row of its basis and
    whether that margin is within the two rows' spread."""
    out = []
    frame = pd.DataFrame({"i": range(len(rows)), "model": [r.model for r in rows],
                          "context_len": [r.context_len for r in rows],
                          "target": [r.target_tok_s_per_user for r in rows]})
    for _, idx in frame.groupby(["model", "context_len", "target"], sort=True)["i"]:
        group = [rows[i] for i in idx]
        ordered = sorted(group, key=lambda r: (r.basis != MEASURED, not r.reached, -(r.tok_s_per_gpu or 0),
                                               r.hardware, r.backend, r.quant))
        for n, row in enumerate(ordered):
            nxt = ordered[n + 1] if n + 1 < len(ordered) else None
            margin = noise = None
            if row.reached and nxt is not None and nxt.reached and (nxt.basis == MEASURED) == (row.basis == MEASURED):
                margin = row.tok_s_per_gpu / nxt.tok_s_per_gpu - 1
                if row.cv is not None and nxt.cv is not None:
                    noise = margin < row.cv + nxt.cv
            out.append(replace(row, rank=n + 1, margin_to_next=margin, within_noise=noise))
    return out


def verdict(row: ProcurementRow) -> str:
    """The ranked table's last cell: how the row stands against the next one."""
    if not row.reached:
        return "not reached"
    if row.margin_to_next is None:
        return ""
    lead = f"+{row.margin_to_next:.1%} on the next"
    return f"{lead} (within noise)" if row.within_noise else lead


# ---- memory fit --------------------------------------------------------------------------------

def memory_fit(points: pd.DataFrame, machines: list[Machine]) -> list[MemoryFit]:
    """Largest batch per (model, quant, context): measured on each measured machine and backend
    (the largest batch that ran; the first that did not, if any), and from the spec's weight and
    KV bytes on every datasheet GPU (a bound: runtime overhead and activations not counted)."""
    fits = []
    peaks = {m.hardware: m.peak for m in machines}
    for (hw, backend, model, quant, ctx), p in points.groupby(["hardware", "backend", "model", "quant", "context_len"]):
        ok = p[p["status"] == "ok"]
        failed = p[p["status"].isin(["oom", "skipped"])]
        top = ok.loc[ok["batch_size"].idxmax()] if len(ok) else None
        first_fail = failed[failed["batch_size"] > (top["batch_size"] if top is not None else 0)]["batch_size"].min()
        note = (f"batch {int(first_fail)} did not fit" if pd.notna(first_fail)
                else "fits up to the largest batch swept")
        capacity = p["device_mem_gib"].dropna()
        peak = peaks.get(hw)
        fits.append(MemoryFit(
            peak.name if peak else str(p["gpu_name"].dropna().iloc[0] if p["gpu_name"].notna().any() else hw),
            hw, model, backend, quant, int(ctx), int(top["batch_size"]) if top is not None else None,
            float(capacity.iloc[0]) if len(capacity) else (peak.memory_gib if peak else None),
            _peak_per_gpu(top),
            "measured peak memory", note))
    shapes = points[points["model"].isin(SPECS)][["model", "quant", "context_len", "new_tokens"]]
    shapes = shapes.groupby(["model", "quant", "context_len"], as_index=False)["new_tokens"].max()
    for gpu in KNOWN_GPUS:
        for model, quant, ctx, new_tokens in shapes.itertuples(index=False):
            spec, total = SPECS[model], int(ctx) + (int(new_tokens) if pd.notna(new_tokens) else 0)
            free = gpu.memory_gib * 2**30 - spec.weight_bytes(quant)
            batch = int(free // spec.kv_cache_bytes(1, total)) if free > 0 else 0
            fits.append(MemoryFit(gpu.name, None, model, None, quant, int(ctx), batch or None, gpu.memory_gib, None,
                                  "spec: weights + KV cache",
                                  f"weights {spec.weight_bytes(quant) / 2**30:.1f} GiB + "
                                  f"{spec.kv_cache_bytes(1, total) / 2**20:.0f} MiB KV per sequence; "
                                  "runtime overhead not counted (an upper bound)"))
    return fits


def _peak_per_gpu(top: pd.Series | None) -> float | None:
    """The fullest GPU's peak, comparable with one GPU's capacity; runs before the per-GPU column
    had one GPU per engine, where the total is that GPU's."""
    if top is None:
        return None
    for column in ("peak_mem_per_gpu_gib", "peak_mem_gib"):
        if pd.notna(top.get(column)):
            return float(top[column])
    return None


# ---- the whole comparison ------------------------------------------------------------------------

def compare(paths, targets=DEFAULT_TARGETS, prices: Prices | None = None, load_tok_s: float = DEFAULT_LOAD_TOK_S,
            assume_fp4: bool = False) -> Procurement:
    """Read the runs and build every table of the procurement page."""
    points, machines = load_points(paths)
    pooled = pool(points)
    projected = project(pooled, machines, assume_fp4)
    both = pd.concat([pooled, projected], ignore_index=True) if len(projected) else pooled
    rows = rank(rows_at_targets(both, tuple(targets), prices, load_tok_s))
    return Procurement(machines, rows, both, memory_fit(points, machines), tuple(targets), load_tok_s, prices)


def rows_frame(rows: list[ProcurementRow]) -> pd.DataFrame:
    """The rows as the exports hold them: one column per field, a verdict column added."""
    columns = [f.name for f in fields(ProcurementRow)]
    df = pd.DataFrame([asdict(r) for r in rows], columns=columns).assign(verdict=[verdict(r) for r in rows])
    return df.astype({"context_len": "Int64", "gpus_needed": "Int64", "rank": "Int64", "within_noise": "boolean"})


def export(rows: list[ProcurementRow], csv_path: str | Path) -> tuple[Path, Path]:
    """Write the rows as CSV at csv_path and as parquet beside it (same name, .parquet)."""
    csv_path = Path(csv_path)
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    df = rows_frame(rows)
    results.write_text_atomic(df.to_csv(index=False), csv_path)
    parquet = csv_path.with_suffix(".parquet")
    results.write_atomic(results.to_table(df, {}), parquet)
    return csv_path, parquet
