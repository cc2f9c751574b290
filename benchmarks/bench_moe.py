"""The MoE block of triton_mxfp4 alone on a GPU: correctness at the real shapes against the torch
reference, then time per layer against the copy bandwidth and bf16 matmul rate measured in the same
run.

    PYTHONUNBUFFERED=1 python benchmarks/bench_moe.py --out DIR [--sweep | --gemv-grid]

Layers are random MXFP4 experts (uniform E2M1 codes, scale bytes 119..121, RMS ~0.023) with a
random router, so routing is near uniform: the most experts a batch can touch. NL distinct layers
are allocated and consecutive calls use consecutive layers, so weights stream from HBM as in a
decode step, not from L2. Decode points are CUDA graphs of NL * REPEAT calls (launch gaps included,
as the engine replays them); prefill runs eagerly. --sweep first times the gemv against the grouped
path at small T and tile variants of the grouped and prefill kernels.
--gemv-grid times gate_up and down alone over GemvTiles variants at T = 1, 2, 4, 8 (gemv_variants:
bn x bk x warps, and split for down; each checked against the fp32 reference inside its layer), then
the whole layer with the engine's tiles and with the fastest of each kernel; prints the 5 fastest
variants per (model, T, kernel) and the 3 fastest over all four T (the candidates for moe.py's
GEMV_BY_MAJOR). 13 gate_up and 52 down variants: 130 compiles (the experts count is a kernel
constant, so each model compiles its own; ~0.5 s each) and 520 timings (~0.1 s each: graph capture
of 32 or 16 calls, then do_bench's GRID_REP_MS with an L2 flush before each replay): ~2.5 minutes
on an H200 for both models.
Imports only torch, triton, harness.model, harness.analysis.calibration (the ceilings, measured as
for the `mbu`/`mfu` columns) and the MoE modules (the GPU machine has no hydra/nvtx).
"""

from __future__ import annotations

import argparse
import itertools
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
GRID_T = (1, 2, 4, 8)
GRID_REP_MS = 40  # do_bench's window a grid variant (default 200): 20 (T = 8) to 80 replays of its graph
# Bytes of a step a thread, of the grid's tiles: 16 runs one fp16x2 asm a step a thread, with the x
# gather and address work of a step spread over the fewest weights; 128 holds 8 groups of x pairs
# in registers. The engine's tiles give 32 (gate_up) and 64 (down); (16, 32, 64) adds 60 compiles.
GRID_THREAD_BYTES = (32, 64)


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


def graph_ms(fn, calls: int, rep: int = 200) -> float:
    """Median time of fn(i) for i in range(calls), captured in one CUDA graph, per call; do_bench
    replays it for `rep` ms after a tenth of that of warm-up."""
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
    return do_bench(g.replay, warmup=rep // 10, rep=rep, return_mode="median") / calls


def reference(x, L, spec):
    """The fp32 torch reference of layer L at x."""
    return M.moe_reference(x, L["router_w"], L["router_b"], L["raw_up"], L["raw_down"], spec)


def agreement(y, ref) -> tuple[float, bool]:
    """(relative error of y against the fp32 reference, whether it is below 1e-2 with no NaN)."""
    err = ((y.double() - ref.double()).norm() / ref.double().norm()).item()
    return err, err < 1e-2 and not y.isnan().any().item()


def check(log, name, spec, layers, T):
    L = layers[0]
    x = torch.randn(T, spec.hidden_size, device="cuda").bfloat16()
    err, ok = agreement(M.moe(x, L["router_w"], L["router_b"], L["gate_up"], L["down"], spec), reference(x, L, spec))
    log(f"check {name} T={T}: rel err {err:.2e} {'ok' if ok else 'FAIL'}", kind="check", model=name, T=T, rel_err=err,
        ok=ok)
    return ok


def unique_experts(spec, layers, x) -> float:
    k = spec.num_experts_per_tok
    n = [torch.topk(torch.nn.functional.linear(x, L["router_w"], L["router_b"]).float(), k).indices.unique().numel()
         for L in layers]
    return sum(n) / len(n)


def decode_point(log, name, spec, layers, T, copy_gbs, path=None, **row):
    """The layer's time at T tokens (moe(), or path(x, L, spec)); row: more fields for its Log row."""
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
        us=ms * 1e3, experts=U, mbytes=nbytes / 1e6, gbs=gbs, of_copy=gbs / copy_gbs, **row)
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

def gemv(x, L, spec, up=None, down=None):
    """The gemv path of layer L; tiles left None are the engine's for this GPU (moe.gemv_tiles)."""
    engine = M.gemv_tiles(x.device)
    logits = torch.nn.functional.linear(x, L["router_w"], L["router_b"])
    return K.down_gemv(K.gate_up_gemv(x, logits, L["gate_up"], spec, up or engine.gate_up), logits, L["down"], spec,
                       down or engine.down)


