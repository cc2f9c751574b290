"""Which path GPT-OSS's MXFP4 experts take, per engine and GPU architecture.

Three kinds of fact, kept apart because they deserve different trust:
  documented  DOCUMENTED: each engine's path on sm_80, sm_89, sm_90, sm_100, sm_120, with the engine
              version and the source (repo:path@commit or URL) it was read from; not measured here.
  asked       ask_vllm(): the installed vLLM's own priority list and device checks
              (fused_moe/oracle/mxfp4.py), run in its interpreter (backend.python).
  observed    classify_kernels(): kernel names of a profiled window mapped to the path they belong
              to (KERNEL_PATHS), the evidence that a path really ran.

"Native" means the experts' product runs on the block-scaled FP4 MMA of FP4 tensor cores (compute
capability 10.x / 12.x: tcgen05.mma / mma.sync kind::mxf8f6f4 or mxf4) with both operands in
MX formats. Any path with bf16 activations (W4A16) upcasts the e2m1 weights to bf16 before a bf16
MMA, on every GPU: what MXFP4 saves there is memory and bandwidth, not math.

harness/ never imports backends/: our engine's batch ranges come from the engine class itself
(`moe_dispatch`, through the backend yaml's _target_, in harness.explain_cli); this module only
knows our kernels by name.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from dataclasses import dataclass

ARCHS = ("sm_80", "sm_89", "sm_90", "sm_100", "sm_120")
ENGINES = ("ours", "vLLM", "TensorRT-LLM", "SGLang", "llama.cpp")
GPUS = {"sm_80": "A100, A10, RTX 30xx (8.0/8.6)", "sm_89": "L4, L40S, RTX 40xx", "sm_90": "H100, H200, GH200",
        "sm_100": "B200, GB200, B300", "sm_120": "RTX PRO 6000 Blackwell, RTX 50xx"}


@dataclass(frozen=True)
class EnginePath:
    engine: str
    arch: str
    short: str  # the path in a few words (the terminal's grid)
    path: str  # what the MXFP4 experts run as, in words
    native_fp4: bool  # the default path multiplies on FP4 tensor cores (block-scaled MMA)
    options: str  # other paths and the switch that selects each ("" when none)
    version: str
    source: str
    basis: str = "documented"  # documented | asked | observed


def arch_of(capability: str | tuple[int, int] | None) -> str | None:
    """The table's row for a compute capability: '9.0' -> 'sm_90'; 8.6/8.7 share Ampere's sm_80
    row, 10.x and 12.x their family's; None for what the table does not cover."""
    if capability is None:
        return None
    major, minor = (int(x) for x in (capability.split(".") if isinstance(capability, str) else capability))
    if major == 8:
        return "sm_89" if minor >= 9 else "sm_80"
    return {9: "sm_90", 10: "sm_100", 12: "sm_120"}.get(major)


# ---- documented ---------------------------------------------------------------------------------
VLLM_VERSION = "main@001eda31 (0.26.0 took TRITON on an H200 here, offline-engines.md)"
VLLM_ORACLE = "vllm-project/vllm:vllm/model_executor/layers/fused_moe/oracle/mxfp4.py@001eda31e3d0"
VLLM_GATES = (VLLM_ORACLE + "; priority FLASHINFER_TRTLLM_MXFP4_BF16 > CK > TRITON > FLASHINFER_CUTLASS_MXFP4_BF16 "
              "> TRITON_UNFUSED > MARLIN; triton_kernels gated to 9.0 <= cc < 11.0 "
              "(fused_moe/gpt_oss_triton_kernels_moe.py), TRTLLM-gen to family 100")
TRTLLM_README = "NVIDIA/TensorRT-LLM:examples/models/core/gpt_oss/README.md (MoE Support Matrix)"
TRTLLM_VERSION = "1.x (README as published)"
SGLANG_SOURCE = "shared/reference/anchors.md (public release notes, late 2026; not re-checked against code)"
SGLANG_VERSION = "0.5.x"
LLAMA_CPP_COMMON = ("https://github.com/ggml-org/llama.cpp/blob/master/ggml/src/ggml-cuda/common.cuh "
                    "(GGML_CUDA_CC_BLACKWELL 1200; BLACKWELL_MMA_AVAILABLE for 1200 <= cc < 1300)")
