"""One function per figure of the report. Each takes the frames of harness.report.runs and
returns a plotly Figure, or None when the data it draws is absent (a missing file, or columns
that are null in every row: a value that cannot be measured is null, never 0)."""

from __future__ import annotations

import html

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots

from harness.analysis.pareto import pareto_front

from harness.report.runs import series_title

PALETTE = qualitative.Plotly + qualitative.Dark24
CATEGORY_PALETTE = qualitative.Safe  # kernel categories: apart from the series colours
PHASE_COLORS = {"prefill": "#f5a623", "decode": "#4a90d9"}
DASHES = ["solid", "dash", "dot"]
FACET_NAMES = {"context_len": "context {} tokens", "batch_size": "batch {}", "phase": "{}"}
FACET_PX = 270  # height of one facet row
WRAP = 3


def _text(value) -> str:
    """Plotly reads labels as a small HTML subset; escape them so a label shows as typed."""
    return html.escape(str(value), quote=False)


def _has(df: pd.DataFrame | None, *columns: str) -> bool:
    return df is not None and all(c in df and df[c].notna().any() for c in columns)


def _ok(points: pd.DataFrame, *columns: str) -> pd.DataFrame:
    if not _has(points, *columns):
        return points.iloc[:0]
    return points[(points["status"] == "ok")].dropna(subset=list(columns))


def _colors(series: pd.Series) -> dict:
    return {s: PALETTE[i % len(PALETTE)] for i, s in enumerate(series.cat.categories)}