def grouped(x, L, spec, tiles=M.DECODE):
    r = route(torch.nn.functional.linear(x, L["router_w"], L["router_b"]), spec.num_experts_per_tok)
    return K.down_grouped(K.gate_up_grouped(x, r, L["gate_up"], spec, tiles), r, L["down"], spec, tiles)


def gemv_inputs(spec, layers, T, up):
    """Tokens x [T, H], router logits per layer and down's input h per layer (gate_up with `up`)."""
    x = torch.randn(T, spec.hidden_size, device="cuda").bfloat16()
    logits = [torch.nn.functional.linear(x, L["router_w"], L["router_b"]) for L in layers]
    return x, logits, [K.gate_up_gemv(x, lg, L["gate_up"], spec, up) for lg, L in zip(logits, layers)]


def gemv_kernel_ms(spec, layers, x, logits, h, op, tiles, rep=200) -> tuple[float, int]:
    """(ms a call, bytes streamed a call) of the gemv's gate_up or down alone over the layers (inputs
    from gemv_inputs). Bytes: one expert matrix per assignment (an expert shared by two of the
    batch's tokens is read twice; the second read may hit L2)."""
    nl = len(layers)

    def run(i):
        if op == "gate_up":
            return K.gate_up_gemv(x, logits[i % nl], layers[i % nl]["gate_up"], spec, tiles)
        return K.down_gemv(h[i % nl], logits[i % nl], layers[i % nl]["down"], spec, tiles)
    w = layers[0][op]
    nbytes = x.shape[0] * spec.num_experts_per_tok * (w.blocks[0].numel() + w.scales[0].numel() + 4 * w.bias[0].numel())
    return graph_ms(run, nl * REPEAT, rep), nbytes


def gemv_variants(base: K.GemvTiles, n: int, k: int, splits=(1,)) -> list[K.GemvTiles]:
    """base at bn {16, 32, 64} x bk {128, 256, 512} x warps {2, 4, 8} x splits, fitted to
    [n, k], distinct, keeping those that give each thread GRID_THREAD_BYTES of a step. num_stages
    stays: these loops have no dot, Triton pipelines none of their loads, and the sm_90 SASS at 1
    and 3 stages is identical."""
    out = {}
    for bn, bk, warps, split in itertools.product((16, 32, 64), (128, 256, 512), (2, 4, 8), splits):
        t = replace(base, bn=bn, bk=bk, num_warps=warps, split=split).fit(n, k)
        if t.bn * t.bk // 2 // (32 * t.num_warps) in GRID_THREAD_BYTES:
            out.setdefault(t, None)
    return list(out)


def gemv_grid(log, name, spec, layers, copy_gbs) -> bool:
    """gemv_variants of gate_up and of down (split 1-4) alone at T in GRID_T, each checked inside its
    layer (the other kernel on the engine's tiles) against the fp32 reference; then the layer with
    the engine's tiles and with each kernel's fastest. Whether every variant passed."""
    engine, ok = M.gemv_tiles(torch.device("cuda")), True
    up_w, down_w = layers[0]["gate_up"], layers[0]["down"]
    variants = {"gate_up": gemv_variants(engine.gate_up, up_w.n, up_w.k),
                "down": gemv_variants(engine.down, down_w.n, down_w.k, splits=(1, 2, 3, 4))}
    log(f"gemv grid {name}: {len(variants['gate_up'])} gate_up and {len(variants['down'])} down variants, T {GRID_T}")
    for T in GRID_T:
        x, logits, h = gemv_inputs(spec, layers, T, engine.gate_up)
        ref = reference(x, layers[0], spec)
        fastest = {"gate_up": (float("inf"), engine.gate_up), "down": (float("inf"), engine.down)}
        for op in variants:
            for tiles in variants[op]:
                try:
                    y = gemv(x, layers[0], spec, *((tiles, None) if op == "gate_up" else (None, tiles)))
                    err, good = agreement(y, ref)
                    ms, nbytes = gemv_kernel_ms(spec, layers, x, logits, h, op, tiles, rep=GRID_REP_MS)
                except Exception as exc:  # a tile that does not compile or fit is a finding, not a crash
                    log(f"grid {name} T={T} {op} {asdict(tiles)}: {type(exc).__name__}: {str(exc)[:200]}")
                    continue
                ok &= good
                if good and ms < fastest[op][0]:
                    fastest[op] = (ms, tiles)
                gbs = nbytes / ms / 1e6
                log(f"grid {name} T={T} {op:<7} {tiles.label:<22} {ms * 1e3:7.1f} us  {gbs / 1e3:5.2f} TB/s  "
                    f"rel err {err:.1e}{'' if good else ' FAIL'}", kind="gemv_grid", model=name, T=T, op=op,
                    tiles=asdict(tiles), us=ms * 1e3, mbytes=nbytes / 1e6, gbs=gbs, of_copy=gbs / copy_gbs,
                    rel_err=err, ok=good)
        for label, up, down in (("engine", engine.gate_up, engine.down),
                                ("fastest", fastest["gate_up"][1], fastest["down"][1])):
            def path(x, L, spec, up=up, down=down):
                return gemv(x, L, spec, up, down)
            path.__name__ = f"gemv_{label}"
            decode_point(log, name, spec, layers, T, copy_gbs, path=path, gate_up=asdict(up), down=asdict(down))
    return ok


