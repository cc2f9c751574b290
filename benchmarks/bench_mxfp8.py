"""quant=mxfp4_mxfp8 against quant=mxfp4 in the triton_mxfp4 engine, one GPU, one process.

    PYTHONPATH=. python benchmarks/bench_mxfp8.py [--models gpt-oss-20b gpt-oss-120b] [--out mxfp8.md]

Per model, on synthetic weights (seed 0) generated in device memory:
  1. torch_ref (fp32, MXFP4 weights) on a teacher-forced run: a prompt of AGREE_BATCH x AGREE_CONTEXT
     tokens, then AGREE_STEPS forced decode steps; its logits go to the CPU and it is freed (the 120b
     does not fit twice);
  2. the engine loaded once: the two modes read the same weights and differ only in how the MoE is
     fed, so the bench switches engine.quant between them (a second copy of the 120b would not fit);
  3. per mode, the same teacher-forced run (logits relative error per position, median / max, and
     top-1 agreement with torch_ref), decode steps at batch 1 / 8 / 64 / 256 from a cache of
     DECODE_CONTEXT random keys and values (CUDA-graph replays, median), and a prefill of 8k tokens.
At batch AGREE_BATCH both the prefill and the decode steps take the grouped (MXFP8) path; below the
gemv threshold (20b: batch <= 8, 120b: <= 33) mxfp4_mxfp8 runs exactly what mxfp4 runs.
Prints progress, then a markdown table (also written to --out).
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path

import torch

from bench_triton import median_ms  # benchmarks/ is on sys.path when a script of it runs
from backends.torch_ref import TorchRef
from backends.triton_mxfp4 import TritonMxfp4
from backends.triton_mxfp4.moe import uses_gemv
from harness.model.load_request import LoadRequest
from harness.model.spec import get_spec, weight_format

MODES = ("mxfp4", "mxfp4_mxfp8")
DECODE_BATCHES = (1, 8, 64, 256)
DECODE_CONTEXT = 1024
PREFILL_TOKENS = 8192
AGREE_BATCH, AGREE_CONTEXT, AGREE_STEPS = 64, 128, 4
REPLAYS = 20
T0 = time.perf_counter()


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - T0:6.1f} s] {msg}", flush=True)


def agreement_inputs(spec):
    g = torch.Generator().manual_seed(0)
    return (torch.randint(0, spec.vocab_size, (AGREE_BATCH, AGREE_CONTEXT), generator=g),
            torch.randint(0, spec.vocab_size, (AGREE_BATCH, AGREE_STEPS), generator=g))


@torch.inference_mode()
def reference_logits(spec, prompts, forced) -> torch.Tensor:
    """torch_ref fp32 on the MXFP4 weights: logits [steps+1, B, V] on the CPU."""
    ref = TorchRef(dtype="float32", device="cuda")
    ref.load(LoadRequest(spec, weight_format("mxfp4_mxfp8"), None, seed=0, max_batch_size=AGREE_BATCH,
                         max_seq_len=AGREE_CONTEXT + AGREE_STEPS + 1, device="cuda"))
    m, cache = ref.model, ref.cache
    out = [m(prompts.cuda(), 0, cache, last_only=True)[:, -1].float().cpu()]
    for i in range(forced.shape[1]):
        out.append(m(forced[:, i, None].cuda(), prompts.shape[1] + i, cache)[:, -1].float().cpu())
    ref.close()
    del ref, m, cache
    gc.collect()
    torch.cuda.empty_cache()
    return torch.stack(out)


def engine_logits(backend, prompts, forced) -> torch.Tensor:
    eng = backend.engine
    eng.allocate(AGREE_BATCH, AGREE_CONTEXT + AGREE_STEPS + 1)
    backend.prefill(prompts.cuda())
    out = [eng.logits[:AGREE_BATCH].cpu()]
    for i in range(forced.shape[1]):
        backend.decode(forced[:, i].cuda())
        out.append(eng.logits[:AGREE_BATCH].cpu())
    return torch.stack(out)


def compare(logits, ref) -> dict:
    err = (logits - ref).norm(dim=-1) / ref.norm(dim=-1)
    return {"err_median": err.median().item(), "err_max": err.max().item(),
            "agree": (logits.argmax(-1) == ref.argmax(-1)).float().mean().item()}


def decode_ms(backend, batch: int) -> float:
    """One decode step at `batch` x DECODE_CONTEXT from a random cache: median of graph replays."""
    eng = backend.engine
    eng.allocate(batch, DECODE_CONTEXT + REPLAYS + 8)
    for t in eng.cache.k + eng.cache.v:
        t.normal_()
    eng.pos[:batch].fill_(DECODE_CONTEXT)
    eng.batch, eng.length = batch, DECODE_CONTEXT
    tok = torch.randint(0, eng.spec.vocab_size, (batch,), device="cuda")
    backend.decode(tok)  # compiles and captures
    graph = eng.graphs[batch]
    for _ in range(3):
        graph.replay()
    return median_ms(graph.replay, REPLAYS)


def prefill_ms(backend) -> float:
    eng = backend.engine
    eng.allocate(1, PREFILL_TOKENS)
    prompt = torch.randint(0, eng.spec.vocab_size, (1, PREFILL_TOKENS), device="cuda")
    backend.prefill(prompt)  # compiles
    return median_ms(lambda: backend.prefill(prompt), 3)


def bench_model(name: str) -> list[dict]:
    spec = get_spec(name)
    prompts, forced = agreement_inputs(spec)
    log(f"{name}: torch_ref fp32, {AGREE_BATCH} x {AGREE_CONTEXT} tokens + {AGREE_STEPS} forced steps")
    ref = reference_logits(spec, prompts, forced)
    backend = TritonMxfp4()
    backend.load(LoadRequest(spec, "mxfp4", None, seed=0, max_batch_size=1, max_seq_len=16, device="cuda"))
    log(f"{name}: engine loaded, {backend.memory()['weights_gib']:.1f} GiB of weights")
    rows = []
    for quant in MODES:
        backend.engine.quant = quant  # same weights (see the docstring); allocate() drops the graphs
        row = {"model": name, "quant": quant, **compare(engine_logits(backend, prompts, forced), ref)}
        log(f"{name} {quant}: agreement {row['agree']:.3f}, logits rel err median {row['err_median']:.2e} "
            f"max {row['err_max']:.2e}")
        for batch in DECODE_BATCHES:
            row[f"decode_{batch}"] = decode_ms(backend, batch)
            log(f"{name} {quant}: decode batch {batch} ({'gemv' if uses_gemv(batch, spec) else 'grouped'}) "
                f"{row[f'decode_{batch}']:.3f} ms")
        row["prefill"] = prefill_ms(backend)
        log(f"{name} {quant}: prefill {PREFILL_TOKENS} tokens {row['prefill']:.1f} ms")
        rows.append(row)
    backend.close()
    del backend
    gc.collect()
    torch.cuda.empty_cache()
    return rows


def markdown(rows: list[dict], gpu: str) -> str:
    out = [f"triton_mxfp4 on {gpu}: decode step ms (CUDA-graph replay, context {DECODE_CONTEXT}) and prefill "
           f"ms ({PREFILL_TOKENS} tokens); agreement and logits rel err against fp32 torch_ref on the MXFP4 "
           f"weights ({AGREE_BATCH} x {AGREE_CONTEXT} prompt + {AGREE_STEPS} teacher-forced steps).", "",
           "| model | quant | " + " | ".join(f"decode b{b} ms" for b in DECODE_BATCHES)
           + " | prefill 8k ms | prefill tok/s | agreement | rel err median | rel err max |",
           "|" + " --- |" * (len(DECODE_BATCHES) + 7)]
    for r in rows:
        out.append(f"| {r['model']} | {r['quant']} | " + " | ".join(f"{r[f'decode_{b}']:.3f}" for b in DECODE_BATCHES)
                   + f" | {r['prefill']:.1f} | {PREFILL_TOKENS * 1e3 / r['prefill']:,.0f} | {r['agree']:.3f} | "
                     f"{r['err_median']:.2e} | {r['err_max']:.2e} |")
    out += ["", "mxfp4_mxfp8 time / mxfp4 time:", "", "| model | " + " | ".join(f"b{b}" for b in DECODE_BATCHES)
            + " | prefill |", "|" + " --- |" * (len(DECODE_BATCHES) + 2)]
    for name in dict.fromkeys(r["model"] for r in rows):
        a, b = (next(r for r in rows if r["model"] == name and r["quant"] == q) for q in MODES)
        keys = [f"decode_{x}" for x in DECODE_BATCHES] + ["prefill"]
        out.append(f"| {name} | " + " | ".join(f"{b[k] / a[k]:.2f}" for k in keys) + " |")
    return "\n".join(out) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=["gpt-oss-20b", "gpt-oss-120b"])
    ap.add_argument("--out", type=Path, default=None, help="write the markdown here too")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("bench_mxfp8: needs a CUDA GPU")
        return 2
    gpu = torch.cuda.get_device_name()
    log(f"{gpu}, torch {torch.__version__}")
    rows = [r for name in args.models for r in bench_model(name)]
    text = markdown(rows, gpu)
    print(text, flush=True)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
