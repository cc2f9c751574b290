"""The MoE block of triton_mxfp4 alone on a GPU: correctness at the real shapes against the torch
reference, then time per layer against the copy bandwidth and bf16 matmul rate measured in the same
run.

    PYTHONUNBUFFERED=1 python benchmarks/bench_moe.py --out DIR [--sweep | --decodes]

Layers are random MXFP4 experts (uniform E2M1 codes, scale bytes 119..121, RMS ~0.023) with a
random router, so routing is near uniform: the most experts a batch can touch. NL distinct layers
are allocated and consecutive calls use consecutive layers, so weights stream from HBM as in a
decode step, not from L2. Decode points are CUDA graphs of NL * REPEAT calls (launch gaps included,
as the engine replays them); prefill runs eagerly. --sweep first times tile variants of each kernel.
--decodes times only the gemv path in each of its e2m1 decodes (GemvTiles.decode) at T = 1 and 8:
accuracy against the fp32 reference, the whole layer, and gate_up and down alone.
Imports only torch, triton, harness.model, harness.analysis.calibration (the ceilings, measured as
for the `mbu`/`mfu` columns) and the MoE modules (the GPU machine has no hydra/nvtx).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import types
from dataclasses import asdict, replace
from pathlib import Path

import torch
import triton
from triton.testing import do_bench

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
# The package's __init__ builds the whole engine and its harness imports; the MoE needs none of it.
_pkg = types.ModuleType("backends.triton_mxfp4")
_pkg.__path__ = [str(ROOT / "backends" / "triton_mxfp4")]
sys.modules.setdefault("backends.triton_mxfp4", _pkg)

from backends.triton_mxfp4 import moe as M  # noqa: E402
from backends.triton_mxfp4 import moe_kernels as K  # noqa: E402
from backends.triton_mxfp4.routing import route  # noqa: E402
from harness.analysis.calibration import copy_bandwidth, matmul_rate  # noqa: E402
from harness.model.spec import get_spec  # noqa: E402

REPEAT = 4
DECODE_T = (1, 2, 4, 8, 16, 64, 256)
PREFILL_T = 8192


class Log:
    def __init__(self, out: Path):
        out.mkdir(parents=True, exist_ok=True)
        self.rows, self.path, self.text = [], out / "bench_moe.jsonl", open(out / "bench_moe.log", "w")
        self.path.write_text("")

    def __call__(self, msg: str = "", **row):
        print(msg)
        self.text.write(msg + "\n")
        self.text.flush()
        if row:
            self.rows.append(row)
            with open(self.path, "a") as f:
                f.write(json.dumps(row) + "\n")


def random_layer(spec, gen):
    E, H, I = spec.num_local_experts, spec.hidden_size, spec.intermediate_size

    def experts(n, k):
        blocks = torch.randint(0, 256, (E, n, k // 32, 16), dtype=torch.uint8, device="cuda", generator=gen)
        scales = (120 + torch.randint(-1, 2, (E, n, k // 32), device="cuda", generator=gen)).to(torch.uint8)
        bias = (torch.randn(E, n, device="cuda", generator=gen) * 0.05).bfloat16()
        return blocks, scales, bias

    raw_up, raw_down = experts(2 * I, H), experts(H, I)
    return dict(router_w=(torch.randn(E, H, device="cuda", generator=gen) / H ** 0.5).bfloat16(),
                router_b=(torch.randn(E, device="cuda", generator=gen) * 0.1).bfloat16(),
                raw_up=raw_up, raw_down=raw_down,
                gate_up=M.prepare_experts(*raw_up, "gate_up"), down=M.prepare_experts(*raw_down, "down"))


def expert_bytes(L) -> int:
    """Bytes the kernels read for one expert: packed values, scales and fp32 biases of both matrices."""
    return sum(w.blocks[0].numel() + w.scales[0].numel() + 4 * w.bias[0].numel() for w in (L["gate_up"], L["down"]))


def graph_ms(fn, calls: int) -> float:
    """Median time of fn(i) for i in range(calls), captured in one CUDA graph, per call."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for i in range(calls):
            fn(i)
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for i in range(calls):
            fn(i)
    return do_bench(g.replay, warmup=20, rep=200, return_mode="median") / calls


def check(log, name, spec, layers, T):
    L = layers[0]
    x = torch.randn(T, spec.hidden_size, device="cuda").bfloat16()
    y = M.moe(x, L["router_w"], L["router_b"], L["gate_up"], L["down"], spec)
    ref = M.moe_reference(x, L["router_w"], L["router_b"], L["raw_up"], L["raw_down"], spec)
    err = ((y.double() - ref.double()).norm() / ref.double().norm()).item()
    ok = err < 1e-2 and not y.isnan().any().item()
    log(f"check {name} T={T}: rel err {err:.2e} {'ok' if ok else 'FAIL'}", kind="check", model=name, T=T, rel_err=err,
        ok=ok)
    return ok


