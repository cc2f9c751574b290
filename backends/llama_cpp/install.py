"""Which llama-server runs, and the llama.cpp source its GGUFs are converted with: the build that
scripts/build_llama_server.sh left under build/ (its build.json names the source, the vendored
commit and the flags), or a llama-server given by path together with its source tree."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = "scripts/build_llama_server.sh"


class NotBuilt(ValueError):
    pass


@dataclass(frozen=True)
class Install:
    server: Path  # the llama-server executable
    source: Path  # the llama.cpp tree holding convert_hf_to_gguf.py and gguf-py
    commit: str  # the llama.cpp commit, "unknown" for a server given by path without build.json
    flavor: str  # cpu, cuda-sm90, ... ("" when unknown)
    llama_cpp_python: str = ""  # the sdist the source came from

    @property
    def version(self) -> str:
        sdist = f", llama-cpp-python {self.llama_cpp_python} sdist" if self.llama_cpp_python else ""
        return f"llama.cpp {self.commit} ({self.flavor or 'unknown build'}{sdist})"


def built(device: str) -> list[Path]:
    """The llama-server builds under build/, the best for `device` first: CUDA ones unless the
    point runs on the CPU, then the CPU build."""
    found = sorted(ROOT.glob("build/llama.cpp-*-*/bin/llama-server"), reverse=True)
    cuda = [p for p in found if "-cuda-" in p.parent.parent.name]
    cpu = [p for p in found if p.parent.parent.name.endswith("-cpu")]
    return cpu if device == "cpu" else cuda + cpu


def find(server: str | None, source: str | None, device: str) -> Install:
    """The install for backend.server / backend.source (null: the build under build/)."""
    if server is None:
        candidates = built(device)
        if not candidates:
            raise NotBuilt(f"llama_cpp: no llama-server under {ROOT / 'build'}: run {BUILD_SCRIPT} "
                           f"(or set backend.server to a llama-server executable)")
        path = candidates[0]
    else:
        path = Path(server).expanduser()
        if not path.is_file():
            raise NotBuilt(f"llama_cpp: backend.server={server}: no such file (build one with {BUILD_SCRIPT})")
    info_file = path.resolve().parent.parent / "build.json"
    info = json.loads(info_file.read_text()) if info_file.is_file() else {}
    tree = Path(source).expanduser() if source else (ROOT / info["source"] if "source" in info else None)
    if tree is None or not (tree / "convert_hf_to_gguf.py").is_file():
        where = f"backend.source={source}" if source else f"{info_file} names no source"
        raise NotBuilt(f"llama_cpp: {where}: need the llama.cpp tree of {path} (with convert_hf_to_gguf.py); "
                       f"set backend.source to it")
    return Install(path, tree, info.get("commit", "unknown"), info.get("flavor", ""), info.get("llama_cpp_python", ""))
