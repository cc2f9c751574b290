"""The procurement page: runs of several machines in, one self-contained HTML file out.

Measured and projected figures are never mixed in one chart or table: every measured section
draws measurements only, and the projections (GPUs nobody measured here, rescaled from the
closest measured architecture) have a section of their own that states its assumptions.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import jinja2
import pandas as pd
import plotly.graph_objects as go
from markupsafe import Markup
from plotly.offline import get_plotlyjs
from plotly.subplots import make_subplots

from harness.analysis.procurement import MEASURED, Procurement, ProcurementRow, rows_frame
from harness.analysis.pareto import pareto_front
from harness.report.figures import PALETTE, _text
from harness.report.page import _cell
from harness.results import write_text_atomic

FACET_PX = 300


@dataclass
class Section:
    id: str
    title: str
    caption: str
    draw: Callable[[Procurement], go.Figure | None]
    absent: str  # said instead of the figure when there is nothing to draw


def _measured(proc: Procurement) -> pd.DataFrame:
    df = rows_frame(proc.rows)
    return df[df["basis"] == MEASURED]


def _series(df: pd.DataFrame) -> pd.Series:
    return df["hardware"] + " · " + df["backend"] + " " + df["quant"]


def _colors(names) -> dict:
    return {n: PALETTE[i % len(PALETTE)] for i, n in enumerate(sorted(set(names)))}


def _facets(df: pd.DataFrame, x_title: str, y_title: str, log: bool = True):
    """One subplot per (model, context) in the frame, two to a row."""
    keys = sorted(df[["model", "context_len"]].drop_duplicates().itertuples(index=False, name=None))
    cols = min(2, len(keys))
    rows = -(-len(keys) // cols)
    fig = make_subplots(rows, cols, subplot_titles=[_text(f"{m} · context {c}") for m, c in keys],
                        x_title=x_title, y_title=y_title, vertical_spacing=min(0.25, 90 / (FACET_PX * rows)))
    fig.update_layout(height=100 + FACET_PX * rows, template="plotly_white", margin=dict(l=80, r=20, t=40, b=70),
                      hoverlabel=dict(namelength=-1))
    if log:
        fig.update_xaxes(type="log")
        fig.update_yaxes(type="log")
    return fig, {k: (i // cols + 1, i % cols + 1) for i, k in enumerate(keys)}


def fronts(proc: Procurement, basis_measured: bool = True) -> go.Figure | None:
    """Each machine's Pareto front of tok/s per GPU against tok/s per user, the targets as dotted
    lines and the interpolated throughput there as open circles."""
    pts = proc.points[(proc.points["basis"] == MEASURED) == basis_measured]
    if pts.empty:
        return None
    pts = pts.assign(series=_series(pts))
    rows = rows_frame(proc.rows)
    rows = rows[(rows["basis"] == MEASURED) == basis_measured].assign(series=lambda d: _series(d))
    colors = _colors(pts["series"])
    fig, where = _facets(pts, "interactivity: tok/s per user (1000 / TPOT)", "throughput: tok/s per GPU")
    shown = set()
    for (model, ctx), (r, c) in where.items():
        for series, s in pts[(pts["model"] == model) & (pts["context_len"] == ctx)].groupby("series"):
            front, name = pareto_front(s, "per_user", "per_gpu"), _text(series)
            fig.add_trace(go.Scatter(
                x=front["per_user"], y=front["per_gpu"], text=front["batch_size"], mode="lines+markers",
                name=name, legendgroup=name, showlegend=name not in shown,
                line=dict(color=colors[series], dash="solid" if basis_measured else "dash"),
                hovertemplate=f"{name}<br>batch %{{text}}<br>%{{x:.3g}} tok/s per user<br>"
                              "%{y:.4g} tok/s per GPU<extra></extra>"), row=r, col=c)
            hit = rows[(rows["series"] == series) & (rows["model"] == model) & (rows["context_len"] == ctx)]
            hit = hit.dropna(subset=["tok_s_per_gpu"])
            fig.add_trace(go.Scatter(
                x=hit["target_tok_s_per_user"], y=hit["tok_s_per_gpu"], mode="markers", name=name, legendgroup=name,
                showlegend=False, marker=dict(color=colors[series], symbol="circle-open", size=11, line=dict(width=2)),
                hovertemplate=f"{name}<br>at %{{x:g}} tok/s per user: %{{y:.4g}} tok/s per GPU<extra></extra>"),
                row=r, col=c)
            shown.add(name)
        for target in proc.targets:
            fig.add_vline(x=target, line=dict(color="#9aa5b1", dash="dot", width=1), row=r, col=c)
    return fig


def _bars(df: pd.DataFrame, y: str, y_title: str, error_high: str | None = None, hover: str = "") -> go.Figure | None:
    """Bars of `y` per machine at each target, one subplot per (model, context)."""
    df = df.dropna(subset=[y])
    if df.empty:
        return None
    df = df.assign(series=_series(df), target=df["target_tok_s_per_user"].map(lambda t: f"{t:g} tok/s/user"))
    colors = _colors(df["series"])
    fig, where = _facets(df, "target interactivity", y_title, log=False)
    shown = set()
    for (model, ctx), (r, c) in where.items():
        for series, s in df[(df["model"] == model) & (df["context_len"] == ctx)].groupby("series"):
            name = _text(series)
            error = None
            if error_high:
                error = dict(type="data", symmetric=False, array=(s[error_high] - s[y]).tolist(), arrayminus=[0] * len(s))
            fig.add_trace(go.Bar(x=s["target"], y=s[y], name=name, legendgroup=name, showlegend=name not in shown,
                                 marker_color=colors[series], error_y=error, customdata=s[["gpus_needed"]],
                                 hovertemplate=f"{name}<br>%{{x}}: %{{y:.4g}} {hover}<extra></extra>"), row=r, col=c)
            shown.add(name)
    fig.update_layout(barmode="group")
    return fig


def energy(proc: Procurement) -> go.Figure | None:
    return _bars(_measured(proc), "tok_per_kwh", "tokens per kWh (GPU energy, measured)", hover="tokens per kWh")


def cost(proc: Procurement) -> go.Figure | None:
    return _bars(_measured(proc), "usd_per_mtok", "$ per million tokens (low price; bar to the high price)",
                 error_high="usd_per_mtok_high", hover="$ per M tokens at the low price")


def memory(proc: Procurement) -> go.Figure | None:
    """The largest batch that fits per context: measured (solid) and the spec's bound (hollow)."""
    df = pd.DataFrame([vars(m) for m in proc.memory]).dropna(subset=["max_batch"])
    if df.empty:
        return None
    df = df.assign(label=df["gpu"] + df["hardware"].map(lambda h: f" · {h} (measured)" if isinstance(h, str) else
                                                         " (spec)"))
    colors = _colors(df["gpu"])
    models = sorted(df["model"].unique())
    fig = make_subplots(1, len(models), subplot_titles=[_text(m) for m in models], shared_yaxes=False,
                        x_title="context (tokens)", y_title="largest batch that fits")
    shown = set()
    for i, model in enumerate(models, 1):
        for label, s in df[df["model"] == model].groupby("label"):
            measured = s["hardware"].notna().all()
            name = _text(label)
            s = s.sort_values("context_len")
            fig.add_trace(go.Scatter(
                x=s["context_len"], y=s["max_batch"], mode="lines+markers", name=name, legendgroup=name,
                showlegend=name not in shown, line=dict(color=colors[s["gpu"].iloc[0]], dash="solid" if measured else "dot"),
                marker=dict(symbol="circle" if measured else "circle-open", size=9), text=s["note"],
                hovertemplate=f"{name}<br>context %{{x}}: batch %{{y}}<br>%{{text}}<extra></extra>"), row=1, col=i)
            shown.add(name)
    fig.update_xaxes(type="log")
    fig.update_yaxes(type="log")
    fig.update_layout(height=460, template="plotly_white", margin=dict(l=80, r=20, t=40, b=70))
    return fig


