"""End-to-end benchmark of the triton_mxfp4 engine on one GPU, written for benchmarks/LOG.md.

    PYTHONPATH=. python benchmarks/bench_triton.py --model gpt-oss-20b \
        --decode 1x1024 1x131072 64x1024 256x1024 --prefill 1x8192 --out bench_20b.md

In one run: the GPU's copy bandwidth (device-to-device, bytes read + written) and bf16 matmul
rate, measured by harness.analysis.calibration (the ceilings of the `mbu` and `mfu` columns too);
for each decode point (batch x context) the step time as the median of CUDA-graph replays
and MBU = spec.decode_step_bytes / time / measured bandwidth, plus the step as the harness times
it (engine.decode: token copy in, replay, token copy out); for each prefill point the time and
MFU = spec.prefill_flops / time / measured matmul rate; kernel-time breakdowns (torch.profiler) of
the decode steps named by --breakdown (over graph replays, with the same step launched eagerly for
comparison) and of every prefill point: which kernels take the time, how much is launch gap; and
attention decode alone (graph-replayed) against the copy bandwidth. --gemv-tiles FILE (written by
bench_moe.py --gemv-grid) times the decode points that take the MoE gemv path again with the file's
tiles for this model, in the same run, so the two tile sets compare on the same GPU state.

A decode point whose prompt is longer than PREFILL_TOKENS in all starts from a cache filled with
random keys and values instead of a prefill: the step's work depends on the lengths, not on the
values (routing stays near-uniform either way with synthetic weights).
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import triton
from torch.profiler import ProfilerActivity, record_function

from harness.analysis.calibration import copy_bandwidth, matmul_rate
from harness.model.load_request import LoadRequest
from backends.triton_mxfp4 import TritonMxfp4
from backends.triton_mxfp4 import moe as M
from backends.triton_mxfp4.moe_kernels import GemvTiles
from backends.triton_mxfp4.attention import attention_decode, decode_splits
from harness.model.spec import get_spec
from harness.telemetry.kernel_timeline import kernel_table, load_trace

PREFILL_TOKENS = 1 << 15
REPLAYS = 40
PROFILED = 5
HARNESS_STEPS = 10


def shape(text: str) -> tuple[int, int]:
    batch, context = text.lower().split("x")
    return int(batch), int(context)


def median_ms(fn, reps: int) -> float:
    """Median of `reps` back-to-back calls, each between CUDA events."""
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(reps)]
    for a, b in events:
        a.record()
        fn()
        b.record()
    torch.cuda.synchronize()
    return statistics.median(a.elapsed_time(b) for a, b in events)


def start_decode(backend: TritonMxfp4, batch: int, context: int, steps: int) -> None:
    """A prefilled (or randomly filled) cache of `batch` sequences at `context` tokens."""
    eng = backend.engine
    eng.allocate(batch, context + steps)
    if batch * context <= PREFILL_TOKENS:
        backend.prefill(torch.randint(0, eng.spec.vocab_size, (batch, context), device="cuda"))
        return
    for t in eng.cache.k + eng.cache.v:
        t.normal_()
    eng.pos[:batch].fill_(context)
    eng.batch, eng.length = batch, context


def decode_point(backend, quant, batch, context, bandwidth, breakdown: bool) -> dict:
    eng, spec = backend.engine, backend.engine.spec
    start_decode(backend, batch, context, 1 + 5 + REPLAYS + HARNESS_STEPS + (PROFILED + HARNESS_STEPS) * breakdown + 1)
    tok = torch.randint(0, spec.vocab_size, (batch,), device="cuda")
    backend.decode(tok)  # captures this batch's graph
    graph = eng.graphs[batch]
    for _ in range(5):
        graph.replay()
    ms = median_ms(graph.replay, REPLAYS)
    harness_ms = median_ms(lambda: backend.decode(tok), HARNESS_STEPS)
    step_bytes = spec.decode_step_bytes(batch, context, quant)
    gemv = M.gemv_tiles(torch.device("cuda"))
    row = {"model": spec.name, "quant": quant, "phase": "decode", "batch": batch, "context": context, "ms": ms,
           "gemv": f"{gemv.gate_up.label} / {gemv.down.label}" if M.uses_gemv(batch, spec) else "-",
           "harness_ms": harness_ms, "tok_s": batch * 1e3 / ms, "gb": step_bytes / 1e9,
           "mbu": step_bytes / (ms * 1e-3) / bandwidth, "mfu": None,
           "start": "prefill" if batch * context <= PREFILL_TOKENS else "random cache"}
    if breakdown:
        row["kernels"] = profile(graph.replay, PROFILED, backend)
        eng.cuda_graphs = False  # the same step launched kernel by kernel: what the graph saves
        row["eager_ms"] = median_ms(lambda: backend.decode(tok), HARNESS_STEPS)
        eng.cuda_graphs = True
    return row


def use_gemv_tiles(path: Path, model: str) -> bool:
    """This GPU's gemv tiles from a bench_moe.py --gemv-grid file, for the rest of the run."""
    tiles = json.loads(path.read_text()).get(model)
    if not tiles:
        print(f"{path} has no tiles for {model}; only the engine's are timed")
        return False
    M.GEMV_BY_MAJOR[torch.cuda.get_device_capability()[0]] = M.GemvTilesPair(
        GemvTiles(**tiles["gate_up"]), GemvTiles(**tiles["down"]))
    M._gemv_tiles_on.cache_clear()
    return True


