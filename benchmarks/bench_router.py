"""The router GEMM of triton_mxfp4 (routing.router_logits) against cuBLAS (F.linear) on a GPU:
agreement and time per layer at the real shapes for tile variants of both its kernels, in one run.

    python benchmarks/bench_router.py

24 (20b) or 36 (120b) distinct router layers are cycled so the weights stream from HBM as in a
decode step; each point is a CUDA graph of those calls replayed (launch gaps included, as the
engine replays them), timed with triton.testing.do_bench. Prints a markdown table; the variant
marked * is what router_logits picks by default.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from triton.testing import do_bench

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backends.triton_mxfp4 import routing  # noqa: E402
from harness.model.spec import get_spec  # noqa: E402

GEMV = [{"be": be, "bk": bk} for be in (1, 2, 4, 8) for bk in (512, 1024)]
DOT = [{"bt": bt, "be": be, "bk": bk} for bt, be, bk in
       [(16, 16, 64), (16, 32, 256), (16, 128, 128), (32, 128, 64), (64, 128, 64), (64, 128, 128), (128, 128, 64),
        (64, 32, 128)]]


def graph_of(fn, layers):
    torch.cuda.synchronize()
    for _ in range(2):  # compile, create handles
        for w, b, x in layers:
            fn(x, w, b)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for w, b, x in layers:
            fn(x, w, b)
    return g


def main():
    print(f"# router GEMM, {torch.cuda.get_device_name()}, torch {torch.__version__}")
    print("| model | T | variant | us/layer | vs cuBLAS | equal bf16 logits |")
    print("| --- | --- | --- | --- | --- | --- |")
    for model in ("gpt-oss-20b", "gpt-oss-120b"):
        spec = get_spec(model)
        E, H, L = spec.num_local_experts, spec.hidden_size, spec.num_hidden_layers
        g = torch.Generator(device="cuda").manual_seed(0)
        for T in (1, 8, 16, 32, 64, 256, 8192):
            layers = [((torch.randn(E, H, device="cuda", generator=g) * H**-0.5).bfloat16(),
                       (torch.randn(E, device="cuda", generator=g) * 0.1).bfloat16(),
                       torch.randn(T, H, device="cuda", generator=g).bfloat16()) for _ in range(L)]
            w, b, x = layers[0]
            ref = F.linear(x, w, b)
            cublas = do_bench(graph_of(lambda x, w, b: F.linear(x, w, b), layers).replay, warmup=50, rep=200) * 1e3 / L
            print(f"| {model} | {T} | cuBLAS | {cublas:.2f} | 1.00 | 1 |")
            default = (routing.ROUTER_GEMV if T * E <= routing.ROUTER_GEMV_MAX_LOGITS else routing.ROUTER_DOT_DECODE
                       if T <= routing.ROUTER_DOT_DECODE_MAX_T else routing.ROUTER_DOT_PREFILL)
            variants = (GEMV if T <= 64 else []) + DOT
            results = []
            for tiles in variants:
                same = (routing.router_logits(x, w, b, tiles) == ref).float().mean().item()
                us = do_bench(graph_of(lambda x, w, b, t=tiles: routing.router_logits(x, w, b, t), layers).replay,
                              warmup=50, rep=200) * 1e3 / L
                results.append((us, tiles, same))
            for us, tiles, same in sorted(results, key=lambda r: r[0])[:4] + [r for r in results if r[1] == default]:
                mark = "*" if tiles == default else ""
                print(f"| {model} | {T} | {mark}{tiles} | {us:.2f} | {us / cublas:.2f} | {same:.4f} |")


if __name__ == "__main__":
    main()
