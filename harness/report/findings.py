"""What a run found, in sentences: the section that opens every report.

The figures show everything; these sentences say what a reader would otherwise have to find in them:
what ran on which weights and device, the fastest engine at each shape and by how much, how close
batch 1 came to the memory-bandwidth ceiling, MXFP4 against bf16, which MXFP4 path each engine took,
which profiled phases the host held up, points measured on different GPUs, and every point that did
not run, throttled, disagreed with the reference or whose repeats spread. Each sentence is a Finding
that carries the numbers it states and the points.parquet cells they are, so a test holds every
sentence to the table. A sentence is written only for data that is there: a null column says nothing
(never "0").
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd
import yaml

from harness.report.numbers import integer, number, percent, ratio
from harness.report.runs import RunInfo, Runs
from harness.results import engine_label
from harness.config import WARMUP_RUN, WARMUP_SETTLED
from harness.telemetry.kernel_categories import LAUNCH_GAP

# Kernels that round differently flip a near-tie argmax now and then, so agreement of
# AGREEMENT_WARN or more is a note; below it a warning.
AGREEMENT_WARN = 0.9
# The repeats of a point on a quiet GPU agree to about 1% (cv: std / mean of the per-repeat mean
# step time). 5% is well past that and as large as the differences between kernel variants this
# harness is used to tell apart, so a point above it cannot rank them: it is called noisy.
NOISY_CV = 0.05
MXFP4, BF16 = "mxfp4", "bf16"
# A profiled phase whose GPU sat idle (its launch_gap line) for more than this share of it was set
# by the host (launches, scheduling, compilation), not by its kernels: faster kernels would not
# shorten it. (vLLM's streamed batch-8 prefills on the H200: 95% idle; decode with CUDA graphs: 2-10%.)
HOST_BOUND = 0.5

# kind -> the heading its sentences are listed under, in the page's order: what ran, then what to
# distrust (read before the numbers it qualifies), then the results
KINDS = {
    "setup": "What ran",
    "gpus": "Points measured on different GPUs",
    "failed": "Points that did not run",
    "throttled": "Throttled points",
    "disagrees": "Points that disagree with the reference",
    "noisy": "Noisy points",
    "unsettled": "Points whose warm-up did not settle",
    "compiled": "Points that compiled kernels while measured",
    "fastest": "Fastest engine per shape (decode)",
    "mbu": "Memory bandwidth at batch 1",
    "quant": "MXFP4 against bf16",
    "path": "MXFP4 path each engine took",
    "host": "Profiled phases the host held up",
}


@dataclass(frozen=True)
class Cell:
    """Where a stated value lives: one cell of a run's points.parquet."""
    run_id: str
    point_id: str
    column: str


@dataclass(frozen=True)
class Number:
    value: float | int  # unrounded
    shown: str  # as the sentence writes it
    cell: Cell | None = None  # None: derived from the finding's other numbers, or counted over points


@dataclass(frozen=True)
class Quote:
    """A text value the sentence states: a name, a status, an error, a path."""
    value: str
    cell: Cell | None = None  # None: from config.yaml or env.json


@dataclass(frozen=True)
class Finding:
    kind: str  # a key of KINDS
    text: str
    numbers: dict[str, Number] = field(default_factory=dict)
    quotes: dict[str, Quote] = field(default_factory=dict)
    level: str = "info"  # info, note or warning: how the page marks it


# ---- helpers -------------------------------------------------------------------------------------
def _cell(row, column: str) -> Cell:
    return Cell(str(row["run_id"]), str(row["point_id"]), column)


def _num(row, column: str, shown=number) -> Number:
    return Number(row[column].item() if hasattr(row[column], "item") else row[column], shown(row[column]),
                  _cell(row, column))


def _present(row, column: str) -> bool:
    return column in row and not pd.isna(row[column]) and row[column] != ""


def _backend(row) -> str:
    return engine_label(row["backend"], row.get("setup"))


def _engine(row) -> str:
    return f"{_backend(row)} {row['quant']}"


def _shape(row) -> str:
    return f"{row['model']}, batch {integer(row['batch_size'])}, context {integer(row['context_len'])}"


def _shape_numbers(row) -> dict[str, Number]:
    return {"batch_size": _num(row, "batch_size", integer), "context_len": _num(row, "context_len", integer)}


