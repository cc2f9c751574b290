"""The checkpoint directory an engine loads for a point: the one given, or the cached synthetic
one, and for quant=bf16 of an MXFP4 checkpoint its bf16 layout. vLLM and TensorRT-LLM load a
directory and cannot dequantise MXFP4 on their own (vLLM's CPU MXFP4 kernels also need AMX), so the
bf16 layout is written once, experts dequantised exactly (E2M1 x 2^k is a bf16 value) and stored
as transformers' dequantisation lays them out, [E, in, out]."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

from harness.model.load_request import LoadRequest
from harness.model import mxfp4
from harness.model.checkpoint import Checkpoint, write_checkpoint
from harness.model.spec import weight_format
from harness.model.synthetic import synthetic_checkpoint

EXPERTS = ("gate_up_proj", "down_proj")


def engine_checkpoint(request: LoadRequest) -> Path:
    path = Path(request.checkpoint) if request.checkpoint is not None else \
        synthetic_checkpoint(request.spec, request.seed, request.router_skew)
    layout = Checkpoint(path).quant
    if layout == weight_format(request.quant):
        return path
    if weight_format(request.quant) == "mxfp4":
        raise ValueError(f"quant=mxfp4 needs an MXFP4 checkpoint; {path} holds bf16 experts")
    return bf16_checkpoint(path)


def version_key(src: Path, *more: str) -> str:
    """A short key of a checkpoint folder's version (its path and the sizes and times of its
    safetensors) and of anything else a derived file depends on: what caches of it are named by."""
    stamp = "".join(f"{f.name}:{f.stat().st_size}:{f.stat().st_mtime_ns};" for f in sorted(src.glob("*.safetensors")))
    return hashlib.sha1("|".join([str(src), stamp, *more]).encode()).hexdigest()[:12]


def bf16_checkpoint(src: Path, cache_dir: Path | None = None) -> Path:
    """The bf16 layout of the MXFP4 checkpoint `src`, written beside it (or in `cache_dir`) once per
    version of its files."""
    src = Path(src).resolve()
    out = Path(cache_dir or src.parent) / f"{src.name}-bf16-{version_key(src)}"
    if (out / "config.json").is_file():
        return out
    ck = Checkpoint(src)
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)

    def tensors():
        for name in ck.spec.tensors("bf16"):
            if name.rpartition(".")[2] in EXPERTS:
                w = mxfp4.dequantize(ck.get(f"{name}_blocks"), ck.get(f"{name}_scales"))  # [E, out, in]
                yield name, w.transpose(1, 2).contiguous()
            else:
                yield name, ck.get(name)

    write_checkpoint(tmp, ck.spec, tensors(), quant="bf16")
    tmp.rename(out)
    return out
