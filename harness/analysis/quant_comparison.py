"""MXFP4 against bf16 on one GPU, from a run folder (`gptoss-bench sweep=explain`): per model, engine
and quant mode the weights, decode TPOT at batch 1 / 8 / 64 (context 1024), prefill speed and MFU at
8k tokens, energy per token, and the longest context that fits at batch 1.

The longest context is modelled, not searched: (device memory - weights) over the KV bytes a token
adds (ModelSpec: full-attention layers grow, sliding ones stop at the window), activations not
counted, capped at the model's positions. A quant mode that does not fit (a `skipped` row, e.g.
120b bf16 on one GPU) says so with the GiB it needs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from harness.model.spec import SPECS, ModelSpec

DECODE_BATCHES = (1, 8, 64)
DECODE_CONTEXT = 1024
PREFILL_CONTEXT = 8192
GIB = 2**30


@dataclass(frozen=True)
class QuantRow:
    model: str
    backend: str
    quant: str
    fits: bool
    weights_gib: float | None  # as the engine allocated them, else the spec's count
    required_gib: float | None  # what a quant mode that does not fit would need
    tpot_ms: dict[int, float | None] = field(default_factory=dict)  # batch -> TPOT p50 at context 1024
    prefill_tok_s: float | None = None  # batch 1, 8k tokens
    prefill_mfu: float | None = None
    energy_j_per_tok: float | None = None  # batch 1, context 1024
    longest_context: int | None = None  # at batch 1 (modelled)


def longest_context(spec: ModelSpec, device_gib: float, weights_gib: float) -> int | None:
    """Most tokens one sequence's KV cache can hold in the memory the weights leave."""
    free = (device_gib - weights_gib) * GIB - spec.num_sliding_layers * spec.sliding_window * spec.kv_bytes_per_token_layer
    if free <= 0:
        return None
    return min(int(free // (spec.num_full_layers * spec.kv_bytes_per_token_layer)), spec.max_position_embeddings)


def _value(df: pd.DataFrame, column: str, **where) -> float | None:
    sel = df
    for k, v in where.items():
        sel = sel[sel[k] == v]
    sel = sel[sel["status"] == "ok"][column].dropna()
    return float(sel.iloc[0]) if len(sel) else None


def compare_quants(points: pd.DataFrame) -> list[QuantRow]:
    """One row per (model, backend, quant) of a run's points, mxfp4 before bf16."""
    rows = []
    order = {"mxfp4": 0, "bf16": 1}
    keys = points[["model", "backend", "quant"]].drop_duplicates().itertuples(index=False)
    for model, backend, quant in sorted(keys, key=lambda k: (k[0], k[1], order.get(k[2], 2), k[2])):
        g = points[(points["model"] == model) & (points["backend"] == backend) & (points["quant"] == quant)]
        spec = SPECS.get(model)
        ok = g[g["status"] == "ok"]
        required = g["required_gib"].dropna()
        if ok.empty and len(required):
            rows.append(QuantRow(model, backend, quant, False, None, float(required.max())))
            continue
        weights = ok["weights_gib"].dropna()
        weights_gib = float(weights.iloc[0]) if len(weights) else (
            spec.weight_bytes(quant) / GIB if spec is not None else None)
        device = g["device_mem_gib"].dropna()
        longest = longest_context(spec, float(device.iloc[0]), weights_gib) \
            if spec is not None and len(device) and weights_gib is not None else None
        rows.append(QuantRow(
            model, backend, quant, True, weights_gib, None,
            tpot_ms={b: _value(g, "tpot_ms_p50", batch_size=b, context_len=DECODE_CONTEXT) for b in DECODE_BATCHES},
            prefill_tok_s=_value(g, "prefill_tok_s", batch_size=1, context_len=PREFILL_CONTEXT),
            prefill_mfu=_value(g, "prefill_mfu", batch_size=1, context_len=PREFILL_CONTEXT),
            energy_j_per_tok=_value(g, "energy_j_per_tok", batch_size=1, context_len=DECODE_CONTEXT),
            longest_context=longest))
    return rows