def _ok(points: pd.DataFrame, *columns: str) -> pd.DataFrame:
    ok = points[points["status"] == "ok"]
    return ok.dropna(subset=list(columns)) if columns else ok


def _order(points: pd.DataFrame) -> pd.DataFrame:
    return points.sort_values(["model", "batch_size", "context_len", "backend", "setup", "quant"],
                              na_position="last")


# ---- what ran ------------------------------------------------------------------------------------
def _point_configs(config: str | None) -> tuple[dict, dict]:
    """config.yaml's per-point configs (point_id -> config) and its top level; empty when it is
    absent or unreadable."""
    try:
        doc = yaml.safe_load(config) if config else None
    except yaml.YAMLError:
        doc = None
    if not isinstance(doc, dict):
        return {}, {}
    points = (doc.get("sweep") or {}).get("points") or []
    return {p.get("point_id"): p.get("config") or {} for p in points if isinstance(p, dict)}, doc


def _weights(model_points: pd.DataFrame, configs: dict, top: dict) -> tuple[str, dict, dict] | None:
    """How a model's weights are described: the checkpoint path, or synthetic with its seed."""
    found = [configs[pid]["model"] for pid in model_points["point_id"] if isinstance(configs.get(pid, {}).get("model"), dict)]
    if not found and isinstance(top.get("model"), dict) and top["model"].get("name") in set(model_points["model"]):
        found = [top["model"]]
    if not found:
        return None
    paths = list(dict.fromkeys(m.get("path") for m in found))
    if paths != [None]:
        shown = ", ".join(str(p) for p in paths if p)
        return f"the checkpoint {shown}" + (" and synthetic weights" if None in paths else ""), {}, \
            {"model_path": Quote(shown)}
    seeded = model_points.dropna(subset=["seed"]).drop_duplicates("seed").sort_values("seed")
    if seeded.empty:
        return "synthetic weights", {}, {}
    seeds = {f"seed_{i}": _num(row, "seed", integer) for i, (_, row) in enumerate(seeded.iterrows())}
    return f"synthetic weights (seed{'s' if len(seeds) > 1 else ''} {', '.join(n.shown for n in seeds.values())})", \
        seeds, {}


def _device(info: RunInfo, p: pd.DataFrame) -> tuple[str, dict, dict]:
    workers = [w for w in (info.env.get("groups") or {}).values() if isinstance(w, dict)]
    kinds = list(dict.fromkeys(str(w["device"]).split(":")[0] for w in workers if w.get("device")))
    gpu = p.dropna(subset=["gpu_name"])
    if not gpu.empty and kinds != ["cpu"]:
        row = gpu.iloc[0]
        numbers, quotes = {"gpu_count": _num(row, "gpu_count", integer)} if _present(row, "gpu_count") else {}, \
            {"gpu_name": Quote(str(row["gpu_name"]), _cell(row, "gpu_name"))}
        caps = list(dict.fromkeys(str(w["compute_capability"]) for w in workers if w.get("compute_capability")))
        text = (f"{integer(row['gpu_count'])} × " if "gpu_count" in numbers else "") + str(row["gpu_name"])
        if caps:
            text += f" (compute capability {', '.join(caps)})"
        return (f"on device {', '.join(kinds)}: " if kinds else "on ") + text, numbers, quotes
    cpu = next((w["cpu_model"] for w in workers if w.get("cpu_model")), info.env.get("cpu_model"))
    if kinds == ["cpu"] or (not kinds and cpu):
        return "on the CPU" + (f" ({cpu})" if cpu else ""), {}, {}
    return "", {}, {}


def setup(info: RunInfo, p: pd.DataFrame) -> list[Finding]:
    """One sentence per run: its models and their weights, the device, how its points ended."""
    if p.empty:
        return [Finding("setup", f"{info.label} holds no points.")]
    configs, top = _point_configs(info.config)
    parts, numbers, quotes = [], {}, {}
    for i, (model, mp) in enumerate(p.groupby("model", sort=True)):
        quotes[f"model_{i}"] = Quote(str(model), _cell(mp.iloc[0], "model"))
        weights = _weights(mp, configs, top)
        if weights is None:
            parts.append(str(model))
            continue
        text, n, q = weights
        parts.append(f"{model} on {text}")
        numbers |= {f"{k}_{i}": v for k, v in n.items()}
        quotes |= {f"{k}_{i}": v for k, v in q.items()}
    device, n, q = _device(info, p)
    numbers |= n
    quotes |= q
    counts = p["status"].fillna("unknown").value_counts()
    numbers["points"] = Number(len(p), integer(len(p)))
    numbers |= {f"status_{s}": Number(int(c), integer(c)) for s, c in counts.items()}
    ended = ", ".join(f"{integer(c)} {s}" for s, c in counts.items())
    models = " and ".join(parts) if len(parts) <= 2 else ", ".join(parts[:-1]) + " and " + parts[-1]
    text = f"{info.label} ran {models}{', ' + device if device else ''}. {integer(len(p))} points: {ended}."
    return [Finding("setup", text, numbers, quotes)]