SECTIONS = [
    Section("fronts", "Throughput vs interactivity, measured",
            "Each machine's Pareto front (tok/s per GPU against tok/s per user = 1000 / mean TPOT); dotted lines "
            "are the target interactivities, open circles the throughput there (monotone PCHIP between measured "
            "batches, never beyond the most interactive one; a target below the least interactive point is met "
            "by that point, the largest batch, and drawn at the target).", lambda p: fronts(p, True),
            "No measured point has a TPOT and a throughput."),
    Section("energy", "Energy at the targets, measured",
            "Tokens per kWh of GPU energy (NVML counter over decode, all the point's GPUs) at each target; the "
            "ranked tables give J/token, power per GPU and tok/s per kW all-in.", energy,
            "No run measured energy (NVML absent or the counter did not move)."),
    Section("cost", "Cost at the targets, measured",
            "Dollars per million generated tokens = $/GPU-hour / (tok/s per GPU x 3600 / 1e6), bars at the low "
            "price of the price file, whiskers to the high price.", cost,
            "No price file (--prices) or no priced GPU among the measured ones."),
    Section("memory", "Memory fit",
            "The largest batch per context: measured (solid: the largest batch that ran, its peak memory in the "
            "table) and from the spec's weight + KV bytes on every datasheet GPU (dotted: an upper bound, runtime "
            "overhead not counted).", memory, "No model of the runs is known to the spec."),
    Section("projected-fronts", "Projected fronts (not measured)",
            "GPUs nobody measured here, each measured step rescaled from the closest measured architecture; see "
            "the assumptions under the table. Dashed: projections, not measurements.", lambda p: fronts(p, False),
            "No GPU of the datasheet table is left to project, or no measured GPU is in the table."),
]

