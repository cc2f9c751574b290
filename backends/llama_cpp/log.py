"""What llama-server's log says of the engine: the devices it found, where the layers went, the
expert tensors' type, Flash Attention, and the buffers it allocated (weights and KV cache)."""

from __future__ import annotations

import re

_DEVICE = re.compile(r"Device \d+: (.+?), compute capability ([\d.]+)")
_USING = re.compile(r"using device (\S+) \(([^)]+)\)")  # llama_prepare_model_devices (0.3.36's vendored build)
_ARCHS = re.compile(r"CUDA : ARCHS = (\d+)")
_OFFLOADED = re.compile(r"offloaded (\d+)/(\d+) layers to GPU")
_FILE_TYPE = re.compile(r"print_info: file type\s+=\s+(.+)")  # not the converter's "file type = 38"
_MXFP4 = re.compile(r"- type\s+mxfp4:\s+(\d+) tensors")
_FA_RESOLVED = re.compile(r"Flash Attention (enabled|not supported, set to disabled)")  # what -fa auto became
_FA_ASKED = re.compile(r"flash_attn\s+=\s+(\w+)")
_MODEL_BUFFER = re.compile(r"(\S+) model buffer size\s*=\s*([\d.]+) MiB")
_KV_BUFFER = re.compile(r"(\S+) KV buffer size\s*=\s*([\d.]+) MiB")


def engine_path(log: str) -> str | None:
    """One line: the compute device (CUDA device and capability, else CPU), the layers offloaded,
    the GGUF's file type and MXFP4 tensor count, and Flash Attention as it was resolved."""
    parts = []
    if device := _DEVICE.search(log):
        parts.append(f"CUDA {device.group(1)} (cc {device.group(2)})")
    elif using := _USING.search(log):
        archs = _ARCHS.search(log)
        parts.append(f"{using.group(1)} {using.group(2)}" + (f" (built for sm_{archs.group(1)[:-1]})" if archs else ""))
    else:
        parts.append("CPU")
    if off := _OFFLOADED.search(log):
        parts.append(f"{off.group(1)}/{off.group(2)} layers on GPU")
    if ftype := _FILE_TYPE.search(log):
        parts.append(ftype.group(1).strip())
    if mx := _MXFP4.search(log):
        parts.append(f"{mx.group(1)} mxfp4 tensors")
    if fa := _FA_RESOLVED.findall(log):
        parts.append("flash_attn " + ("on" if fa[-1] == "enabled" else "off"))
    elif fa := _FA_ASKED.findall(log):
        parts.append(f"flash_attn {fa[-1]}")
    return "; ".join(parts) if len(parts) > 1 else None


def _gib(matches: list[tuple[str, str]]) -> float | None:
    """MiB buffers in GiB: those on a GPU when there are any (the memory the point holds there), else all."""
    gpu = [float(mib) for where, mib in matches if not where.startswith("CPU")]
    mibs = gpu or [float(mib) for _, mib in matches]
    return round(sum(mibs) / 1024, 4) if mibs else None


def memory(log: str) -> dict[str, float | None]:
    return {"weights_gib": _gib(_MODEL_BUFFER.findall(log)), "kv_cache_gib": _gib(_KV_BUFFER.findall(log))}
