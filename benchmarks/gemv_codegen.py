"""Instructions per weight in the MoE gemv's main loop, per tile set, found without a GPU: Triton
compiles _gemv_kernel for sm_90 (benchmarks/fp4_codegen.compile_one), its bundled nvdisasm prints the
SASS, and the loop (the first backward branch) is counted by opcode, divided by the weights a thread
handles per step (BN * BK / (32 * num_warps)). The gemv is issue-bound (benchmarks/LOG.md, "MoE
kernel"), so this count predicts its speed between tile sets; registers and spills come from cuobjdump.

    PYTHONPATH=. python benchmarks/gemv_codegen.py [--model gpt-oss-20b] [--tiles BN,BK,WARPS ...]

Must run without TRITON_INTERPRET (the interpreter compiles nothing).
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

SASS_OP = re.compile(r"^\s*/\*[0-9a-f]+\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_]*(?:\.MMA|\.F32)?)")
BACK_BRANCH = re.compile(r"@!?U?P\w+\s+BRA\s+`?\(?(\.L_x_\d+)")


def loop_opcodes(sass: str) -> collections.Counter:
    """Opcode counts between the first backward conditional branch and its label."""
    lines = sass.splitlines()
    for end, line in enumerate(lines):
        m = BACK_BRANCH.search(line)
        if m:
            start = next((i for i, x in enumerate(lines) if x.startswith(m.group(1) + ":")), None)
            if start is not None and start < end:
                return collections.Counter(op.group(1) for op in map(SASS_OP.match, lines[start:end + 1]) if op)
    raise ValueError("no loop found in the SASS")


def tool(name: str) -> str:
    import triton

    return str(Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name)


def on_cubin(cubin: bytes, *args: str) -> str:
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        return subprocess.run([*args, f.name], capture_output=True, text=True, check=True).stdout


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="gpt-oss-20b")
    ap.add_argument("--tiles", nargs="*", default=[], help="extra BN,BK,WARPS tiles besides the engine's")
    args = ap.parse_args()
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        print("gemv_codegen: unset TRITON_INTERPRET (the interpreter compiles nothing)")
        return 2

    import triton

    from backends.triton_mxfp4 import moe_kernels as K
    from backends.triton_mxfp4.moe import gemv_tiles_for
    from benchmarks.fp4_codegen import compile_one
    from harness.model.spec import get_spec

    spec = get_spec(args.model)
    H, I, E, k = spec.hidden_size, spec.intermediate_size, spec.num_local_experts, spec.num_experts_per_tok
    try:
        extra = [tuple(int(v) for v in t.split(",")) for t in args.tiles]
        if any(len(t) != 3 for t in extra):
            raise ValueError
    except ValueError:
        print(f"gemv_codegen: --tiles takes BN,BK,WARPS triples, got {args.tiles}")
        return 2
    print("| kernel | tiles (BN x BK, warps) | instr/weight | regs | stack | top opcodes in the loop |")
    print("|" + " --- |" * 6)
    sm90 = gemv_tiles_for(9)
    for kernel, gate_up, (n, kk), engine in (("gate_up", True, (2 * I, H), sm90.gate_up),
                                             ("down", False, (H, I), sm90.down)):
        for tiles in [engine] + [K.GemvTiles(bn, bk, w) for bn, bk, w in extra]:
            t = tiles.fit(n, kk)
            types = {"X": "*bf16", "stride_x": "i32", "Logits": "*bf16", "W": "*u8", "S": "*u8", "B": "*fp32",
                     "Out": "*bf16" if gate_up else "*fp32", "alpha": "fp32", "limit": "fp32"}
            const = {"E": E, "EP": triton.next_power_of_2(E), "TOPK": k, "KP": triton.next_power_of_2(k), "K": kk,
                     "N": n, "GATE_UP": gate_up, "BN": t.bn, "BK": t.bk, "SPLIT": t.split}
            c = compile_one(K._gemv_kernel, types, const, 90, t.num_warps, t.num_stages)
            ops = loop_opcodes(on_cubin(c.asm["cubin"], tool("nvdisasm"), "-c"))
            usage = on_cubin(c.asm["cubin"], tool("cuobjdump"), "--dump-resource-usage")
            regs, stack = (re.search(rf"{key}:(\d+)", usage).group(1) for key in ("REG", "STACK"))
            per_thread = t.bn * t.bk / (32 * t.num_warps)
            top = ", ".join(f"{op} {n_ / per_thread:.2f}" for op, n_ in ops.most_common(6))
            print(f"| {kernel} | {t.bn} x {t.bk}, {t.num_warps} | {sum(ops.values()) / per_thread:.2f} | "
                  f"{regs} | {stack} | {top} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
