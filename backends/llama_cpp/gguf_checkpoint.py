"""The GGUF file llama-server loads for a point: the engine checkpoint (harness.model.bf16_checkpoint:
the MXFP4 checkpoint, or its bf16 twin for quant=bf16) converted once by llama.cpp's own converter
and cached beside it, keyed like the bf16 twin (its path and the sizes and times of its safetensors)
and by the llama.cpp commit that converted it.

A checkpoint without a tokenizer (the synthetic ones) is converted from a staging folder of links
to its files plus the tokenizer of backends.llama_cpp.tokenizer; the checkpoint itself is not touched.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from harness.model.load_request import LoadRequest
from harness.model.bf16_checkpoint import engine_checkpoint, version_key
from backends.llama_cpp.install import ROOT, Install
from backends.llama_cpp.tokenizer import write_tokenizer


def gguf_checkpoint(request: LoadRequest, install: Install) -> Path:
    src = engine_checkpoint(request).resolve()
    out = src.parent / f"{src.name}-gguf-{version_key(src, install.commit)}.gguf"
    if out.is_file():
        return out
    return convert(src, out, install, request)


def convert(src: Path, out: Path, install: Install, request: LoadRequest) -> Path:
    stage = out.with_name(out.name + ".stage")
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir()
    try:
        for f in src.iterdir():
            (stage / f.name).symlink_to(f)
        if not (src / "tokenizer.json").is_file():
            write_tokenizer(request.spec, stage)
        proc = subprocess.run([sys.executable, "-m", "backends.llama_cpp.convert", str(install.source), str(stage),
                               str(partial)], capture_output=True, text=True, cwd=ROOT)
        sys.stderr.write(proc.stdout + proc.stderr)  # the converter's log goes to the worker's
        if proc.returncode != 0:
            last = [line for line in proc.stderr.strip().splitlines() if line.strip()][-1:] or ["(no output)"]
            raise RuntimeError(f"llama.cpp's converter failed on {src}: {last[0]}")
        partial.rename(out)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
        partial.unlink(missing_ok=True)
    return out