def unique_experts(spec, layers, x) -> float:
    k = spec.num_experts_per_tok
    n = [torch.topk(torch.nn.functional.linear(x, L["router_w"], L["router_b"]).float(), k).indices.unique().numel()
         for L in layers]
    return sum(n) / len(n)


def decode_point(log, name, spec, layers, T, copy_gbs, path=None):
    x = torch.randn(T, spec.hidden_size, device="cuda").bfloat16()
    nl = len(layers)
    if path is None:
        def run(i):
            L = layers[i % nl]
            return M.moe(x, L["router_w"], L["router_b"], L["gate_up"], L["down"], spec)
    else:
        def run(i):
            return path(x, layers[i % nl], spec)
    ms = graph_ms(run, nl * REPEAT)
    U = unique_experts(spec, layers, x)
    E, H = spec.num_local_experts, spec.hidden_size
    nbytes = U * expert_bytes(layers[0]) + 2 * E * H + 2 * 2 * T * H
    gbs = nbytes / ms / 1e6
    label = "moe" if path is None else path.__name__
    log(f"{name} decode T={T:<4} {label:<10} {ms * 1e3:8.1f} us/layer  {U:6.1f} experts  {nbytes / 1e6:7.1f} MB  "
        f"{gbs:7.0f} GB/s  {gbs / copy_gbs:5.1%} of copy", kind="decode", model=name, T=T, path=label,
        us=ms * 1e3, experts=U, mbytes=nbytes / 1e6, gbs=gbs, of_copy=gbs / copy_gbs)
    return ms


def prefill_point(log, name, spec, layers, T, mm_tflops, tiles=None):
    x = torch.randn(T, spec.hidden_size, device="cuda").bfloat16()
    L = layers[0]
    if tiles is None:
        fn = lambda: M.moe(x, L["router_w"], L["router_b"], L["gate_up"], L["down"], spec)  # noqa: E731
    else:
        fn = lambda: grouped(x, L, spec, tiles)  # noqa: E731
    ms = do_bench(fn, warmup=5, rep=100, return_mode="median")
    flops = 2 * T * spec.num_experts_per_tok * 3 * spec.hidden_size * spec.intermediate_size
    tf = flops / ms / 1e9
    log(f"{name} prefill T={T} {'moe' if tiles is None else str(asdict(tiles))} {ms * 1e3:9.1f} us/layer  "
        f"{tf:6.1f} TFLOP/s  {tf / mm_tflops:5.1%} of matmul", kind="prefill", model=name, T=T,
        tiles=None if tiles is None else asdict(tiles), us=ms * 1e3, tflops=tf, of_matmul=tf / mm_tflops)
    return ms


# ---- paths and kernels with explicit tiles (sweep) -----------------------------------------------

def gemv(x, L, spec, up=M.GEMV_GATE_UP, down=M.GEMV_DOWN):
    logits = torch.nn.functional.linear(x, L["router_w"], L["router_b"])
    return K.down_gemv(K.gate_up_gemv(x, logits, L["gate_up"], spec, up), logits, L["down"], spec, down)


def grouped(x, L, spec, tiles=M.DECODE):
    r = route(torch.nn.functional.linear(x, L["router_w"], L["router_b"]), spec.num_experts_per_tok)
    return K.down_grouped(K.gate_up_grouped(x, r, L["gate_up"], spec, tiles), r, L["down"], spec, tiles)