def _grid(values, facet: str, x_title: str, y_title: str, legend: str, wrap: int = WRAP, shared_y="all",
          titles=None, row_px: int = FACET_PX) -> tuple[go.Figure, dict]:
    """A grid of subplots, one per facet value, rows filled evenly (4 facets: 2 x 2), `legend` the
    legend's title; returns the figure and value -> (row, col)."""
    rows = -(-len(values) // wrap)
    cols = -(-len(values) // rows)
    height = 90 + row_px * rows
    titles = titles or [_text(FACET_NAMES[facet].format(v)) for v in values]
    fig = make_subplots(rows, cols, shared_yaxes=shared_y, x_title=x_title, y_title=y_title, subplot_titles=titles,
                        vertical_spacing=min(0.3, 80 / height), horizontal_spacing=0.06 if shared_y else 0.09)
    fig.update_layout(height=height, template="plotly_white", margin=dict(l=80, r=20, t=40, b=70),
                      legend=dict(title_text=legend, groupclick="togglegroup"),
                      hoverlabel=dict(namelength=-1))
    return fig, {v: (i // cols + 1, i % cols + 1) for i, v in enumerate(values)}


def _log_x(fig: go.Figure, values) -> None:
    """A log x-axis ticked at the swept values (batch sizes, context lengths)."""
    values = sorted(set(values))
    fig.update_xaxes(type="log", tickvals=values, ticktext=[f"{v:g}" for v in values])


def _facet_lines(points, x, ys: dict[str, str], facet, x_title, y_title, log_y=False,
                 shared_y="all") -> go.Figure | None:
    """Lines of y against x, one colour per series and one dash per entry of `ys` (column -> label),
    a subplot per facet value."""
    df = _ok(points, x, facet, next(iter(ys)))
    if df.empty:
        return None
    colors = _colors(points["series"])
    fig, where = _grid(sorted(df[facet].unique()), facet, x_title, y_title, series_title(points), shared_y=shared_y)
    shown = set()
    for value, (row, col) in where.items():
        for series, s in df[df[facet] == value].groupby("series", observed=True):
            s = s.sort_values(x)
            for (y, label), dash in zip(ys.items(), DASHES):
                name = _text(series)
                fig.add_trace(go.Scatter(
                    x=s[x], y=s[y], mode="lines+markers", name=name, legendgroup=str(series),
                    showlegend=name not in shown, line=dict(color=colors[series], dash=dash),
                    hovertemplate=f"{name} {label}<br>{x_title}: %{{x}}<br>{y_title}: %{{y:.4g}}<extra></extra>"),
                    row=row, col=col)
                shown.add(name)
    if len(ys) > 1:  # a grey legend entry per dash
        for label, dash in zip(ys.values(), DASHES):
            fig.add_trace(go.Scatter(x=[None], y=[None], mode="lines", name=label, legendgroup="dash",
                                     line=dict(color="#666", dash=dash)))
    _log_x(fig, df[x])
    if log_y:
        fig.update_yaxes(type="log")
    return fig


def decode_throughput(points: pd.DataFrame) -> go.Figure | None:
    return _facet_lines(points, "batch_size", {"decode_tok_s": ""}, "context_len",
                        "batch size (sequences)", "decode throughput (tok/s)", log_y=True)


def tpot_vs_context(points: pd.DataFrame) -> go.Figure | None:
    return _facet_lines(points, "context_len", {"tpot_ms_p50": "p50", "tpot_ms_p99": "p99"}, "batch_size",
                        "context length (tokens)", "time per output token (ms)", log_y=True, shared_y=False)


def ttft_vs_context(points: pd.DataFrame) -> go.Figure | None:
    return _facet_lines(points, "context_len", {"ttft_ms": ""}, "batch_size",
                        "context length (tokens)", "time to first token (ms)", log_y=True)


def energy_per_token(points: pd.DataFrame) -> go.Figure | None:
    return _facet_lines(points, "batch_size", {"energy_j_per_tok": ""}, "context_len",
                        "batch size (sequences)", "decode energy per token (J)", log_y=True)


def throughput_interactivity(points: pd.DataFrame) -> go.Figure | None:
    df = _ok(points, "tpot_ms_mean", "decode_tok_s")
    if df.empty:
        return None
    gpus = df["gpu_count"].fillna(1).clip(lower=1)  # a CPU run counts as one device
    df = df.assign(per_user=1000 / df["tpot_ms_mean"], per_gpu=df["decode_tok_s"] / gpus)
    colors = _colors(points["series"])
    fig, where = _grid(sorted(df["context_len"].unique()), "context_len",
                       "interactivity: tok/s per user (1000 / TPOT)", "throughput: tok/s per GPU", series_title(points))
    shown = set()
    for value, (row, col) in where.items():
        for series, s in df[df["context_len"] == value].groupby("series", observed=True):
            name, front = _text(series), pareto_front(s, "per_user", "per_gpu")
            hover = f"{name}<br>batch %{{text}}<br>%{{x:.3g}} tok/s per user<br>%{{y:.4g}} tok/s per GPU<extra></extra>"
            fig.add_trace(go.Scatter(
                x=front["per_user"], y=front["per_gpu"], text=front["batch_size"], mode="lines+markers+text",
                texttemplate="b%{text}", textposition="top right", textfont=dict(size=10),
                name=name, legendgroup=str(series), showlegend=name not in shown,
                line=dict(color=colors[series]), hovertemplate=hover), row=row, col=col)
            rest = s.drop(front.index)
            fig.add_trace(go.Scatter(
                x=rest["per_user"], y=rest["per_gpu"], text=rest["batch_size"], mode="markers",
                marker=dict(color=colors[series], opacity=0.35), name=name, legendgroup=str(series),
                showlegend=False, hovertemplate=hover), row=row, col=col)
            shown.add(name)
    # both span decades between batch 1 and a large batch
    fig.update_xaxes(type="log")
    fig.update_yaxes(type="log")
    return fig


def memory_vs_context(points: pd.DataFrame) -> go.Figure | None:
    """Measured peak memory of the points that ran, the memory the ones that did not fit would have
    needed, and each device's capacity."""
    measured = next((c for c in ("peak_mem_gib", "torch_peak_gib") if not _ok(points, c).empty), None)
    ran = _ok(points, measured) if measured else points.iloc[:0]
    unfit = points[points["status"].isin(["skipped", "oom"])].dropna(subset=["required_gib"])
    if ran.empty and unfit.empty:
        return None
    y_title = {"peak_mem_gib": "peak device memory (GiB)", "torch_peak_gib": "peak torch memory (GiB)",
               None: "memory (GiB)"}[measured]
    colors = _colors(points["series"])
    both = pd.concat([ran, unfit])
    fig, where = _grid(sorted(both["batch_size"].unique()), "batch_size", "context length (tokens)", y_title,
                       series_title(points))
    capacity = points.dropna(subset=["device_mem_gib"]).groupby("device_mem_gib")["run"].unique()
    shown = set()
    for value, (row, col) in where.items():
        for series, s in ran[ran["batch_size"] == value].groupby("series", observed=True):
            name = _text(series)
            fig.add_trace(go.Scatter(
                x=s["context_len"], y=s[measured], mode="lines+markers", name=name, legendgroup=str(series),
                showlegend=name not in shown, line=dict(color=colors[series]),
                hovertemplate=f"{name}<br>context %{{x}}<br>%{{y:.2f}} GiB<extra></extra>"), row=row, col=col)
            shown.add(name)
        for series, s in unfit[unfit["batch_size"] == value].groupby("series", observed=True):
            fig.add_trace(go.Scatter(
                x=s["context_len"], y=s["required_gib"], mode="markers", name=_text(series), legendgroup=str(series),
                showlegend=False, customdata=[_text(e) for e in s["error"].fillna(s["status"])],
                marker=dict(color=colors[series], symbol="x", size=11),
                hovertemplate=f"{_text(series)} did not fit<br>context %{{x}}<br>needs %{{y:.1f}} GiB"
                              "<br>%{customdata}<extra></extra>"), row=row, col=col)
        for gib, runs in capacity.items():
            label = f"capacity {gib:.1f} GiB" + (f" ({', '.join(map(_text, runs))})" if len(capacity) > 1 else "")
            note = dict(annotation_text=label, annotation_position="bottom left",
                        annotation_font=dict(size=10, color="#555")) if (row, col) == (1, 1) else {}
            fig.add_hline(y=gib, line=dict(color="#555", dash="dot", width=1.5), row=row, col=col, **note)
    if not unfit.empty:
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", name="did not fit: memory needed",
                                 marker=dict(color="#666", symbol="x", size=11)))
    _log_x(fig, both["context_len"])
    top = max(both[measured].max() if measured else 0, both["required_gib"].max(), max(capacity.index, default=0))
    fig.update_yaxes(range=[0, 1.08 * top])
    return fig


def roofline(points: pd.DataFrame) -> go.Figure | None:
    """Left: each point's measured decode step against its floor, the time its bytes (and FLOPs)
    need at the device's peak (the floor is max(mbu, mfu) x step time). Right, when FLOPs are known:
    the classic roofline, the device's peaks recovered from mbu and mfu. A point without the measured
    ceilings (a run without calibration) is drawn against the datasheet's."""
    if "mbu_datasheet" in points:
        fallback = points["mbu"].isna()
        points = points.assign(mbu=points["mbu"].where(~fallback, points["mbu_datasheet"]),
                               mfu=points["mfu"].where(~fallback, points.get("mfu_datasheet")))
    df = _ok(points, "tpot_ms_mean", "mbu")
    if df.empty:
        return None
    classic = _has(df, "mfu", "decode_flops_per_step", "decode_bytes_per_step")
    df = df.assign(floor_ms=df[["mbu", "mfu"]].max(axis=1) * df["tpot_ms_mean"])
    fig = make_subplots(1, 2 if classic else 1, horizontal_spacing=0.1, subplot_titles=(
        "decode step: measured against floor", "roofline (decode)")[:2 if classic else 1])
    fig.update_layout(height=470, template="plotly_white", margin=dict(l=80, r=20, t=40, b=60),
                      legend=dict(title_text=series_title(points)), hoverlabel=dict(namelength=-1))
    colors = _colors(points["series"])
    symbols = {"memory": "circle", "compute": "diamond"}
    lo, hi = df["floor_ms"].min() / 1.5, df["tpot_ms_mean"].max() * 1.5
    for share in (1, 0.5, 0.25, 0.1):
        fig.add_trace(go.Scatter(x=[lo, hi * share], y=[lo / share, hi], mode="lines", showlegend=False,
                                 line=dict(color="#999", width=1, dash="solid" if share == 1 else "dot"),
                                 hoverinfo="skip"), row=1, col=1)
        fig.add_annotation(x=np.log10(hi * share), y=np.log10(hi), text=f"{share:.0%}",
                           showarrow=False, font=dict(size=10, color="#777"), xanchor="right", yanchor="top",
                           row=1, col=1)
    for series, s in df.groupby("series", observed=True):
        name = _text(series)
        custom = np.stack([s["batch_size"], s["context_len"], s["mbu"], s["bound"].fillna("?")], axis=-1)
        marker = dict(color=colors[series], size=9, symbol=[symbols.get(b, "circle") for b in custom[:, 3]])
        info = "batch %{customdata[0]}, context %{customdata[1]}<br>MBU %{customdata[2]:.1%}, %{customdata[3]}-bound"
        fig.add_trace(go.Scatter(
            x=s["floor_ms"], y=s["tpot_ms_mean"], mode="markers", name=name, legendgroup=str(series),
            customdata=custom, marker=marker,
            hovertemplate=f"{name}<br>{info}<br>floor %{{x:.3g}} ms, measured %{{y:.3g}} ms<extra></extra>"),
            row=1, col=1)
        if classic:
            intensity = s["decode_flops_per_step"] / s["decode_bytes_per_step"]
            tflops = s["decode_flops_per_step"] / (s["tpot_ms_mean"] / 1e3) / 1e12
            fig.add_trace(go.Scatter(
                x=intensity, y=tflops, mode="markers", name=name, legendgroup=str(series), showlegend=False,
                customdata=custom, marker=marker,
                hovertemplate=f"{name}<br>{info}<br>%{{x:.3g}} FLOP/byte, %{{y:.3g}} TFLOP/s<extra></extra>"),
                row=1, col=2)
    fig.update_xaxes(type="log", title_text="floor: time the step's bytes/FLOPs need at peak (ms)", row=1, col=1)
    fig.update_yaxes(type="log", title_text="measured time per decode step (ms)", row=1, col=1)
    if classic:
        _roofs(fig, df)
    return fig


def _roofs(fig: go.Figure, df: pd.DataFrame) -> None:
    step_s = df["tpot_ms_mean"] / 1e3
    peaks = df.assign(bw=df["decode_bytes_per_step"] / step_s / df["mbu"],
                      flops=df["decode_flops_per_step"] / step_s / df["mfu"]).groupby("run")[["bw", "flops"]].median()
    # runs on the same device share one roof
    peaks = peaks.round(-9).reset_index().groupby(["bw", "flops"])["run"].unique().reset_index()
    intensity = df["decode_flops_per_step"] / df["decode_bytes_per_step"]
    ridges = peaks["flops"] / peaks["bw"]
    lo, hi = min(intensity.min(), ridges.min()) / 3, max(intensity.max(), ridges.max()) * 3
    for bw, flops, runs in peaks.itertuples(index=False):
        x = np.geomspace(lo, hi, 60)
        label = f"{bw / 1e12:.2f} TB/s, {flops / 1e12:.0f} TFLOP/s" + \
            (f" ({', '.join(map(_text, runs))})" if len(peaks) > 1 else "")
        fig.add_trace(go.Scatter(x=x, y=np.minimum(flops, x * bw) / 1e12, mode="lines", name=f"roof: {label}",
                                 line=dict(color="#555", width=1.5), hoverinfo="skip"), row=1, col=2)
    fig.add_vrect(x0=lo, x1=ridges.min(), fillcolor=PHASE_COLORS["decode"], opacity=0.08, line_width=0,
                  annotation_text="memory-bound", annotation_position="top left", row=1, col=2)
    fig.add_vrect(x0=ridges.max(), x1=hi, fillcolor=PHASE_COLORS["prefill"], opacity=0.08, line_width=0,
                  annotation_text="compute-bound", annotation_position="top right", row=1, col=2)
    fig.update_xaxes(type="log", range=[np.log10(lo), np.log10(hi)], title_text="arithmetic intensity (FLOP/byte)",
                     row=1, col=2)
    fig.update_yaxes(type="log", title_text="achieved (TFLOP/s)", row=1, col=2)


def power_timeline(telemetry: pd.DataFrame | None, kernels: pd.DataFrame | None,
                   points: pd.DataFrame) -> go.Figure | None:
    """Power of the profiled points (of every sampled point when none was profiled: NVML samples
    every point by default, and a sweep's worth of timelines would bury the page), prefill and
    decode shaded."""
    if not _has(telemetry, "t_s", "power_w"):
        return None
    keys = ["run", "point_id", "series", "batch_size", "context_len", "t_s"]
    df = telemetry.dropna(subset=["t_s", "power_w"])
    if kernels is not None:
        profiled = df.set_index(["run", "point_id"]).index.isin(kernels.set_index(["run", "point_id"]).index)
        df = df[profiled] if profiled.any() else df
    phase = df["phase"] if "phase" in df else None
    df = df.assign(phase=phase).groupby(keys, observed=True, dropna=False) \
        .agg(power_w=("power_w", "sum"), phase=("phase", "first")).reset_index()
    keys = df[keys[:-1]].drop_duplicates(["run", "point_id"]).sort_values(["series", "batch_size", "context_len"])
    titles = [f"{_text(s)}<br>batch {b} · context {c}" for s, b, c in
              keys[["series", "batch_size", "context_len"]].itertuples(index=False)]
    fig, where = _grid(list(zip(keys["run"], keys["point_id"])), "", "time since the point started (s)",
                       "power (W)", "phase", wrap=2, titles=titles, row_px=230)
    for title in fig.layout.annotations[:len(titles)]:
        title.font.size = 12
    colors = _colors(points["series"])
    for (run, point_id), (row, col) in where.items():
        g = df[(df["run"] == run) & (df["point_id"] == point_id)].sort_values("t_s")
        t = g["t_s"] - g["t_s"].iloc[0]
        series = g["series"].iloc[0]
        fig.add_trace(go.Scatter(x=t, y=g["power_w"], mode="lines", line=dict(color=colors[series], width=1.5),
                                 name=_text(series), legendgroup=str(series), showlegend=False,
                                 hovertemplate="%{x:.2f} s: %{y:.0f} W<extra></extra>"), row=row, col=col)
        _shade_phases(fig, t, g["phase"], row, col)
    for phase, color in PHASE_COLORS.items():
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", name=phase,
                                 marker=dict(symbol="square", size=12, color=color, opacity=0.4)))
    fig.update_yaxes(rangemode="tozero")
    return fig


