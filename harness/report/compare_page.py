"""The comparison page of gptoss-compare --html: one self-contained HTML file (plotly.js inlined,
as the run report's page.py does) with, per metric, each point's ratio candidate/baseline and its
interval, and, given --history, each point's trend across the runs in time order with the change
points found on it (commit and engine version on hover).

A nightly sweep has a few dozen points and every one is drawn in colour. Past COLOURED points per
metric, the flagged and most-changed ones keep a colour (and change points) and the rest are one
grey trace, so a thousand-point comparison stays a page a browser opens.
"""

from __future__ import annotations

import html
from collections import Counter
from pathlib import Path
from typing import Sequence

import jinja2
import numpy as np
import pandas as pd
import plotly.graph_objects as go
from markupsafe import Markup
from plotly.offline import get_plotlyjs

from harness.analysis.regression import METRICS, VERDICTS, Run, Verdict, change_points
from harness.analysis.thresholds import IDENTITY, Thresholds
from harness.report.figures import PALETTE
from harness.results import write_text_atomic

VERDICT_COLORS = {"regression": "#c53030", "failed": "#c53030", "inconclusive": "#b7791f", "improvement": "#2f855a",
                  "fixed": "#2f855a", "unchanged": "#718096", "new": "#3182ce", "missing": "#805ad5"}
COLOURED = 40  # points per metric drawn in their own colour; the rest share one grey trace
ROW_PX = 22


def _text(value) -> str:
    return html.escape(str(value), quote=False)


def _order(verdicts: Sequence[Verdict]) -> list[Verdict]:
    """Flagged first, then by how far the ratio is from 1."""
    rank = {v: i for i, v in enumerate(VERDICTS)}
    return sorted(verdicts, key=lambda v: (rank[v.verdict], -abs(np.log(v.ratio)) if v.ratio else 0.0, v.label))


def ratio_figure(verdicts: Sequence[Verdict], metric: str, min_effect: float) -> go.Figure | None:
    """Ratio candidate/baseline per point with its interval; the band is the minimum effect."""
    vs = [v for v in _order(verdicts) if v.metric == metric and v.ratio is not None][:COLOURED * 3]
    if not vs:
        return None
    fig = go.Figure()
    if metric != "agreement":
        fig.add_vrect(x0=1 - min_effect, x1=1 + min_effect, fillcolor="#e2e8f0", opacity=0.6, line_width=0, layer="below")
    fig.add_vline(x=1, line_color="#4a5568", line_width=1)
    for verdict in VERDICTS:
        group = [v for v in vs if v.verdict == verdict]
        if not group:
            continue
        have_ci = all(v.ci_low is not None for v in group)
        fig.add_trace(go.Scatter(
            x=[v.ratio for v in group], y=[_text(v.label) for v in group], mode="markers", name=verdict,
            marker=dict(color=VERDICT_COLORS[verdict], size=9, symbol="diamond" if verdict != "unchanged" else "circle"),
            error_x=dict(type="data", symmetric=False, array=[v.ci_high - v.ratio for v in group],
                         arrayminus=[v.ratio - v.ci_low for v in group]) if have_ci else None,
            customdata=[[v.baseline_runs, _text(v.reason or "—"), (v.candidate_commit or "?")[:10],
                         _text(v.candidate_engine or "?"), (v.baseline_commit or "?")[:10], _text(v.baseline_engine or "?")]
                        for v in group],
            hovertemplate="%{y}<br>ratio %{x:.4f}<br>baseline runs %{customdata[0]}<br>%{customdata[1]}"
                          "<br>commit %{customdata[4]} → %{customdata[2]}<br>engine %{customdata[5]} → %{customdata[3]}"
                          "<extra>" + verdict + "</extra>"))
    fig.update_layout(height=120 + ROW_PX * len(vs), margin=dict(l=10, r=10, t=30, b=40), template="plotly_white",
                      xaxis_title="candidate / baseline", legend=dict(orientation="h", y=1.02, yanchor="bottom"))
    fig.update_yaxes(autorange="reversed", type="category")
    return fig


def trend_frame(history: Sequence[Run], keys: set[str], metric: str) -> pd.DataFrame:
    """The metric's value of each of `keys` in each history run, in time order, with the run's
    commit and the point's engine version."""
    frames = [r.rows[r.rows["key"].isin(keys)] for r in history]
    df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    if df.empty:
        return df
    df = df.dropna(subset=[metric]).sort_values("started", kind="stable")
    return df[["key", "run_id", "started", "commit", "backend_version", metric]].rename(columns={metric: "value"})


