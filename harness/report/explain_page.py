"""The `gptoss-explain` page: one self-contained HTML file (plotly.js inlined, as the run report),
from an Explanation record (harness.analysis.explanation)."""

from __future__ import annotations

from pathlib import Path

import jinja2
import plotly.graph_objects as go
from markupsafe import Markup
from plotly.offline import get_plotlyjs

from harness.analysis.explanation import Explanation
from harness.analysis.mxfp4_paths import ARCHS, ENGINES, GPUS
from harness.analysis.quant_comparison import DECODE_BATCHES
from harness.results import write_text_atomic


def _html(fig: go.Figure, div_id: str) -> Markup:
    # plotly writes the figure's JSON with <, > and / escaped, so its output is safe as markup
    return Markup(fig.to_html(full_html=False, include_plotlyjs=False, div_id=div_id,
                              config={"displaylogo": False, "responsive": True}))


def ceilings_figure(x: Explanation) -> go.Figure | None:
    """Each measured ceiling as a share of the datasheet's."""
    rows = [c for c in x.ceilings if c.share is not None]
    if not rows:
        return None
    fig = go.Figure(go.Bar(x=[c.what for c in rows], y=[c.share for c in rows],
                           text=[f"{c.measured:.3g} of {c.datasheet:.3g} {c.unit}" for c in rows]))
    fig.update_layout(yaxis_title="measured / datasheet", yaxis_tickformat=".0%", height=360,
                      margin=dict(l=60, r=20, t=20, b=60))
    return fig


def comparison_figure(x: Explanation) -> go.Figure | None:
    """Decode TPOT at batch 1 / 8 / 64, one line per model, engine and quant mode."""
    rows = [r for r in x.comparison if r.fits and any(r.tpot_ms.get(b) for b in DECODE_BATCHES)]
    if not rows:
        return None
    fig = go.Figure([go.Scatter(x=list(DECODE_BATCHES), y=[r.tpot_ms.get(b) for b in DECODE_BATCHES],
                                mode="lines+markers", name=f"{r.model} · {r.backend} · {r.quant}") for r in rows])
    fig.update_layout(xaxis_title="batch size (context 1024)", xaxis_type="log", yaxis_title="TPOT p50 (ms)",
                      height=380, margin=dict(l=60, r=20, t=20, b=60))
    return fig


def render(x: Explanation) -> str:
    figures = {}
    for key, draw in (("ceilings", ceilings_figure), ("comparison", comparison_figure)):
        fig = draw(x)
        if fig is not None:
            figures[key] = _html(fig, f"fig-{key}")
    grid = {(p.arch, p.engine): p for p in x.documented}
    env = jinja2.Environment(loader=jinja2.PackageLoader("harness.report", "templates"), autoescape=True,
                             undefined=jinja2.StrictUndefined)
    return env.get_template("explain.html.j2").render(
        x=x, figures=figures, archs=ARCHS, engines=ENGINES, gpus=GPUS, grid=grid, batches=DECODE_BATCHES,
        plotlyjs=Markup(get_plotlyjs()))


def write_explain_page(x: Explanation, out) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(render(x), out)
    return out