# ---- results -------------------------------------------------------------------------------------
def fastest(p: pd.DataFrame) -> list[Finding]:
    """Per shape (model, batch, context) run by more than one engine: the one with the shortest
    median decode step, against the next."""
    out = []
    for _, shape in _ok(p, "tpot_ms_p50").groupby(["model", "batch_size", "context_len"], sort=True):
        if len(shape) < 2:
            continue
        best, next_ = (r for _, r in shape.sort_values("tpot_ms_p50").head(2).iterrows())
        speedup = next_["tpot_ms_p50"] / best["tpot_ms_p50"]
        numbers = _shape_numbers(best) | {
            "engines": Number(len(shape), integer(len(shape))),
            "tpot_ms_p50": _num(best, "tpot_ms_p50"), "next_tpot_ms_p50": _num(next_, "tpot_ms_p50"),
            "speedup": Number(speedup, ratio(speedup))}
        out.append(Finding("fastest", (
            f"{_shape(best)}: {_engine(best)} decodes fastest of {integer(len(shape))} engine · quant setups, "
            f"{number(best['tpot_ms_p50'])} ms a step (TPOT p50), {ratio(speedup)} as fast as the next, "
            f"{_engine(next_)} ({number(next_['tpot_ms_p50'])} ms)."), numbers,
            {"engine": Quote(_engine(best)), "next_engine": Quote(_engine(next_))}))
    return out


def mbu(p: pd.DataFrame, ceiling: str) -> list[Finding]:
    """Batch-1 points: the decode step's bytes over its time, against the ceilings. `ceiling`
    names what the run's `mbu` column is measured against."""
    out = []
    has_datasheet = "mbu_datasheet" in p
    ok = _ok(p)
    for _, row in _order(ok[ok["batch_size"] == 1]).iterrows():
        shares = []
        numbers = _shape_numbers(row)
        if _present(row, "mbu"):
            numbers["mbu"] = _num(row, "mbu", percent)
            shares.append(f"{percent(row['mbu'])} of the {ceiling}")
        if has_datasheet and _present(row, "mbu_datasheet"):
            numbers["mbu_datasheet"] = _num(row, "mbu_datasheet", percent)
            shares.append(f"{percent(row['mbu_datasheet'])} of the datasheet bandwidth")
        if not shares:
            continue
        reads = "reads its decode step's bytes at"
        if _present(row, "decode_bytes_per_step") and _present(row, "tpot_ms_mean"):
            gb, tb_s = row["decode_bytes_per_step"] / 1e9, row["decode_bytes_per_step"] / row["tpot_ms_mean"] / 1e9
            numbers |= {"gb": Number(gb, number(gb)), "tpot_ms_mean": _num(row, "tpot_ms_mean"),
                        "tb_s": Number(tb_s, number(tb_s))}
            reads = f"reads {number(gb)} GB in its {number(row['tpot_ms_mean'])} ms decode step (mean): {number(tb_s)} TB/s,"
        out.append(Finding("mbu", f"{_shape(row)}: {_engine(row)} {reads} {' and '.join(shares)} (MBU).", numbers,
                           {"engine": Quote(_engine(row))}))
    return out


# (column, what the sentence calls it) of the memory compared: the first present in both points
MEMORY = [("weights_gib", "weights"), ("peak_mem_gib", "peak device memory"), ("torch_peak_gib", "peak torch memory")]