def trend_figure(verdicts: Sequence[Verdict], history: Sequence[Run], metric: str,
                 thresholds: Thresholds) -> go.Figure | None:
    """Each point's value over the runs, as a ratio to its own median so every point shares the
    axis; change points are crosses."""
    vs = {v.key: v for v in _order(verdicts) if v.metric == metric}  # severity order kept
    df = trend_frame(history, set(vs), metric)
    if df.empty or df["run_id"].nunique() < 2:
        return None
    series = dict(tuple(df.groupby("key", sort=False)))
    coloured = [k for k in vs if k in series][:COLOURED]
    fig = go.Figure()
    grey_x, grey_y = [], []
    for key, g in series.items():
        value = g["value"].to_numpy(float)
        y = value - np.median(value) if metric == "agreement" else value / np.median(value)
        if key not in coloured:
            grey_x += [*g["run_id"], None]
            grey_y += [*y, None]
    for i, key in enumerate(coloured):
        v, g = vs[key], series[key]
        value = g["value"].to_numpy(float)
        y = value - np.median(value) if metric == "agreement" else value / np.median(value)
        color = VERDICT_COLORS[v.verdict] if v.verdict in ("regression", "failed") else PALETTE[i % len(PALETTE)]
        hover = [[_text(v.label), f"{x:.4g}", (c or "?")[:10], _text(e if isinstance(e, str) else "?")]
                 for x, c, e in zip(value, g["commit"], g["backend_version"])]
        fig.add_trace(go.Scatter(x=g["run_id"], y=y, mode="lines+markers", name=_text(v.label), line=dict(color=color),
                                 legendgroup=key, customdata=hover,
                                 hovertemplate="%{customdata[0]}<br>run %{x}<br>value %{customdata[1]}<br>commit "
                                               "%{customdata[2]}<br>engine %{customdata[3]}<extra></extra>"))
        steps = change_points(value, metric, thresholds.of(metric, {k: getattr(v, k) for k in IDENTITY}))
        if steps:
            fig.add_trace(go.Scatter(x=g["run_id"].iloc[steps], y=y[steps], mode="markers", legendgroup=key,
                                     showlegend=False, marker=dict(symbol="x", size=13, color=color, line_width=2),
                                     hovertemplate=f"{_text(v.label)}<br>change point at %{{x}}<extra></extra>"))
    if grey_x:
        fig.add_trace(go.Scatter(x=grey_x, y=grey_y, mode="lines", name=f"{len(series) - len(coloured)} other points",
                                 line=dict(color="#cbd5e0", width=1), hoverinfo="skip"))
    fig.update_layout(height=460, margin=dict(l=10, r=10, t=30, b=40), template="plotly_white",
                      yaxis_title="change from the point's median" if metric == "agreement" else "value / point's median",
                      xaxis=dict(type="category", categoryorder="array", categoryarray=list(dict.fromkeys(df["run_id"])),
                                 title="run"))
    return fig


RATIO_CAPTION = "Each point's ratio with its interval at the chosen confidence; the band is the minimum effect."
TREND_CAPTION = ("Each point's value in each run, in time order, over its median across the runs; crosses mark "
                 "change points (a new level shows once two runs stand on it).")


def _section(section_id: str, title: str, caption: str, fig: go.Figure) -> dict:
    # plotly writes the figure's JSON with <, > and / escaped, so its output is safe as markup
    markup = fig.to_html(full_html=False, include_plotlyjs=False, div_id=f"fig-{section_id}",
                         config={"displaylogo": False, "responsive": True})
    return {"id": section_id, "title": title, "caption": caption, "figure": Markup(markup)}


def render(verdicts: Sequence[Verdict], candidate: Run, baselines: Sequence[Run], history: Sequence[Run],
           thresholds: Thresholds) -> str:
    sections = []
    for m in METRICS:
        fig = ratio_figure(verdicts, m.name, thresholds.metrics[m.name].min_effect)
        if fig is not None:
            better = "Lower is better." if m.lower_is_better else "Higher is better."
            sections.append(_section(f"ratio-{m.name}", f"{m.name}: candidate / baseline", f"{RATIO_CAPTION} {better}",
                                     fig))
        trend = trend_figure(verdicts, history, m.name, thresholds) if history else None
        if trend is not None:
            sections.append(_section(f"trend-{m.name}", f"{m.name}: history", TREND_CAPTION, trend))
    rows = [v for v in verdicts if v.verdict != "unchanged"]
    env = jinja2.Environment(loader=jinja2.PackageLoader("harness.report", "templates"), autoescape=True,
                             undefined=jinja2.StrictUndefined)
    return env.get_template("compare.html.j2").render(
        candidate=candidate, baselines=baselines, counts=Counter(v.verdict for v in verdicts), verdict_names=VERDICTS,
        rows=rows, colors=VERDICT_COLORS, sections=sections,
        thresholds=thresholds, plotlyjs=Markup(get_plotlyjs()))


def write_compare_page(verdicts: Sequence[Verdict], candidate: Run, baselines: Sequence[Run], history: Sequence[Run],
                       thresholds: Thresholds, out: Path) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(render(verdicts, candidate, baselines, history, thresholds), out)
    return out