def compare_decodes(log, name, spec, layers, copy_gbs) -> bool:
    """The gemv path (engine tiles) in each GemvTiles.decode at T = 1 and 8; whether every decode
    passed check()'s bound. Kernel lines count the bytes each kernel streams: one expert matrix per
    assignment (an expert shared by two of the batch's tokens is read twice; the second read may
    hit L2)."""
    nl, ok = len(layers), True
    for T in (1, 8):
        x = torch.randn(T, spec.hidden_size, device="cuda").bfloat16()
        logits = [torch.nn.functional.linear(x, L["router_w"], L["router_b"]) for L in layers]
        A = T * spec.num_experts_per_tok
        for decode in K.GEMV_DECODES:
            up, down = replace(M.GEMV_GATE_UP, decode=decode), replace(M.GEMV_DOWN, decode=decode)
            L = layers[0]
            y = gemv(x, L, spec, up, down)
            ref = M.moe_reference(x, L["router_w"], L["router_b"], L["raw_up"], L["raw_down"], spec)
            err = ((y.double() - ref.double()).norm() / ref.double().norm()).item()
            good = err < 1e-2 and not y.isnan().any().item()
            ok &= good
            log(f"check {name} gemv {decode} T={T}: rel err {err:.2e} {'ok' if good else 'FAIL'}", kind="decode_check",
                model=name, T=T, decode=decode, rel_err=err, ok=good)

            def path(x, L, spec, up=up, down=down):
                return gemv(x, L, spec, up, down)
            path.__name__ = f"gemv_{decode}"
            decode_point(log, name, spec, layers, T, copy_gbs, path=path)
            h = [K.gate_up_gemv(x, lg, Li["gate_up"], spec, up) for lg, Li in zip(logits, layers)]

            def run_up(i):
                return K.gate_up_gemv(x, logits[i % nl], layers[i % nl]["gate_up"], spec, up)

            def run_down(i):
                return K.down_gemv(h[i % nl], logits[i % nl], layers[i % nl]["down"], spec, down)
            for kind, fn in (("gate_up", run_up), ("down", run_down)):
                w = layers[0][kind]
                nbytes = A * (w.blocks[0].numel() + w.scales[0].numel() + 4 * w.bias[0].numel())
                ms = graph_ms(fn, nl * REPEAT)
                gbs = nbytes / ms / 1e6
                log(f"{name} gemv {decode:<6} T={T} {kind:<7} {ms * 1e3:7.1f} us  {nbytes / 1e6:6.1f} MB streamed  "
                    f"{gbs / 1e3:5.2f} TB/s  {gbs / copy_gbs:5.1%} of copy", kind="decode_kernel", model=name, T=T,
                    decode=decode, op=kind, us=ms * 1e3, mbytes=nbytes / 1e6, gbs=gbs, of_copy=gbs / copy_gbs)
    return ok


def sweep(log, name, spec, layers, copy_gbs, mm_tflops, tiles: bool):
    """GEMV vs grouped at small batches; with `tiles`, also tile variants of each kernel."""
    for T in (1, 2, 3, 4, 6, 8, 12, 16):
        decode_point(log, name, spec, layers, T, copy_gbs, path=gemv)
        decode_point(log, name, spec, layers, T, copy_gbs, path=grouped)
    if tiles:
        sweep_tiles(log, name, spec, layers, copy_gbs, mm_tflops)