def profile(fn, reps: int, backend) -> object:
    """Kernel table (pandas) of `reps` calls of fn under torch.profiler, per call, with the launch-gap line.
    The profiler's own tracing adds a few us to every launch, so the gap is an upper bound."""
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        with record_function("window"):
            for _ in range(reps):
                fn()
            torch.cuda.synchronize()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "trace.json"
        prof.export_chrome_trace(str(path))
        table = kernel_table(load_trace(path), ["window"], backend.kernel_category)
    table["ms_per_step"] = table["total_ms"] / reps
    table["calls_per_step"] = table["calls"] / reps
    return table


def prefill_point(backend, quant, batch, context, rate) -> dict:
    eng, spec = backend.engine, backend.engine.spec
    eng.allocate(batch, context)
    prompts = torch.randint(0, spec.vocab_size, (batch, context), device="cuda")
    backend.prefill(prompts)  # compiles
    ms = median_ms(lambda: backend.prefill(prompts), 3)
    flops = spec.prefill_flops(batch, context)
    row = {"model": spec.name, "quant": quant, "phase": "prefill", "batch": batch, "context": context, "ms": ms,
           "harness_ms": None, "tok_s": batch * context * 1e3 / ms, "gb": None, "mbu": None,
           "mfu": flops / (ms * 1e-3) / rate, "start": "-", "gemv": "-"}
    row["kernels"] = profile(lambda: backend.prefill(prompts), 1, backend)
    return row


def attention_alone(spec, bandwidth) -> list[dict]:
    """attention_decode over a cache of random keys/values: bytes of K and V read per call."""
    Hq, Hkv, D = spec.num_attention_heads, spec.num_key_value_heads, spec.head_dim
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    rows = []
    for batch, context in ((1, 8192), (1, 32768), (1, 131072), (64, 1024), (64, 8192)):
        k, v = (torch.randn(batch, Hkv, context, D, device="cuda", dtype=torch.bfloat16) for _ in range(2))
        q = torch.randn(batch, Hq * D, device="cuda", dtype=torch.bfloat16)
        sinks = torch.randn(Hq, device="cuda")
        pos = torch.full((batch,), context - 1, device="cuda", dtype=torch.int32)
        splits = decode_splits(batch, Hkv, context, sms)
        attention_decode(q, k, v, sinks, pos, splits)  # compiles
        graph = torch.cuda.CUDAGraph()  # a graph, as in the engine: no Python launch cost in the timing
        with torch.cuda.graph(graph):
            attention_decode(q, k, v, sinks, pos, splits)
        ms = triton.testing.do_bench(graph.replay, warmup=25, rep=100, return_mode="median")
        nbytes = 2 * k.numel() * k.element_size()
        rows.append({"batch": batch, "context": context, "splits": splits, "us": ms * 1e3,
                     "tb_s": nbytes / (ms * 1e-3) / 1e12, "of_copy": nbytes / (ms * 1e-3) / bandwidth})
        del k, v
    return rows