def quant(p: pd.DataFrame) -> list[Finding]:
    """Per engine and shape run both in an MXFP4 mode and in bf16: speed, memory, energy ratios."""
    out = []
    for _, shape in _ok(p).groupby(["backend", "setup", "model", "batch_size", "context_len"], sort=True):
        bf16 = shape[shape["quant"] == BF16]
        if bf16.empty:
            continue
        ref = bf16.iloc[0]
        for _, row in shape[shape["quant"].astype(str).str.startswith(MXFP4)].sort_values("quant").iterrows():
            numbers, clauses = _shape_numbers(row), []
            if _present(row, "tpot_ms_p50") and _present(ref, "tpot_ms_p50"):
                speed = ref["tpot_ms_p50"] / row["tpot_ms_p50"]
                numbers |= {"tpot_ms_p50": _num(row, "tpot_ms_p50"), "bf16_tpot_ms_p50": _num(ref, "tpot_ms_p50"),
                            "speed": Number(speed, ratio(speed))}
                clauses.append(f"decode {ratio(speed)} as fast ({number(row['tpot_ms_p50'])} against "
                               f"{number(ref['tpot_ms_p50'])} ms a step, TPOT p50)")
            memory = next(((c, name) for c, name in MEMORY if _present(row, c) and _present(ref, c)), None)
            if memory:
                c, name = memory
                share = row[c] / ref[c]
                numbers |= {c: _num(row, c), f"bf16_{c}": _num(ref, c), "memory": Number(share, ratio(share))}
                clauses.append(f"{name} {ratio(share)} the size ({number(row[c])} against {number(ref[c])} GiB)")
            if _present(row, "energy_j_per_tok") and _present(ref, "energy_j_per_tok"):
                share = row["energy_j_per_tok"] / ref["energy_j_per_tok"]
                numbers |= {"energy_j_per_tok": _num(row, "energy_j_per_tok"),
                            "bf16_energy_j_per_tok": _num(ref, "energy_j_per_tok"), "energy": Number(share, ratio(share))}
                clauses.append(f"decode energy per token {ratio(share)} ({number(row['energy_j_per_tok'])} "
                               f"against {number(ref['energy_j_per_tok'])} J)")
            if not clauses:
                continue
            out.append(Finding("quant", f"{_shape(row)}: {_backend(row)} in {row['quant']} against bf16: "
                                        f"{'; '.join(clauses)}.", numbers,
                               {"backend": Quote(_backend(row)), "quant": Quote(str(row["quant"]))}))
    return out


def paths(p: pd.DataFrame) -> list[Finding]:
    """The MXFP4 path each engine recorded (engine_path), per model: engines that record none say nothing."""
    out = []
    mx = p[p["quant"].astype(str).str.startswith(MXFP4)].dropna(subset=["engine_path"])
    for (model, _, _, q), g in mx.groupby(["model", "backend", "setup", "quant"], sort=True):
        backend = _backend(g.iloc[0])
        for path, n in g["engine_path"].value_counts().items():
            first = g[g["engine_path"] == path].iloc[0]
            batches = g[g["engine_path"] == path]["batch_size"]
            span = (f"batch {integer(batches.min())}" if batches.min() == batches.max()
                    else f"batch {integer(batches.min())} to {integer(batches.max())}")
            numbers = {"points": Number(int(n), integer(n)), "of": Number(len(g), integer(len(g))),
                       "batch_min": Number(int(batches.min()), integer(batches.min())),
                       "batch_max": Number(int(batches.max()), integer(batches.max()))}
            out.append(Finding("path", f"{backend} {q} on {model} ran MXFP4 as “{path}” at {integer(n)} of the "
                                       f"{integer(len(g))} points that recorded a path ({span}).", numbers,
                               {"engine_path": Quote(str(path), _cell(first, "engine_path"))}))
    return out


def host(p: pd.DataFrame, kernels: pd.DataFrame | None) -> list[Finding]:
    """Profiled phases (kernels.parquet) whose GPU was idle more than HOST_BOUND of the time."""
    if kernels is None or kernels.empty:
        return []
    idle = kernels["total_ms"].where(kernels["kernel"] == LAUNCH_GAP, 0.0)
    phases = kernels.assign(idle_ms=idle).groupby(["point_id", "phase"], sort=False)[["total_ms", "idle_ms"]].sum()
    out = []
    for _, row in _order(_ok(p)).iterrows():
        if row["point_id"] not in phases.index.get_level_values("point_id"):
            continue
        for phase, (total, idle) in phases.loc[row["point_id"]].iterrows():
            if not total or idle / total <= HOST_BOUND:
                continue
            numbers = _shape_numbers(row) | {"idle_ms": Number(idle, number(idle)),
                                             "phase_ms": Number(total, number(total)),
                                             "share": Number(idle / total, percent(idle / total))}
            out.append(Finding("host", f"{_shape(row)}: {_engine(row)}'s profiled {phase} left the GPU idle "
                                       f"{percent(idle / total)} of its {number(total)} ms ({number(idle)} ms idle): "
                                       f"the host (launches, scheduling, compilation), not the kernels, set its time.",
                               numbers, {"phase": Quote(str(phase))}, "note"))
    return out