LLAMA_CPP_MMQ = "https://github.com/ggml-org/llama.cpp/blob/master/ggml/src/ggml-cuda/mmq.cuh, vecdotq.cuh (MXFP4)"
LLAMA_CPP_VERSION = "master, late 2026 (llama-cpp-python 0.3.36 vendors it)"
OURS_SOURCE = "backends/triton_mxfp4/moe.py, moe_kernels.py (this repository)"
OURS_VERSION = "triton_mxfp4, Triton 3.6"

MARLIN = "Marlin W4A16: e2m1 weights dequantised to bf16 in registers, bf16 MMA (weights padded: hidden 256, intermediate 128)"
TRITON_OGS = "TRITON: triton_kernels matmul_ogs, MXFP4 weights x bf16 activations (W4A16; e2m1 upcast in-kernel, bf16 MMA)"
LLAMA_INT8 = ("CUDA MXFP4: e2m1 codes mapped to int8 by table, activations quantised to q8_1; int8 MMA tiles "
              "(mul_mat_q) for larger batches, dp4a GEMV (mul_mat_vec_q) for small ones")
OURS_MXFP4 = ("small batches: CUDA-core GEMV (_gemv_kernel), e2m1 moved into fp16 pairs by bit operations and summed per 32-group by packed HFMA2; larger "
              "batches and prefill: grouped GEMMs (_gate_up_kernel/_down_kernel) with tl.dot_scaled bf16 x e2m1, "
              "which Triton lowers as an upcast to bf16 and a bf16 MMA")
OURS_MXFP8 = "quant=mxfp4_mxfp8 (MXFP8 activations x MXFP4 experts in the grouped GEMMs): "


def _row(engine, arch, short, path, native, options, version, source) -> EnginePath:
    return EnginePath(engine, arch, short, path, native, options, version, source)


def _ours(arch: str) -> EnginePath:
    native = arch in ("sm_100", "sm_120")
    mxfp8 = OURS_MXFP8 + ("native block-scaled MMA (e4m3 x e2m1)" if native else
                          "emulated: Triton upcasts both operands to bf16 (no FP4 tensor cores)")
    short = "GEMV / dot_scaled->bf16 MMA" + ("; mxfp4_mxfp8 native" if native else "")
    return _row("ours", arch, short, OURS_MXFP4, False, mxfp8, OURS_VERSION, OURS_SOURCE)