RANK_COLUMNS = [
    ("rank", "#", "int"), ("hardware", "hardware", "text"), ("gpu_name", "GPU", "text"), ("backend", "backend", "text"),
    ("quant", "quant", "text"), ("context_len", "context", "int"), ("tok_s_per_gpu", "tok/s per GPU", "number"),
    ("ttft_ms", "TTFT ms", "number"), ("batch_size", "batch", "number"), ("energy_j_per_tok", "J/token", "number"),
    ("power_w_per_gpu", "W per GPU", "number"), ("tok_s_per_kw_all_in", "tok/s per kW all-in", "number"),
    ("usd", "$/M tok", "text"), ("gpus_needed", "GPUs for the load", "int"),
    ("cv", "cv", "percent"), ("verdict", "vs next", "text"),
]


def _table(rows: list[ProcurementRow]) -> dict:
    df = rows_frame(rows)
    # the price file's range as one cell: low-high (one figure where the file gives one)
    df["usd"] = [None if pd.isna(lo) else _cell(lo, "number") + ("" if hi == lo else "–" + _cell(hi, "number"))
                 for lo, hi in zip(df["usd_per_mtok"], df["usd_per_mtok_high"])]
    columns = [(c, h, k) for c, h, k in RANK_COLUMNS if df[c].notna().any() and (df[c] != "").any()]
    body = [[(k, _cell(r[c], k)) for c, _, k in columns] for _, r in df.iterrows()]
    return {"header": [(h, k) for _, h, k in columns], "rows": body}


def ranked_tables(proc: Procurement, measured: bool) -> list[dict]:
    """One table per (model, target): rows ranked within each context, measured or projected."""
    out = []
    keys = sorted({(r.model, r.target_tok_s_per_user) for r in proc.rows})
    for model, target in keys:
        rows = [r for r in proc.rows if r.model == model and r.target_tok_s_per_user == target
                and (r.basis == MEASURED) == measured]
        if rows:
            rows.sort(key=lambda r: (r.context_len, r.rank))
            out.append({"title": f"{model} at {target:g} tok/s per user", **_table(rows)})
    return out


def render(proc: Procurement) -> str:
    sections = []
    for s in SECTIONS:
        fig = s.draw(proc)
        html = None if fig is None else Markup(fig.to_html(
            full_html=False, include_plotlyjs=False, div_id=f"fig-{s.id}", config={"displaylogo": False, "responsive": True}))
        sections.append({"id": s.id, "title": s.title, "caption": s.caption, "figure": html, "absent": s.absent})
    projected = sorted({(r.hardware, r.basis, r.assumptions) for r in proc.rows if r.basis != MEASURED})
    env = jinja2.Environment(loader=jinja2.PackageLoader("harness.report", "templates"),
                             autoescape=True, undefined=jinja2.StrictUndefined)
    return env.get_template("procurement.html.j2").render(
        machines=proc.machines, targets=", ".join(f"{t:g}" for t in proc.targets), load=f"{proc.load_tok_s:,.0f}",
        prices=proc.prices, sections=sections, ranked=ranked_tables(proc, True), memory=proc.memory,
        projected_tables=ranked_tables(proc, False), projected=projected, plotlyjs=Markup(get_plotlyjs()))


def write_procurement_page(proc: Procurement, out) -> Path:
    """Write the procurement page of `proc` to `out` (atomically) and return its path."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(render(proc), out)
    return out
