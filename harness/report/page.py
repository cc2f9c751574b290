"""The report page: run folders in, one self-contained HTML file out (plotly.js inlined once, so
it opens offline, from an e-mail or a CI artifact).

The page opens with what the run found, in sentences (harness.report.findings: every point that
failed, throttled, disagreed with the reference or is noisy among them), then the runs' facts, the
points table and the figures. Runs that could not be read are named at the top.

Other pages of the report package build on three public pieces of this module: `environment()`
(the jinja2 environment of harness/report/templates), `plotly_js()` (to inline once per page) and
`figure_html(fig, div_id)` (a figure as markup for such a page).
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import jinja2
import pandas as pd
import plotly.graph_objects as go
from markupsafe import Markup
from plotly.offline import get_plotlyjs

from harness.report import figures
from harness.report.findings import AGREEMENT_WARN, STATUS_ORDER, findings, grouped
from harness.report.numbers import integer, number, percent
from harness.report.runs import RunInfo, Runs, load_runs
from harness.results import write_text_atomic


@dataclass
class Section:
    id: str
    title: str
    caption: str
    draw: Callable[[Runs], go.Figure | None]


SECTIONS = [
    Section("decode-throughput", "Decode throughput vs batch size",
            "Generated tokens per second over the whole batch, one line per backend and quant.",
            lambda r: figures.decode_throughput(r.points)),
    Section("tpot", "Time per output token vs context",
            "One decode step of the whole batch: median (solid) and 99th percentile (dashed) over all "
            "measured steps of all repeats.",
            lambda r: figures.tpot_vs_context(r.points)),
    Section("ttft", "Time to first token vs context",
            "Prefill of the whole batch at the given context length per sequence.",
            lambda r: figures.ttft_vs_context(r.points)),
    Section("throughput-interactivity", "Throughput vs interactivity",
            "Tokens per second per GPU against tokens per second each user sees (1000 / mean TPOT); "
            "the line joins each series' Pareto front, labelled by batch size, faint markers are dominated points.",
            lambda r: figures.throughput_interactivity(r.points)),
    Section("memory", "Memory vs context",
            "Peak memory of the points that ran; crosses mark points that did not fit, at the memory they "
            "needed; the dotted line is the device's capacity.",
            lambda r: figures.memory_vs_context(r.points)),
    Section("roofline", "Roofline",
            "Each decode step against its floor, the time its bytes (and FLOPs) take at the GPU's measured copy "
            "bandwidth and matmul rate (the datasheet's for a run without calibration): a point on the solid line "
            "runs at the roof (MBU = floor / measured). Circles are memory-bound, diamonds compute-bound.",
            lambda r: figures.roofline(r.points)),
    Section("power", "Power timeline",
            "NVML power of each profiled point's GPUs (summed; every sampled point when none was profiled) "
            "while it ran, prefill and decode windows shaded.",
            lambda r: figures.power_timeline(r.telemetry, r.kernels, r.points)),
    Section("energy", "Energy per token vs batch size",
            "Decode energy from NVML's cumulative counter, divided by the generated tokens.",
            lambda r: figures.energy_per_token(r.points)),
    Section("kernels", "Kernel time breakdown",
            "GPU time of the profiled window by kernel category, per profiled point and phase.",
            lambda r: figures.kernel_breakdown(r.kernels, r.points)),
    Section("agreement", "Agreement with the reference",
            "Share of greedy tokens equal to the reference's on the same weights and prompts.",
            lambda r: figures.agreement(r.points, AGREEMENT_WARN)),
]

# the points table: column, header, kind (text, status and message cells are text; int, number
# and percent cells are numbers)
TABLE = [
    ("run", "run", "text"), ("model", "model", "text"), ("backend", "backend", "text"), ("setup", "set-up", "text"),
    ("quant", "quant", "text"), ("batch_size", "batch", "int"), ("context_len", "context", "int"),
    ("status", "status", "status"),
    ("ttft_ms", "TTFT ms", "number"), ("tpot_ms_p50", "TPOT p50 ms", "number"),
    ("tpot_ms_p99", "TPOT p99 ms", "number"), ("decode_tok_s", "decode tok/s", "number"),
    ("peak_mem_gib", "peak mem GiB", "number"), ("torch_peak_gib", "torch peak GiB", "number"),
    ("required_gib", "needs GiB", "number"), ("energy_j_per_tok", "J/token", "number"), ("mbu", "MBU", "percent"),
    ("agreement", "agreement", "percent"), ("error", "message", "message"),
]
# Sentences of one kind listed before the rest fold away: a sweep of many shapes has a sentence per
# shape, and the page's first screen should show every kind of finding.
FINDINGS_SHOWN = 5


def _cell(value, kind: str) -> str:
    if pd.isna(value):
        return ""
    if kind == "percent":
        return percent(value)
    if kind == "int":
        return integer(value)
    if kind == "number":
        return number(value)
    return str(value)


def points_table(runs: Runs) -> tuple[list[tuple[str, str]], list[dict]]:
    """Header (title, kind) and rows of the points table: failures first; columns empty in every
    row are left out, and the run and model columns where they hold one value."""
    p = runs.points
    p = p.assign(_rank=p["status"].map(STATUS_ORDER).fillna(0)).sort_values(
        ["_rank", "run", "series", "batch_size", "context_len"])
    columns = [(c, h, k) for c, h, k in TABLE if p[c].replace("", None).notna().any()
               and (c not in ("run", "model") or p[c].nunique() > 1)]
    rows = [{"status": r["status"], "cells": [(k, _cell(r[c], k)) for c, _, k in columns]} for _, r in p.iterrows()]
    return [(h, k) for _, h, k in columns], rows


def _flat(value, prefix="") -> list[tuple[str, str]]:
    if isinstance(value, dict):
        return [kv for k, v in value.items() for kv in _flat(v, f"{prefix}{k}.")]
    if isinstance(value, list) and value and isinstance(value[0], dict):
        return [kv for i, v in enumerate(value) for kv in _flat(v, f"{prefix}{i}.")]
    return [(prefix.rstrip("."), " ".join(map(str, value)) if isinstance(value, list) else str(value))]


def _quoted(arg: str) -> str:
    """One argument as a shell reads it back: in double quotes where that needs no escape (Hydra's
    lists of quoted strings, arms=['backend=vllm ...']), else as shlex quotes it."""
    if shlex.quote(arg) != arg and not set(arg) & set('"$`\\!'):
        return f'"{arg}"'
    return shlex.quote(arg)


def _joined(values) -> str:
    return ", ".join(dict.fromkeys(str(v) for v in values if v not in (None, "")))


def run_facts(info: RunInfo, runs: Runs) -> list[tuple[str, str]]:
    """The header's facts of one run: env.json (the host's fingerprint, and under `groups` what
    each worker's interpreter reported) and the run's points."""
    env, p = info.env, runs.points[runs.points["run"] == info.label]
    workers = list((env.get("groups") or {}).values())
    used = p.dropna(subset=["gpu_name"]).drop_duplicates(["gpu_name", "gpu_count"])
    engines = p.dropna(subset=["backend_version"]).drop_duplicates("backend")
    command = env.get("command")
    facts = [
        ("run id", info.run_id),
        ("date", p["started_at"].dropna().min() if p["started_at"].notna().any() else None),
        ("hardware", info.hardware),
        ("GPUs", _joined(f"{n} × {c}" for n, c in zip(used["gpu_name"], used["gpu_count"]))),
        ("driver", env.get("driver_version")),
        ("CUDA", _joined(([f"driver {env['cuda_driver_version']}"] if env.get("cuda_driver_version") else [])
                         + [f"torch build {w['torch_cuda']}" for w in workers if w.get("torch_cuda")])),
        ("torch", _joined(w.get("torch") for w in workers) or (env.get("packages") or {}).get("torch")),
        ("triton", _joined(w.get("triton") for w in workers) or (env.get("packages") or {}).get("triton")),
        ("engines", _joined(f"{b} {v}" for b, v in zip(engines["backend"], engines["backend_version"]) if v)),
        ("host", _joined([env.get("host"), env.get("cpu_model")])),
        ("commit", (env.get("git_commit") or "")[:12] + (" (dirty tree)" if env.get("git_dirty") else "")),
        ("command", " ".join(map(_quoted, command)) if isinstance(command, list) else command),
        ("points", ", ".join(f"{n} {s}" for s, n in p["status"].value_counts().items())),
    ]
    return [(k, v) for k, v in facts if v]


def environment() -> jinja2.Environment:
    """The jinja2 environment of harness/report/templates: autoescaped, undefined names refused."""
    return jinja2.Environment(loader=jinja2.PackageLoader("harness.report", "templates"),
                              autoescape=True, undefined=jinja2.StrictUndefined)


def plotly_js() -> Markup:
    """plotly.js, to inline once in a page's <head> so the page opens offline."""
    return Markup(get_plotlyjs())


