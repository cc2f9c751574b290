"""scripts/tiktoken_from_npm.py: the compact npm ranks become `.tiktoken` lines, and only a
byte-exact o200k_base is written."""
import importlib.util
import io
import json
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "tiktoken_from_npm.py"
spec = importlib.util.spec_from_file_location("tiktoken_from_npm", SCRIPT)
tool = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tool)


def fake_package(path: Path, ranks: str) -> Path:
    data = json.dumps({"pat_str": "", "special_tokens": {}, "bpe_ranks": ranks}).encode()
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo("package/encoders/o200k_base.json")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return path


def test_ranks_are_consecutive_from_each_lines_first(tmp_path, capsys):
    assert tool.tiktoken_bytes("! 0 IQ== Ig==\nab 7 YWI=\n") == b"IQ== 0\nIg== 1\nYWI= 7\n"
    # Not the real encoding: refused with its digest, nothing written.
    assert tool.main([str(fake_package(tmp_path / "t.tgz", "! 0 IQ==\n")), str(tmp_path / "out")]) == 1
    assert "expected 446a9538" in capsys.readouterr().err and not (tmp_path / "out").exists()
    assert tool.main([str(tmp_path / "missing.tgz"), str(tmp_path / "out")]) == 2


@pytest.mark.skipif(shutil.which("npm") is None, reason="npm is not installed")
def test_the_npm_package_rebuilds_o200k_base_exactly(tmp_path):
    done = subprocess.run(["npm", "pack", "tiktoken@1.0.22"], cwd=tmp_path, capture_output=True, text=True)
    if done.returncode:
        pytest.skip(f"npm pack failed (no registry?): {done.stderr.strip()[-200:]}")
    assert tool.main([str(tmp_path / "tiktoken-1.0.22.tgz"), str(tmp_path / "enc")]) == 0
    assert (tmp_path / "enc" / "o200k_base.tiktoken").stat().st_size > 3_000_000
