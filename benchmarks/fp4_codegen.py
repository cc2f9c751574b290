"""Which matrix instructions the MoE's grouped GEMMs compile to on sm_90, sm_100 and sm_120, found
without any of those GPUs: Triton compiles for a target it does not run on (triton.compile of an
ASTSource with a GPUTarget), and the PTX (and, where Triton's bundled ptxas and nvdisasm take it,
the SASS) says whether the product runs on block-scaled MMA (tcgen05.mma ... kind::mxf8f6f4
.block_scale on sm_100, mma.sync ... kind::mxf8f6f4.block_scale on sm_120) or is upcast to bf16 MMA.

    PYTHONPATH=. python benchmarks/fp4_codegen.py [--model gpt-oss-20b] [--json]

Kernels: _gate_up_kernel and _down_kernel at the model's shapes with the engine's prefill and decode
tiles, in quant=mxfp4 (bf16 x e2m1) and quant=mxfp4_mxfp8 (e4m3 x e2m1; on sm_120 the engine widens
the weights to e4m3, as moe_kernels.E2M1_AS_E4M3_MAJORS says). Prints a markdown table (--json: one
JSON list as the last line). Exit 3 when this Triton cannot compile for NVIDIA targets here.
Must run without TRITON_INTERPRET (the interpreter compiles nothing).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

TARGETS = {"sm_90": 90, "sm_100": 100, "sm_120": 120}
PTX_MMA = re.compile(r"\b((?:tcgen05\.mma|wgmma\.mma_async|mma\.sync)[\w.:]*)")
SASS_MMA = re.compile(r"\b([A-Z0-9]*MMA[A-Z0-9_.]*)")


def signatures(quant: str) -> tuple[dict, dict]:
    """Argument types of the two kernels (pointers and run-time scalars; constexprs added later)."""
    act = "*fp8e4nv" if quant == "mxfp4_mxfp8" else "*bf16"
    scales = "*u8" if quant == "mxfp4_mxfp8" else "constexpr"
    gate_up = {"X": act, "stride_x": "i32", "XS": scales, "Order": "*i32", "Offsets": "*i32", "Weights": "*fp32",
               "W": "*u8", "S": "*u8", "B": "*fp32", "Hout": act, "HS": scales, "num_m": "i32", "alpha": "fp32",
               "limit": "fp32"}
    down = {"Hin": act, "HS": scales, "Order": "*i32", "Offsets": "*i32", "Weights": "*fp32", "W": "*u8", "S": "*u8",
            "B": "*fp32", "Out": "*fp32", "num_m": "i32"}
    return gate_up, down


def compile_one(fn, types: dict, constexprs: dict, cc: int, num_warps: int, num_stages: int):
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    signature = {name: types.get(name, "constexpr") for name in fn.arg_names}
    constexprs = {**constexprs, **{k: None for k, v in types.items() if v == "constexpr"}}
    # What the launcher specialises at run time: 16-byte aligned pointers, ints divisible by 16.
    attrs = {(i,): [["tt.divisibility", 16]] for i, name in enumerate(fn.arg_names)
             if signature[name].startswith("*") or (signature[name] == "i32" and name.startswith("stride"))}
    src = ASTSource(fn, signature, constexprs, attrs)
    return triton.compile(src, target=GPUTarget("cuda", cc, 32), options={"num_warps": num_warps,
                                                                          "num_stages": num_stages})


def sass_mma(cubin: bytes) -> list[str]:
    """Distinct MMA mnemonics of the SASS, by Triton's bundled nvdisasm (empty if it cannot read it)."""
    import triton

    nvdisasm = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "nvdisasm"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run([str(nvdisasm), "-c", f.name], capture_output=True, text=True)
    return sorted(set(SASS_MMA.findall(out.stdout))) if out.returncode == 0 else []


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="gpt-oss-20b")
    ap.add_argument("--json", action="store_true", help="also print the rows as one JSON list (last line)")
    args = ap.parse_args()
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        print("fp4_codegen: unset TRITON_INTERPRET (the interpreter compiles nothing)")
        return 2
    try:
        import triton  # noqa: F401
        from triton.backends import backends
        if "nvidia" not in backends:
            raise RuntimeError("Triton has no NVIDIA backend")
        from backends.triton_mxfp4 import moe_kernels as K
        from backends.triton_mxfp4.moe import DECODE, DECODE_MX, PREFILL
        from harness.model.spec import get_spec
    except Exception as e:  # noqa: BLE001 (a missing backend shows up as any import error)
        print(f"fp4_codegen: this Triton cannot compile for NVIDIA targets here ({type(e).__name__}: {e})")
        return 3
    spec = get_spec(args.model)
    H, I, E, k = spec.hidden_size, spec.intermediate_size, spec.num_local_experts, spec.num_experts_per_tok
    rows = []
    for target, cc in TARGETS.items():
        for quant in ("mxfp4", "mxfp4_mxfp8"):
            widen = quant == "mxfp4_mxfp8" and cc // 10 in K.E2M1_AS_E4M3_MAJORS
            gate_up_types, down_types = signatures(quant)
            regimes = {"prefill": PREFILL, "decode": DECODE_MX if quant == "mxfp4_mxfp8" else DECODE}
            for regime, tiles in regimes.items():
                for kernel, fn, types, (n, kk) in (("gate_up", K._gate_up_kernel, gate_up_types, (2 * I, H)),
                                                   ("down", K._down_kernel, down_types, (H, I))):
                    t = tiles.fit(n, kk)
                    const = {"E": E, "EP": triton.next_power_of_2(E), "K": kk, "N": n, "BM": t.bm, "BN": t.bn,
                             "BK": t.bk, "SWAP": t.swap, "GROUP_M": t.group_m, "W_E4M3": widen}
                    if kernel == "gate_up":
                        const["TOPK"] = k
                    print(f"compiling {kernel} {quant} {regime} for {target} ...", file=sys.stderr, flush=True)
                    c = compile_one(fn, types, const, cc, t.num_warps, t.num_stages)
                    rows.append({"target": target, "quant": quant, "kernel": kernel, "tiles": regime,
                                 "shape": f"{t.bm}x{t.bn}x{t.bk}{' swap' if t.swap else ''}", "w_e4m3": widen,
                                 "mma": sorted(set(PTX_MMA.findall(c.asm["ptx"]))),
                                 "sass": sass_mma(c.asm["cubin"]) if "cubin" in c.asm else []})
    print("| target | quant | kernel | tiles (BMxBNxBK) | weights as | block-scaled | PTX MMA | SASS MMA |")
    print("|" + " --- |" * 8)
    for r in rows:
        scaled = "yes" if any("block_scale" in i for i in r["mma"]) else "no (upcast)"
        print(f"| {r['target']} | {r['quant']} | {r['kernel']} | {r['tiles']} {r['shape']} | "
              f"{'e4m3' if r['w_e4m3'] else 'e2m1'} | {scaled} | {'<br>'.join(f'`{i}`' for i in r['mma'])} | "
              f"{', '.join(r['sass'])} |")
    if args.json:
        print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