def figure_html(fig: go.Figure, div_id: str) -> Markup:
    """A figure as markup for a page that inlines plotly_js()."""
    # plotly writes the figure's JSON with <, > and / escaped, so its output is safe as markup
    return Markup(fig.to_html(full_html=False, include_plotlyjs=False, div_id=div_id,
                              config={"displaylogo": False, "responsive": True}))


def render(runs: Runs) -> str:
    sections = []
    for section in SECTIONS:
        fig = section.draw(runs)
        if fig is not None:
            sections.append({"id": section.id, "title": section.title, "caption": section.caption,
                             "figure": figure_html(fig, f"fig-{section.id}")})
    header, rows = points_table(runs)
    return environment().get_template("report.html.j2").render(
        title=" vs ".join(i.label for i in runs.infos), findings=grouped(findings(runs)), skipped=runs.skipped,
        runs=[{"info": i, "facts": run_facts(i, runs), "env": _flat(i.env)} for i in runs.infos],
        table_header=header, table_rows=rows, sections=sections, plotlyjs=plotly_js(),
        agreement_warn=AGREEMENT_WARN, findings_shown=FINDINGS_SHOWN)


def write_report(run_dirs, out) -> Path:
    """Write the report of the run folders to `out` (atomically) and return its path; raises
    FileNotFoundError or runs.NoReadableRun when there is nothing to report."""
    out = Path(out)
    text = render(load_runs(run_dirs))
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(text, out)
    return out
