"""Which MoE path vLLM takes for MXFP4, asked for and observed.

Asked for: our names for the paths of gpt-oss.md section E, mapped onto what the installed
vLLM understands: `--moe-backend` (plus an MXFP8 activation override) where it has that flag,
the VLLM_USE_FLASHINFER_MOE_MXFP4_* / VLLM_MXFP4_USE_MARLIN environment switches before.
Observed: vLLM logs every kernel family it picks as "Using <what> backend"; those lines, in
order, are the `engine_path` column, the evidence of what MXFP4 ran as.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field


@dataclass(frozen=True)
class MoePath:
    moe_backend: str | None = None  # vLLM's --moe-backend
    activation: str | None = None  # quantization_config.moe.activation (mxfp8: native FP4 tensor cores)
    env: dict[str, str] = field(default_factory=dict)  # the switches of versions without --moe-backend

    def engine_kwargs(self) -> dict:
        out = {}
        if self.moe_backend:
            out["moe_backend"] = self.moe_backend
        if self.activation:
            out["quantization_config"] = {"moe": {"activation": self.activation}}
        return out

    def cli_args(self) -> list[str]:
        out = []
        if self.moe_backend:
            out += ["--moe-backend", self.moe_backend]
        if self.activation:
            out += ["--quantization-config", json.dumps({"moe": {"activation": self.activation}})]
        return out


# name -> (with --moe-backend, before it; None: that vLLM has no switch for it)
MOE_PATHS: dict[str, tuple[MoePath, MoePath | None]] = {
    "auto": (MoePath(), MoePath()),
    # Before --moe-backend, triton_kernels was simply the Hopper default where installed.
    "triton": (MoePath("triton"), MoePath()),
    # the same triton_kernels matmuls without the fused routing (vLLM's TRITON_UNFUSED)
    "triton_unfused": (MoePath("triton_unfused"), None),
    "marlin": (MoePath("marlin"), MoePath(env={"VLLM_MXFP4_USE_MARLIN": "1"})),
    # trtllm-gen with bf16 activations (SM100); the old switch picked CUTLASS on SM90.
    "flashinfer_bf16": (MoePath("flashinfer_trtllm"), MoePath(env={"VLLM_USE_FLASHINFER_MOE_MXFP4_BF16": "1"})),
    "flashinfer_cutlass_bf16": (MoePath("flashinfer_cutlass"),
                                MoePath(env={"VLLM_USE_FLASHINFER_MOE_MXFP4_BF16": "1"})),
    "flashinfer_mxfp8": (MoePath("flashinfer_trtllm", "mxfp8"),
                         MoePath(env={"VLLM_USE_FLASHINFER_MOE_MXFP4_MXFP8": "1"})),
    "flashinfer_mxfp8_cutlass": (MoePath("flashinfer_cutlass", "mxfp8"),
                                 MoePath(env={"VLLM_USE_FLASHINFER_MOE_MXFP4_MXFP8_CUTLASS": "1"})),
}


def moe_path(name: str, has_moe_backend_flag: bool) -> MoePath:
    try:
        new, old = MOE_PATHS[name]
    except KeyError:
        raise ValueError(f"vllm: moe_path={name!r}, expected one of {sorted(MOE_PATHS)}") from None
    if not has_moe_backend_flag and old is None:
        raise ValueError(f"vllm: moe_path={name!r} needs a vLLM with --moe-backend (0.1x releases had no switch for it)")
    return new if has_moe_backend_flag else old


def installed_moe_path(name: str) -> MoePath:
    """`name` for the vLLM of this interpreter."""
    from vllm.engine.arg_utils import EngineArgs

    return moe_path(name, "moe_backend" in EngineArgs.__dataclass_fields__)


_USING = re.compile(r"\bUsing (.+?) backend\b")
_WEIGHTS = re.compile(r"Model loading took ([\d.]+) GiB")
_KV = re.compile(r"Available KV cache memory: ([\d.]+) GiB")
_KV_TOKENS = re.compile(r"KV cache size: ([\d,]+) tokens")
# vLLM's kernel JIT monitor (0.26) warns of each Triton compilation inside inference; without
# `jit_monitor_verbose` it names a kernel once, and later compilations of it go unlogged.
_JIT = "Triton kernel JIT compilation during inference"


def engine_path(log: str) -> str | None:
    """The distinct "Using ... backend" choices of a vLLM log, in order, joined by "; "."""
    seen = dict.fromkeys(m.group(1).replace("'", "").strip() for m in _USING.finditer(log))
    return "; ".join(seen) or None


def jit_compiles(log: str) -> int:
    """Triton compilations that vLLM's JIT monitor logged in `log` (a part of its log)."""
    return log.count(_JIT)


def kv_fit(log: str) -> tuple[int | None, float | None]:
    """(tokens of context vLLM's KV cache holds at once, GiB of its weights), as its engine logs
    them at start."""
    found = _KV_TOKENS.findall(log)
    return int(found[-1].replace(",", "")) if found else None, memory(log)["weights_gib"]


def memory(log: str) -> dict[str, float | None]:
    """Weights and KV cache as vLLM reported them (GPU workers log both; the CPU build does not)."""
    w, kv = _WEIGHTS.findall(log), _KV.findall(log)
    return {"weights_gib": float(w[-1]) if w else None, "kv_cache_gib": float(kv[-1]) if kv else None}
