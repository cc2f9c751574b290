"""Recorded run folders for the procurement tests: what a GPU sweep of the procurement preset
leaves (points.parquet and env.json), with step times from the spec's bytes and FLOPs at a fixed
share of the datasheet roofs, so fronts have the shapes real sweeps have."""

import json

import pandas as pd

from harness.analysis.hardware import gpu_peak
from harness.model.spec import get_spec
from harness.results import POINT_COLUMNS, to_table, write_atomic

BATCHES, CONTEXTS, NEW_TOKENS = [1, 2, 4, 8, 16, 32, 64, 128, 256], [1024, 8192], 256
GPUS = {"NVIDIA H100 80GB HBM3": 79.6, "NVIDIA H200": 139.8}


def make_run(root, run_id, hardware, gpu_name, models=("gpt-oss-20b", "gpt-oss-120b"), speed=1.0, cv=0.01):
    """A run folder of triton_mxfp4 on `models` over BATCHES x CONTEXTS; points that do not fit
    are oom rows. `speed` scales every time (another run of the same machine: 0.99)."""
    peak, capacity = gpu_peak(gpu_name), GPUS[gpu_name]
    rows = []
    for model in models:
        spec = get_spec(model)
        for ctx in CONTEXTS:
            for batch in BATCHES:
                mean_ctx = ctx + (NEW_TOKENS - 1) // 2
                nbytes = spec.decode_step_bytes(batch, mean_ctx)
                flops = spec.decode_step_flops(batch, mean_ctx)
                need = (spec.weight_bytes() + spec.kv_cache_bytes(batch, ctx + NEW_TOKENS)) / 2**30 + 2.0
                row = dict(run_id=run_id, point_id=f"{model}-b{batch}-c{ctx}", backend="triton_mxfp4",
                           model=model, quant="mxfp4", batch_size=batch, context_len=ctx, new_tokens=NEW_TOKENS,
                           repeats=3, gpu_name=gpu_name, gpu_count=1, hardware=hardware, device_mem_gib=capacity,
                           required_gib=need)
                if need > capacity:
                    rows.append(row | dict(status="oom", error="CUDA out of memory"))
                    continue
                step = max(nbytes / (0.6 * peak.mem_bw_bytes_s), flops / (0.4 * peak.bf16_flops)) / speed
                ttft = spec.prefill_flops(batch, ctx) / (0.5 * peak.bf16_flops) / speed
                power = 300 + 350 * min(1.0, batch / 64)
                rows.append(row | dict(
                    status="ok", ttft_ms=ttft * 1e3, tpot_ms_mean=step * 1e3, tpot_ms_p50=step * 1e3,
                    decode_tok_s=batch / step, cv=cv, peak_mem_gib=need, power_w_mean=power,
                    energy_j_per_tok=power * step / batch, energy_source="counter", power_valid=True))
    path = root / run_id
    path.mkdir(parents=True)
    write_atomic(to_table(pd.DataFrame(rows), POINT_COLUMNS), path / "points.parquet")
    env = dict(gpu_name=gpu_name, gpu_count=1, gpus=[dict(name=gpu_name, memory_gib=capacity)], host="node",
               cpu_model="AMD EPYC", command=["gptoss-bench", "sweep=procurement"])
    (path / "env.json").write_text(json.dumps(env))
    return path