DOCUMENTED: list[EnginePath] = [
    *(_ours(a) for a in ARCHS),
    _row("vLLM", "sm_80", "Marlin W4A16", MARLIN, False, "none for MXFP4 (triton_kernels needs cc >= 9.0)", VLLM_VERSION, VLLM_GATES),
    _row("vLLM", "sm_89", "Marlin W4A16", MARLIN, False, "none for MXFP4 (triton_kernels needs cc >= 9.0)", VLLM_VERSION, VLLM_GATES),
    _row("vLLM", "sm_90", "TRITON matmul_ogs W4A16", TRITON_OGS, False,
         "FlashInfer CUTLASS MXFP4 x bf16 (--moe-backend flashinfer_cutlass, or VLLM_USE_FLASHINFER_MOE_MXFP4_BF16=1); "
         "Marlin (--moe-backend marlin, or VLLM_MXFP4_USE_MARLIN=1)", VLLM_VERSION, VLLM_GATES),
    _row("vLLM", "sm_100", "TRTLLM-gen MXFP4 x bf16", "FlashInfer TRTLLM-gen MXFP4 x bf16 (weights upcast to bf16 in the kernel)", False,
         "TRTLLM-gen MXFP4 x MXFP8, native FP4 MMA (--moe-backend flashinfer_trtllm_afp8, or "
         "VLLM_USE_FLASHINFER_MOE_MXFP4_MXFP8=1); TRITON matmul_ogs (--moe-backend triton)", VLLM_VERSION, VLLM_GATES),
    _row("vLLM", "sm_120", "Marlin W4A16", MARLIN, False,
         "FlashInfer CUTLASS MXFP4 x MXFP8, native FP4 MMA (--moe-backend flashinfer_cutlass_afp8, or "
         "VLLM_USE_FLASHINFER_MOE_MXFP4_MXFP8_CUTLASS=1); triton_kernels is gated out (cc >= 11.0), TRTLLM-gen "
         "needs family 100", VLLM_VERSION, VLLM_GATES),
    _row("TensorRT-LLM", "sm_80", "unsupported", "not supported: the gpt_oss MoE support matrix lists Hopper and Blackwell only",
         False, "", TRTLLM_VERSION, TRTLLM_README),
    _row("TensorRT-LLM", "sm_89", "unsupported", "not supported: the gpt_oss MoE support matrix lists Hopper and Blackwell only",
         False, "", TRTLLM_VERSION, TRTLLM_README),
    _row("TensorRT-LLM", "sm_90", "TRITON W4A16", "TRITON moe_backend: MXFP4 weights x bf16 activations (W4A16)", False,
         "CUTLASS moe_backend (bf16 x MXFP4)", TRTLLM_VERSION, TRTLLM_README),
    _row("TensorRT-LLM", "sm_100", "TRTLLM/CUTLASS MXFP8 x MXFP4 (native)", "TRTLLM (latency) or CUTLASS (throughput) moe_backend: MXFP8 activations x MXFP4 "
         "weights, native FP4 MMA", True, "", TRTLLM_VERSION, TRTLLM_README),
    _row("TensorRT-LLM", "sm_120", "CUTLASS MXFP8 x MXFP4 (native)", "CUTLASS moe_backend: MXFP8 x MXFP4 (128^3 tiles), native FP4 MMA", True, "",
         TRTLLM_VERSION, TRTLLM_README + "; sm_120 tiles: " + SGLANG_SOURCE),
    _row("SGLang", "sm_80", "not documented", "not documented for MXFP4", False, "", SGLANG_VERSION, SGLANG_SOURCE),
    _row("SGLang", "sm_89", "not documented", "not documented for MXFP4", False, "", SGLANG_VERSION, SGLANG_SOURCE),
    _row("SGLang", "sm_90", "W4A16", "W4A16: MXFP4 weights x bf16 activations", False, "W4A8 opt-in (2026-08)",
         SGLANG_VERSION, SGLANG_SOURCE),
    _row("SGLang", "sm_100", "FlashInfer MXFP4", "FlashInfer MXFP4 MoE (TRTLLM-gen)", False, "", SGLANG_VERSION, SGLANG_SOURCE),
    _row("SGLang", "sm_120", "FlashInfer CUTLASS MXFP4", "FlashInfer CUTLASS MXFP4 (default since 2026-07)", False, "", SGLANG_VERSION,
         SGLANG_SOURCE),
    _row("llama.cpp", "sm_80", "int8 MMA / dp4a", LLAMA_INT8, False, "", LLAMA_CPP_VERSION, LLAMA_CPP_MMQ),
    _row("llama.cpp", "sm_89", "int8 MMA / dp4a", LLAMA_INT8, False, "", LLAMA_CPP_VERSION, LLAMA_CPP_MMQ),
    _row("llama.cpp", "sm_90", "int8 MMA / dp4a", LLAMA_INT8, False, "", LLAMA_CPP_VERSION, LLAMA_CPP_MMQ),
    _row("llama.cpp", "sm_100", "int8 MMA / dp4a", LLAMA_INT8 + " (its Blackwell FP4 MMA is compiled for cc 12.x only)", False, "",
         LLAMA_CPP_VERSION, LLAMA_CPP_COMMON),
    _row("llama.cpp", "sm_120", "FP4 MMA (native) / dp4a", "CUDA MXFP4 with native block-scaled FP4 MMA (m16n8k64, activations requantised to "
         "MXFP4) in mul_mat_q; dp4a GEMV for small batches", True, "", LLAMA_CPP_VERSION,
         LLAMA_CPP_COMMON + "; " + LLAMA_CPP_MMQ),
]


def documented(engine: str, arch: str | None) -> EnginePath | None:
    return next((p for p in DOCUMENTED if p.engine == engine and p.arch == arch), None)