def sweep_tiles(log, name, spec, layers, copy_gbs, mm_tflops):
    nl, H = len(layers), spec.hidden_size
    up_share = layers[0]["gate_up"].n / (layers[0]["gate_up"].n + layers[0]["down"].n)
    x1 = torch.randn(1, H, device="cuda").bfloat16()
    logits = [torch.nn.functional.linear(x1, L["router_w"], L["router_b"]) for L in layers]
    h1 = [K.gate_up_gemv(x1, lg, L["gate_up"], spec, M.GEMV_GATE_UP) for lg, L in zip(logits, layers)]
    for t in [K.GemvTiles(bn, bk, w, s, decode) for decode in K.GEMV_DECODES for bn, bk, w, s in
              [(32, 256, 4, 3), (32, 256, 4, 2), (32, 256, 4, 4), (16, 256, 4, 3), (16, 512, 4, 3), (32, 512, 4, 3),
               (64, 128, 4, 3), (32, 128, 4, 3), (64, 256, 4, 3), (32, 256, 2, 3), (64, 256, 8, 3), (16, 256, 2, 4),
               (64, 512, 4, 3), (128, 256, 4, 3), (128, 256, 8, 3)]]:
        for kind in ("gate_up", "down"):
            if kind == "gate_up":
                fn, share = lambda i: K.gate_up_gemv(x1, logits[i % nl], layers[i % nl]["gate_up"], spec, t), up_share
            else:
                fn, share = lambda i: K.down_gemv(h1[i % nl], logits[i % nl], layers[i % nl]["down"], spec, t), \
                    1 - up_share
            try:
                ms = graph_ms(fn, nl * REPEAT)
            except Exception as exc:  # a tile that does not compile or fit is a finding, not a crash
                log(f"sweep {name} gemv {kind} {asdict(t)}: {type(exc).__name__}: {str(exc)[:200]}")
                continue
            gbs = 4 * expert_bytes(layers[0]) * share / ms / 1e6
            log(f"sweep {name} gemv {kind:<7} {asdict(t)} {ms * 1e3:7.1f} us {gbs:6.0f} GB/s {gbs / copy_gbs:5.1%}",
                kind="sweep_gemv", model=name, op=kind, tiles=asdict(t), us=ms * 1e3, gbs=gbs)
    for T in (8, 64, 256):
        for bm, bn, bk, w, st in [(16, 64, 128, 4, 3), (16, 64, 128, 4, 4), (16, 32, 256, 4, 3), (16, 32, 128, 4, 3),
                                  (32, 64, 128, 4, 3), (16, 128, 128, 8, 3), (32, 32, 256, 4, 3), (64, 64, 128, 4, 3)]:
            t = K.Tiles(bm, bn, bk, True, 1, w, st)

            def path(x, L, spec, t=t):
                return grouped(x, L, spec, t)
            path.__name__ = f"g{bm}x{bn}x{bk}w{w}s{st}"
            try:
                decode_point(log, name, spec, layers, T, copy_gbs, path=path)
            except Exception as exc:
                log(f"sweep {name} grouped {asdict(t)}: {type(exc).__name__}: {str(exc)[:200]}")
    P = M.PREFILL
    for t in [P, replace(P, bk=64), replace(P, bk=64, num_stages=4), replace(P, bk=64, num_stages=4, group_m=4),
              replace(P, bk=64, num_stages=4, group_m=16), replace(P, bn=256, bk=64, num_warps=8),
              replace(P, bm=256, bk=64, num_warps=8), replace(P, bm=256, bk=64, num_warps=8, num_stages=4),
              replace(P, num_warps=8), replace(P, bn=64)]:
        try:
            prefill_point(log, name, spec, layers, PREFILL_T, mm_tflops, t)
        except Exception as exc:
            log(f"sweep {name} prefill {asdict(t)}: {type(exc).__name__}: {str(exc)[:200]}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path("bench_out"))
    ap.add_argument("--sweep", action="store_true", help="also time variants (tiles: first model only)")
    ap.add_argument("--decodes", action="store_true", help="only the gemv path in each e2m1 decode, T = 1 and 8")
    ap.add_argument("--models", default="gpt-oss-20b,gpt-oss-120b")
    args = ap.parse_args()
    if args.sweep and args.decodes:
        print("bench_moe: --sweep and --decodes are separate runs; pass one")
        sys.exit(2)
    log = Log(args.out)
    t0 = time.time()
    copy_gbs, mm_tflops = copy_bandwidth() / 1e9, matmul_rate() / 1e12  # harness.analysis.calibration's ceilings
    log(f"{torch.cuda.get_device_name()} torch {torch.__version__} triton {triton.__version__}: copy {copy_gbs:.0f} "
        f"GB/s (read + write), bf16 matmul 8192^3 {mm_tflops:.0f} TFLOP/s", kind="ceilings",
        gpu=torch.cuda.get_device_name(), copy_gbs=copy_gbs, mm_tflops=mm_tflops)
    gen = torch.Generator(device="cuda").manual_seed(0)
    failed = False
    for i, name in enumerate(args.models.split(",")):
        spec = get_spec(name)
        nl = 8 if spec.num_local_experts <= 32 else 4
        layers = [random_layer(spec, gen) for _ in range(nl)]
        if args.decodes:
            failed |= not compare_decodes(log, name, spec, layers, copy_gbs)
            del layers
            torch.cuda.empty_cache()
            continue
        for T in (1, 3, 8, 64, PREFILL_T):
            failed |= not check(log, name, spec, layers, T)
        if args.sweep:
            sweep(log, name, spec, layers, copy_gbs, mm_tflops, tiles=i == 0)
        for T in DECODE_T:
            decode_point(log, name, spec, layers, T, copy_gbs)
        prefill_point(log, name, spec, layers, PREFILL_T, mm_tflops)
        del layers
        torch.cuda.empty_cache()
    log(f"\n=== MoE layer alone on {torch.cuda.get_device_name()}: copy {copy_gbs:.0f} GB/s, matmul {mm_tflops:.0f} "
        f"TFLOP/s ({time.time() - t0:.0f} s) ===")
    for r in log.rows:
        if r.get("kind") == "decode" and r["path"].startswith("gemv_"):
            log(f"{r['model']:<13} {r['path']:<12} T={r['T']:<2} layer {r['us']:7.1f} us  {r['gbs']:6.0f} GB/s  "
                f"{r['of_copy']:6.1%}")
        elif r.get("kind") == "decode_kernel":
            log(f"{r['model']:<13} gemv_{r['decode']:<7} T={r['T']:<2} {r['op']:<7} {r['us']:7.1f} us  "
                f"{r['gbs'] / 1e3:5.2f} TB/s  {r['of_copy']:6.1%}")
        elif r.get("kind") == "decode" and r["path"] == "moe":
            log(f"{r['model']:<13} decode T={r['T']:<5} {r['us']:8.1f} us  {r['gbs']:6.0f} GB/s  {r['of_copy']:6.1%}")
        elif r.get("kind") == "prefill" and r["tiles"] is None:
            log(f"{r['model']:<13} prefill T={r['T']} {r['us']:8.1f} us  {r['tflops']:6.1f} TFLOP/s  "
                f"{r['of_matmul']:6.1%} of matmul")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