def _shade_phases(fig, t: pd.Series, phase: pd.Series, row: int, col: int) -> None:
    ends = t.shift(-1).fillna(t.iloc[-1])  # a sample stands for the time until the next one
    runs = (phase != phase.shift()).cumsum()
    for _, span in pd.DataFrame({"t": t, "end": ends, "phase": phase, "run": runs}).groupby("run"):
        name = span["phase"].iloc[0]
        if name in PHASE_COLORS:
            fig.add_vrect(x0=span["t"].iloc[0], x1=span["end"].iloc[-1], fillcolor=PHASE_COLORS[name],
                          opacity=0.2, line_width=0, layer="below", row=row, col=col)


def kernel_breakdown(kernels: pd.DataFrame | None, points: pd.DataFrame) -> go.Figure | None:
    """GPU time by kernel category in each profiled point's window, a panel per phase."""
    if not _has(kernels, "total_ms", "category", "phase"):
        return None
    df = kernels.dropna(subset=["total_ms"])
    df = df.assign(category=df["category"].fillna("other"),
                   label=[f"{s} · b{b} · ctx {c}" for s, b, c in
                          df[["series", "batch_size", "context_len"]].itertuples(index=False)])
    by = df.groupby(["phase", "label", "category"], observed=True)["total_ms"].sum().reset_index()
    by["share"] = by["total_ms"] / by.groupby(["phase", "label"])["total_ms"].transform("sum")
    order = by.groupby("category")["total_ms"].sum().sort_values(ascending=False).index.tolist()
    order = [c for c in order if c != "other"] + [c for c in order if c == "other"]
    phases = [p for p in ("prefill", "decode") if p in set(by["phase"])] + \
        sorted(set(by["phase"]) - {"prefill", "decode"})
    labels = sorted(by["label"].unique(), reverse=True)  # horizontal bars list from the bottom up
    fig, where = _grid(phases, "phase", "GPU time in the profiled window (ms)", "", "kernel category", wrap=2,
                       shared_y=True)
    rows = -(-len(phases) // 2)
    fig.update_layout(height=max(120 + 30 * len(labels) * rows, 100 + 30 * len(order)), barmode="stack",
                      margin=dict(l=20))
    for i, category in enumerate(order):
        for phase, (row, col) in where.items():
            s = by[(by["phase"] == phase) & (by["category"] == category)]
            fig.add_trace(go.Bar(
                y=[_text(v) for v in s["label"]], x=s["total_ms"], orientation="h", name=_text(category),
                legendgroup=category, showlegend=phase == phases[0], marker_color=CATEGORY_PALETTE[i % len(CATEGORY_PALETTE)],
                customdata=s["share"],
                hovertemplate=f"{_text(category)}: %{{x:.3g}} ms (%{{customdata:.0%}})<extra>%{{y}}</extra>"),
                row=row, col=col)
    fig.update_yaxes(categoryorder="array", categoryarray=[_text(v) for v in labels], automargin=True)
    return fig


def agreement(points: pd.DataFrame, warn_below: float) -> go.Figure | None:
    """Share of greedy tokens equal to the reference's, per point."""
    df = _ok(points, "agreement").sort_values(["batch_size", "context_len"])
    if df.empty:
        return None
    colors = _colors(points["series"])
    fig = go.Figure()
    for series, s in df.groupby("series", observed=True):
        fig.add_trace(go.Scatter(
            x=[f"b{b} · ctx {c}" for b, c in zip(s["batch_size"], s["context_len"])], y=s["agreement"],
            mode="markers", name=_text(series), marker=dict(color=colors[series], size=10),
            hovertemplate=f"{_text(series)}<br>%{{x}}: %{{y:.1%}}<extra></extra>"))
    fig.add_hline(y=warn_below, line=dict(color="#c0392b", dash="dot"), annotation_text=f"warning below {warn_below:.0%}",
                  annotation_position="bottom left", annotation_font=dict(color="#c0392b", size=10))
    bottom = min(df["agreement"].min(), warn_below) - 0.05
    fig.update_layout(height=380, template="plotly_white", scattermode="group", margin=dict(l=80, r=20, t=20, b=60),
                      legend=dict(title_text=series_title(points)), hoverlabel=dict(namelength=-1),
                      yaxis=dict(title_text="agreement with reference", range=[bottom, 1.02], tickformat=".0%"),
                      xaxis=dict(title_text="point (batch · context)", type="category"))
    return fig