# ---- what to distrust ----------------------------------------------------------------------------
# failures before points that did not fit (here and in the points table), so a folded list never
# hides an error
STATUS_ORDER = {"error": 0, "timeout": 1, "oom": 2, "skipped": 3, "ok": 4}


def gpus(p: pd.DataFrame) -> list[Finding]:
    """A run whose points were measured on more than one GPU (their NVML UUIDs): resumed on
    another machine, or its groups spread over nodes. Its engines were then not compared on one GPU."""
    if "gpu_uuid" not in p:
        return []
    by_gpu = list(p.dropna(subset=["gpu_uuid"]).groupby("gpu_uuid", sort=False))
    if len(by_gpu) < 2:
        return []
    parts, numbers, quotes = [], {}, {}
    for i, (uuid, q) in enumerate(by_gpu):
        quotes[f"gpu_uuid_{i}"] = Quote(str(uuid), _cell(q.iloc[0], "gpu_uuid"))
        numbers[f"points_{i}"] = Number(len(q), integer(len(q)))
        engines = ", ".join(dict.fromkeys(_engine(row) for _, row in _order(q).iterrows()))
        parts.append(f"{uuid}: {integer(len(q))} point{'s' if len(q) > 1 else ''} ({engines})")
    return [Finding("gpus", f"The points were measured on {len(by_gpu)} GPUs (by NVML UUID; a run resumed on "
                            f"another machine, or groups on several nodes): {'; '.join(parts)}. Engines on different "
                            "GPUs were not compared on one machine.", numbers, quotes, "note")]


def failed(p: pd.DataFrame) -> list[Finding]:
    out = []
    failures = _order(p[p["status"] != "ok"])
    for _, row in failures.iloc[failures["status"].map(STATUS_ORDER).fillna(0).argsort(kind="stable")].iterrows():
        error = f": {row['error']}" if _present(row, "error") else ""
        out.append(Finding("failed", f"{_shape(row)}: {_engine(row)} did not complete (status {row['status']}){error}.",
                           _shape_numbers(row),
                           {"status": Quote(str(row["status"]), _cell(row, "status"))}
                           | ({"error": Quote(str(row["error"]), _cell(row, "error"))} if error else {}),
                           "note" if row["status"] == "skipped" else "warning"))
    return out


def throttled(p: pd.DataFrame) -> list[Finding]:
    out = []
    ok = _ok(p)
    for _, row in _order(ok[ok["throttled"].fillna(False).astype(bool)]).iterrows():
        reasons = f" ({row['throttle_reasons']})" if _present(row, "throttle_reasons") else ""
        numbers = _shape_numbers(row)
        clock = ""
        if _present(row, "sm_clock_mhz_mean"):
            numbers["sm_clock_mhz_mean"] = _num(row, "sm_clock_mhz_mean")
            clock = f", SM clock {number(row['sm_clock_mhz_mean'])} MHz on average"
        out.append(Finding("throttled", f"{_shape(row)}: {_engine(row)} ran throttled{reasons}{clock}; its times "
                                        "are of a slowed GPU.", numbers,
                           {"throttle_reasons": Quote(str(row["throttle_reasons"]), _cell(row, "throttle_reasons"))}
                           if reasons else {}, "warning"))
    return out


def disagrees(p: pd.DataFrame) -> list[Finding]:
    out = []
    ok = _ok(p, "agreement")
    for _, row in _order(ok[ok["agreement"] < 1]).iterrows():
        numbers = _shape_numbers(row) | {"agreement": _num(row, "agreement", percent)}
        how = []
        if _present(row, "agreement_positions"):
            numbers["agreement_positions"] = _num(row, "agreement_positions", integer)
            how.append(f"{integer(row['agreement_positions'])} positions")
        if _present(row, "agreement_forced"):
            how.append("teacher-forced" if row["agreement_forced"] else "free-running")
        out.append(Finding("disagrees", f"{_shape(row)}: {_engine(row)} agrees with the reference on "
                                        f"{percent(row['agreement'])} of greedy tokens"
                                        f"{' (' + ', '.join(how) + ')' if how else ''}.", numbers, {},
                           "warning" if row["agreement"] < AGREEMENT_WARN else "note"))
    return out


