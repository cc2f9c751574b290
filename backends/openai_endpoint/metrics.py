"""Serving metrics of one load, in the vocabulary of `vllm bench serve` and AIPerf: per-request
TTFT, TPOT (after the first token), ITL (between streamed chunks) and E2EL, their percentiles,
failed requests, throughput, and goodput against optional SLOs. docs/serving.md defines the columns.
"""

from __future__ import annotations

import numpy as np

from backends.openai_endpoint.load import RequestRecord

SLO_KEYS = ("ttft_ms", "tpot_ms", "e2el_ms")
# The serving backends' own columns of points.parquet (Backend.columns_schema): means and
# percentiles over requests, beside the harness's batch-wide ttft_ms and tpot_ms_*.
SERVING_COLUMNS = {
    "load_mode": "string", "request_rate": "float64", "concurrency": "int64", "num_requests": "int64",
    "completed_requests": "int64", "failed_requests": "int64", "duration_s": "float64",
    "request_throughput_req_s": "float64", "output_tok_s": "float64", "total_tok_s": "float64",
    "goodput_req_s": "float64", "request_ttft_ms_mean": "float64", "ttft_ms_p50": "float64", "ttft_ms_p99": "float64",
    "request_tpot_ms_mean": "float64", "request_tpot_ms_p99": "float64", "itl_ms_p50": "float64",
    "itl_ms_p90": "float64", "itl_ms_p99": "float64", "e2e_ms_p50": "float64", "e2e_ms_p99": "float64",
}


def _pct(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def _meets(rec: RequestRecord, slo: dict[str, float]) -> bool:
    got = {"ttft_ms": rec.ttft_s * 1e3, "e2el_ms": rec.e2el_s * 1e3,
           "tpot_ms": rec.tpot_s * 1e3 if rec.tpot_s is not None else 0.0}
    return all(got[k] <= v for k, v in slo.items())


def serving_columns(records: list[RequestRecord], duration_s: float, slo: dict[str, float | None]) -> dict:
    """The serving columns of one point from its request records (ok and failed)."""
    bad = sorted(set(slo) - set(SLO_KEYS))
    if bad:
        raise ValueError(f"unknown SLO keys {bad}; expected some of {SLO_KEYS}")
    slo = {k: v for k, v in slo.items() if v is not None}
    ok = [r for r in records if r.ok]
    ttft = [r.ttft_s * 1e3 for r in ok]
    itl = [x * 1e3 for r in ok for x in r.itl_s]
    e2el = [r.e2el_s * 1e3 for r in ok]
    tpot = [r.tpot_s * 1e3 for r in ok if r.tpot_s is not None]
    return {
        "num_requests": len(records), "completed_requests": len(ok), "failed_requests": len(records) - len(ok),
        "duration_s": duration_s,
        "request_throughput_req_s": len(ok) / duration_s,
        "output_tok_s": sum(r.output_tokens for r in ok) / duration_s,
        "total_tok_s": sum(r.output_tokens + r.prompt_len for r in ok) / duration_s,
        "goodput_req_s": sum(_meets(r, slo) for r in ok) / duration_s if slo else None,
        "request_ttft_ms_mean": float(np.mean(ttft)) if ttft else None, "ttft_ms_p50": _pct(ttft, 50), "ttft_ms_p99": _pct(ttft, 99),
        "request_tpot_ms_mean": float(np.mean(tpot)) if tpot else None, "request_tpot_ms_p99": _pct(tpot, 99),
        "itl_ms_p50": _pct(itl, 50), "itl_ms_p90": _pct(itl, 90), "itl_ms_p99": _pct(itl, 99),
        "e2e_ms_p50": _pct(e2el, 50), "e2e_ms_p99": _pct(e2el, 99),
    }
