"""The files a run leaves behind (shared/design/RESULTS.md) and how to read them back.

Column name -> pyarrow type. Units are the last part of a name; a value that cannot be measured
here is null, never 0.
"""

from __future__ import annotations

import pyarrow as pa

POINT_COLUMNS: dict[str, pa.DataType] = {
    # identity
    "run_id": pa.string(), "point_id": pa.string(), "started_at": pa.string(), "backend": pa.string(),
    "backend_version": pa.string(), "engine_path": pa.string(), "model": pa.string(), "quant": pa.string(),
    "batch_size": pa.int64(), "context_len": pa.int64(), "new_tokens": pa.int64(), "repeats": pa.int64(),
    "seed": pa.int64(), "router_skew": pa.float64(), "gpu_name": pa.string(), "gpu_count": pa.int64(),
    "hardware": pa.string(),
    # outcome
    "status": pa.string(), "error": pa.string(),
    # latency
    "ttft_ms": pa.float64(), "prefill_tok_s": pa.float64(), "tpot_ms_mean": pa.float64(),
    "tpot_ms_p50": pa.float64(), "tpot_ms_p90": pa.float64(), "tpot_ms_p99": pa.float64(),
    "decode_tok_s": pa.float64(), "e2e_ms": pa.float64(), "cv": pa.float64(),
    # memory
    "weights_gib": pa.float64(), "kv_cache_gib": pa.float64(), "peak_mem_gib": pa.float64(),
    "torch_peak_gib": pa.float64(), "required_gib": pa.float64(), "device_mem_gib": pa.float64(),
    # power
    "power_w_mean": pa.float64(), "power_w_max": pa.float64(), "prefill_energy_j": pa.float64(),
    "decode_energy_j": pa.float64(), "energy_j_per_tok": pa.float64(), "energy_source": pa.string(),
    "power_valid": pa.bool_(),
    # clocks
    "sm_clock_mhz_mean": pa.float64(), "throttled": pa.bool_(), "throttle_reasons": pa.string(),
    # roofline
    "decode_bytes_per_step": pa.float64(), "decode_flops_per_step": pa.float64(), "mbu": pa.float64(),
    "mfu": pa.float64(), "prefill_mfu": pa.float64(), "bound": pa.string(),
    # check
    "agreement": pa.float64(), "agreement_positions": pa.int64(),
}

SAMPLE_COLUMNS: dict[str, pa.DataType] = {
    "point_id": pa.string(), "repeat": pa.int64(), "step": pa.int64(), "tpot_ms": pa.float64(),
}