# ---- observed: kernel names -----------------------------------------------------------------------
# (pattern on a profiled kernel's name, engine, the path it belongs to). First match wins.
KERNEL_PATHS: list[tuple[str, str, str]] = [
    (r"^_gemv_kernel$", "ours", "CUDA-core GEMV, e2m1 decoded in registers (no tensor cores)"),
    (r"^_(gate_up|down)_kernel$", "ours", "grouped GEMM through tl.dot_scaled (bf16 x e2m1)"),
    (r"^_combine_kernel$", "ours", "combine of the experts' rows"),
    (r"grouped_mm|GroupedGemm|grouped_gemm", "ours", "bf16 grouped GEMM (dequantised experts, quant=bf16)"),
    (r"_matmul_ogs|matmul_ogs", "vLLM", "TRITON: triton_kernels matmul_ogs (W4A16)"),
    (r"[Mm]arlin", "vLLM", "Marlin W4A16"),
    (r"bmm_.*E2m1|E2m1.*bmm|trtllm.*(fp4|Fp4|E2m1)|fused_moe.*[Tt]rtllm", "vLLM",
     "FlashInfer TRTLLM-gen MXFP4"),
    (r"cutlass.*([Ff]p4|mxf4|Mxf|e2m1)", "vLLM", "FlashInfer CUTLASS MXFP4"),
    (r"mul_mat_vec_q<\(ggml_type\)39", "llama.cpp", "CUDA MXFP4 dp4a GEMV (mul_mat_vec_q)"),
    (r"mul_mat_q<\(ggml_type\)39", "llama.cpp", "CUDA MXFP4 MMA tiles (mul_mat_q)"),
]


def kernel_path(kernel: str) -> tuple[str, str] | None:
    """(engine, path) of one kernel name, None for kernels that are not an MXFP4 path's."""
    for pattern, engine, path in KERNEL_PATHS:
        if re.search(pattern, kernel):
            return engine, path
    return None


def classify_kernels(kernels) -> list[tuple[str, str, str]]:
    """(kernel, engine, path) for the kernels of a profiled window that belong to an MXFP4 path."""
    out = []
    for k in dict.fromkeys(kernels):
        hit = kernel_path(k)
        if hit is not None:
            out.append((k, *hit))
    return out


# ---- asked: the installed vLLM --------------------------------------------------------------------
# Run in vLLM's own interpreter: its priority list and, per backend, whether any of its kernel
# classes accepts this device. Quant-scheme checks are the same for every bf16-activation backend,
# so the first one that accepts the device is the one `select_mxfp4_moe_backend` picks.
VLLM_PROBE = r"""
import json, torch, vllm
out = {"version": vllm.__version__, "capability": None, "priority": []}
if torch.cuda.is_available():
    out["capability"] = "%d.%d" % torch.cuda.get_device_capability()
    from vllm.model_executor.layers.fused_moe.oracle import mxfp4 as oracle
    for backend in oracle._get_priority_backends():
        try:
            classes = oracle.backend_to_kernel_cls(backend)
        except Exception as e:
            out["priority"].append([backend.value, None, "%s: %s" % (type(e).__name__, str(e)[:120])])
            continue
        checks = [c._supports_current_device() for c in classes if hasattr(c, "_supports_current_device")]
        out["priority"].append([backend.value, any(checks) if checks else None, None])
print("VLLM_PROBE " + json.dumps(out))
"""


@dataclass(frozen=True)
class VllmAnswer:
    version: str | None
    capability: str | None
    backend: str | None  # the first backend of its priority list that accepts this device
    priority: list  # [backend, accepts this device (None: unknown), why it could not be asked]
    error: str | None  # why vLLM could not be asked (not installed, no GPU, an older layout)


def ask_vllm(python: str, timeout_s: float = 120) -> VllmAnswer:
    """Ask the vLLM installed in `python` which MXFP4 MoE backend it would pick on this GPU."""
    try:
        proc = subprocess.run([python, "-c", VLLM_PROBE], capture_output=True, text=True, timeout=timeout_s,
                              env={**os.environ, "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1",
                                   "HF_HUB_OFFLINE": "1"})
    except (OSError, subprocess.TimeoutExpired) as e:
        return VllmAnswer(None, None, None, [], f"{python}: {type(e).__name__}: {e}")
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("VLLM_PROBE ")), None)
    if line is None:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return VllmAnswer(None, None, None, [], f"vLLM could not be asked in {python}: {last[:300]}")
    d = json.loads(line.removeprefix("VLLM_PROBE "))
    picked = next((b for b, ok, _ in d["priority"] if ok), None)
    error = None if d["capability"] else "no CUDA device in vLLM's interpreter"
    return VllmAnswer(d["version"], d["capability"], picked, d["priority"], error)