def markdown(gpu, bandwidth, rate, load_s, rows, attention, command) -> str:
    out = [f"### triton_mxfp4, {gpu}, {datetime.date.today()}", "", f"`{command}`", "",
           f"Copy bandwidth {bandwidth / 1e12:.2f} TB/s (read + write), bf16 matmul {rate / 1e12:.0f} TFLOP/s "
           f"(8192^3); load {load_s:.0f} s.", "",
           "| model | quant | phase | batch | context | ms (graph replay / prefill) | ms (engine.decode) | tok/s "
           "| GB/step | MBU | MFU | start | gemv tiles (gate_up / down) |", "|" + " --- |" * 13]
    f = lambda v, fmt: "-" if v is None else format(v, fmt)  # noqa: E731
    for r in rows:
        out.append(f"| {r['model']} | {r['quant']} | {r['phase']} | {r['batch']} | {r['context']} | {r['ms']:.3f} | "
                   f"{f(r['harness_ms'], '.3f')} | {r['tok_s']:,.0f} | {f(r['gb'], '.3f')} | {f(r['mbu'], '.1%')} | "
                   f"{f(r['mfu'], '.1%')} | {r['start']} | {r['gemv']} |")
    for r in rows:
        if "kernels" not in r:
            continue
        t = r["kernels"]
        step = t["ms_per_step"].sum()
        how = (f"{PROFILED} graph replays under torch.profiler (a replay has no ranges: kernels are sorted by name, "
               f"the engine's cuBLAS GEMMs being its QKV/O projections); "
               f"the same step launched eagerly takes {r['eager_ms']:.3f} ms" if r["phase"] == "decode" else
               "one eager prefill under torch.profiler, GEMMs sorted by the range they ran in")
        out += ["", f"Kernel time of one {r['phase']} step, {r['model']} batch {r['batch']} context {r['context']} "
                    f"({how}; {step:.3f} ms a step under the profiler, of which launch gap "
                    f"{t.loc[t.kernel == 'launch_gap', 'ms_per_step'].sum():.3f} ms):", "",
                "| category | ms/step | share |", "| --- | --- | --- |"]
        by_cat = t.groupby("category")["ms_per_step"].sum().sort_values(ascending=False)
        out += [f"| {c} | {v:.3f} | {v / step:.1%} |" for c, v in by_cat.items()]
        out += ["", "| kernel | category | calls/step | ms/step | mean us |", "| --- | --- | --- | --- | --- |"]
        out += [f"| `{k.kernel[:70]}` | {k.category} | {k.calls_per_step:.0f} | {k.ms_per_step:.3f} | {k.mean_us:.1f} |"
                for k in t.sort_values("ms_per_step", ascending=False).head(15).itertuples()]
    if attention:
        out += ["", "Attention decode alone (random cache, K and V bytes read once):", "",
                "| batch | context | splits | us | TB/s | of copy bandwidth |", "| --- | --- | --- | --- | --- | --- |"]
        out += [f"| {a['batch']} | {a['context']} | {a['splits']} | {a['us']:.1f} | {a['tb_s']:.2f} | {a['of_copy']:.0%} |"
                for a in attention]
    return "\n".join(out) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="gpt-oss-20b")
    ap.add_argument("--quant", default="mxfp4")
    ap.add_argument("--decode", nargs="*", default=["1x1024"], type=shape, help="BATCHxCONTEXT points")
    ap.add_argument("--prefill", nargs="*", default=[], type=shape, help="BATCHxCONTEXT points")
    ap.add_argument("--breakdown", nargs="*", default=None, type=shape,
                    help="decode points to profile (default: the first); every prefill point is profiled")
    ap.add_argument("--attention", action="store_true", help="also time attention decode alone")
    ap.add_argument("--out", type=Path, default=None, help="write the markdown here too")
    ap.add_argument("--gemv-tiles", type=Path, default=None,
                    help="bench_moe.py --gemv-grid's gemv_tiles.json: time the gemv points with them too")
    args = ap.parse_args()
    command = "PYTHONPATH=. python " + " ".join(sys.argv)
    breakdown = set(args.breakdown if args.breakdown is not None else args.decode[:1])
    gpu = torch.cuda.get_device_name()
    bandwidth, rate = copy_bandwidth(), matmul_rate()
    print(f"{gpu}: copy {bandwidth / 1e12:.2f} TB/s, bf16 matmul {rate / 1e12:.0f} TFLOP/s", flush=True)
    spec = get_spec(args.model)
    backend = TritonMxfp4()
    t0 = time.perf_counter()
    backend.load(LoadRequest(spec, args.quant, None, max_batch_size=1, max_seq_len=2048, device="cuda"))
    torch.cuda.synchronize()
    load_s = time.perf_counter() - t0
    print(f"loaded {spec.name} {args.quant} in {load_s:.0f} s: {backend.memory()}", flush=True)
    rows = []
    for batch, context in args.decode:
        rows.append(decode_point(backend, args.quant, batch, context, bandwidth, (batch, context) in breakdown))
        print({k: v for k, v in rows[-1].items() if k != "kernels"}, flush=True)
    gemv_points = [(b, c) for b, c in args.decode if M.uses_gemv(b, spec)]
    if args.gemv_tiles and gemv_points and use_gemv_tiles(args.gemv_tiles, spec.name):
        for batch, context in gemv_points:
            rows.append(decode_point(backend, args.quant, batch, context, bandwidth, False))
            print({k: v for k, v in rows[-1].items() if k != "kernels"}, flush=True)
    for batch, context in args.prefill:
        rows.append(prefill_point(backend, args.quant, batch, context, rate))
        print({k: v for k, v in rows[-1].items() if k != "kernels"}, flush=True)
    backend.close()
    attention = attention_alone(spec, bandwidth) if args.attention else []
    text = markdown(gpu, bandwidth, rate, load_s, rows, attention, command)
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