def gemv_grid_summary(log, rows):
    """The 5 fastest passing variants per (model, T, kernel), and the 3 with the least time summed
    over GRID_T per (model, kernel): one set of tiles serves every T in the engine. Returns the
    fastest of those per model and kernel, as GemvTiles fields."""
    grid = [r for r in rows if r.get("kind") == "gemv_grid" and r["ok"]]
    for (model, T, op), group in itertools.groupby(sorted(grid, key=lambda r: (r["model"], r["T"], r["op"])),
                                                   key=lambda r: (r["model"], r["T"], r["op"])):
        for r in sorted(group, key=lambda r: r["us"])[:5]:
            log(f"{model:<13} T={T} {op:<7} {K.GemvTiles(**r['tiles']).label:<22} {r['us']:7.1f} us  "
                f"{r['gbs'] / 1e3:5.2f} TB/s  {r['of_copy']:6.1%}")
    totals = {}  # (model, kernel) -> {tiles: us at each T}
    for r in grid:
        totals.setdefault((r["model"], r["op"]), {}).setdefault(K.GemvTiles(**r["tiles"]), []).append(r["us"])
    best = {}
    for (model, op), by_tiles in sorted(totals.items()):
        whole = sorted((t for t, us in by_tiles.items() if len(us) == len(GRID_T)), key=lambda t: sum(by_tiles[t]))
        for t in whole[:3]:
            log(f"{model:<13} {op:<7} {t.label:<22} T {GRID_T}: " + " / ".join(f"{us:.1f}" for us in by_tiles[t])
                + f" us (sum {sum(by_tiles[t]):.1f})")
        if whole:
            best.setdefault(model, {})[op] = asdict(whole[0])
    return best


def sweep(log, name, spec, layers, copy_gbs, mm_tflops, tiles: bool):
    """GEMV vs grouped at small batches; with `tiles`, also tile variants of each kernel."""
    for T in (1, 2, 3, 4, 6, 8, 12, 16):
        decode_point(log, name, spec, layers, T, copy_gbs, path=gemv)
        decode_point(log, name, spec, layers, T, copy_gbs, path=grouped)
    if tiles:
        sweep_tiles(log, name, spec, layers, copy_gbs, mm_tflops)


def sweep_tiles(log, name, spec, layers, copy_gbs, mm_tflops):
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
    ap.add_argument("--gemv-grid", action="store_true", help="only gemv tile variants, T = 1, 2, 4, 8")
    ap.add_argument("--models", default="gpt-oss-20b,gpt-oss-120b")
    args = ap.parse_args()
    if args.sweep and args.gemv_grid:
        print("bench_moe: --sweep and --gemv-grid are separate runs; pass one")
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
        if args.gemv_grid:
            failed |= not gemv_grid(log, name, spec, layers, copy_gbs)
            log(f"{name} done at {time.time() - t0:.0f} s")
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
    best = gemv_grid_summary(log, log.rows)
    if best:  # bench_triton.py --gemv-tiles times the whole engine with these beside its own
        (args.out / "gemv_tiles.json").write_text(json.dumps(best, indent=1))
        log(f"fastest tiles over T {GRID_T} per model: {args.out / 'gemv_tiles.json'}")
    for r in log.rows:
        if r.get("kind") == "decode" and r["path"].startswith("gemv_"):
            tiles = "".join(f"  {op} {K.GemvTiles(**r[op]).label}" for op in ("gate_up", "down") if op in r)
            log(f"{r['model']:<13} {r['path']:<12} T={r['T']:<2} layer {r['us']:7.1f} us  {r['gbs']:6.0f} GB/s  "
                f"{r['of_copy']:6.1%}{tiles}")
        elif r.get("kind") == "decode" and r["path"] == "moe":
            log(f"{r['model']:<13} decode T={r['T']:<5} {r['us']:8.1f} us  {r['gbs']:6.0f} GB/s  {r['of_copy']:6.1%}")
        elif r.get("kind") == "prefill" and r["tiles"] is None:
            log(f"{r['model']:<13} prefill T={r['T']} {r['us']:8.1f} us  {r['tflops']:6.1f} TFLOP/s  "
                f"{r['of_matmul']:6.1%} of matmul")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