def noisy(p: pd.DataFrame) -> list[Finding]:
    """Points whose repeats spread: their mean step times (cv) or their TTFTs (ttft_cv)."""
    out = []
    spread = {"cv": "the mean step times", "ttft_cv": "the TTFTs"}
    for _, row in _order(_ok(p)).iterrows():
        columns = [c for c in spread if _present(row, c) and row[c] > NOISY_CV]
        if not columns:
            continue
        numbers = _shape_numbers(row) | {c: _num(row, c, percent) for c in columns}
        repeats = ""
        if _present(row, "repeats"):
            numbers["repeats"] = _num(row, "repeats", integer)
            repeats = f" of its {integer(row['repeats'])} repeats"
        what = " and ".join(f"{spread[c]}{repeats if i == 0 else ''} spread with cv {percent(row[c])}"
                            for i, c in enumerate(columns))
        out.append(Finding("noisy", f"{_shape(row)}: {_engine(row)} is noisy: {what} (above {percent(NOISY_CV)}).",
                           numbers, {}, "note"))
    return out


def unsettled(p: pd.DataFrame) -> list[Finding]:
    """Points whose warm-up ran to workload.warmup_max with TTFTs still moving or kernels still
    compiling (measure.settled)."""
    out = []
    ok = _ok(p, "warmup_settled", "warmup_calls")
    for _, row in _order(ok[ok["warmup_settled"] == False]).iterrows():  # noqa: E712
        numbers = _shape_numbers(row) | {"warmup_calls": _num(row, "warmup_calls", integer)}
        out.append(Finding("unsettled", f"{_shape(row)}: {_engine(row)}'s warm-up did not settle in "
                                        f"{integer(row['warmup_calls'])} calls (of the last {WARMUP_RUN}, a TTFT "
                                        f"still differed by more than {percent(WARMUP_SETTLED)} from their median or a "
                                        f"call compiled kernels): its TTFT may not be the steady state's.", numbers, {},
                           "warning"))
    return out


def compiled(p: pd.DataFrame) -> list[Finding]:
    """Points whose measured calls compiled kernels (jit_compiles: Backend.compiles)."""
    if "jit_compiles" not in p:  # no engine of the run counts them
        return []
    out = []
    ok = _ok(p, "jit_compiles")
    for _, row in _order(ok[ok["jit_compiles"] > 0]).iterrows():
        numbers = _shape_numbers(row) | {"jit_compiles": _num(row, "jit_compiles", integer)}
        out.append(Finding("compiled", f"{_shape(row)}: {_engine(row)} compiled {integer(row['jit_compiles'])} "
                                       f"kernel(s) during its measured calls: its times include compiling "
                                       f"(a new step shape the warm-up did not have; workload.warmup_max warms up "
                                       f"until no call compiles).",
                           numbers, {}, "warning"))
    return out


def findings(runs: Runs) -> list[Finding]:
    """Every finding of the runs, in KINDS order; with several runs each sentence starts with its
    run's label (engines are compared within a run, on one machine)."""
    out = []
    for info in runs.infos:
        p = runs.points[runs.points["run"] == info.label]
        found = [*setup(info, p), *gpus(p), *failed(p), *throttled(p), *disagrees(p), *noisy(p), *unsettled(p),
                 *compiled(p),
                 *fastest(p), *mbu(p, info.mbu_ceiling), *quant(p), *paths(p),
                 *host(p, None if runs.kernels is None else runs.kernels[runs.kernels["run"] == info.label])]
        if len(runs.infos) > 1:
            found = [f if f.kind == "setup" else Finding(f.kind, f"{info.label} · {f.text}", f.numbers, f.quotes, f.level)
                     for f in found]
        out += found
    order = list(KINDS)
    return sorted(out, key=lambda f: order.index(f.kind))  # stable: runs keep their order within a kind


def grouped(found: list[Finding]) -> list[tuple[str, str, list[Finding]]]:
    """(kind, heading, findings) of each kind that has findings, in KINDS order: the page's lists."""
    return [(kind, heading, [f for f in found if f.kind == kind]) for kind, heading in KINDS.items()
            if any(f.kind == kind for f in found)]
