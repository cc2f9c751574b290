"""scripts/offline_bundle.py end to end on CPU: a bundle of python-dateutil for a cp312 manylinux
host whose freeze pins six (dateutil's one dependency), cut into many small chunks, installed with
its install.sh. Needs PyPI (or pip's configured index); skips, saying so, only when that cannot be
reached. About 5 s."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "offline_bundle.py"
PACKAGE = "python-dateutil==2.9.0.post0"  # pure Python, 229 kB wheel; depends on six
HOST_FREEZE = "six==1.17.0\ntorch==2.11.0+cu130\n"  # the host's; six must not be bundled
TARGET = ["--python", "3.12", "--platform", "manylinux_2_28_x86_64"]


def bundle(*args, **kwargs):
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=120, **kwargs)


@pytest.fixture(scope="module")
def index_reachable(tmp_path_factory):
    probe = subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                            "-d", str(tmp_path_factory.mktemp("probe")), PACKAGE],
                           capture_output=True, text=True, timeout=60)
    if probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or ["no output"])[-1]
        pytest.skip(f"package index not reachable: pip download {PACKAGE} failed: {last}")


@pytest.fixture(scope="module")
def built(index_reachable, tmp_path_factory):
    work = tmp_path_factory.mktemp("bundle")
    (work / "freeze.txt").write_text(HOST_FREEZE)
    out = work / "out"
    done = bundle(*TARGET, "--constraints", str(work / "freeze.txt"), "--chunk-mb", "0.02",
                  "--exclude", "dateutil/zoneinfo/*.tar.gz", "--out", str(out), PACKAGE)
    assert done.returncode == 0, done.stderr
    return out


def install(out, target):
    return subprocess.run(["bash", str(out / "install.sh"), str(target)], capture_output=True, text=True, timeout=60)


def test_bundle_installs_and_imports(built, tmp_path):
    parts = sorted(built.glob("bundle.tar.xz.part*"))
    assert len(parts) >= 2
    assert all(p.stat().st_size <= int(0.02 * 2**20) for p in parts)
    verify = subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=built, capture_output=True, text=True)
    assert verify.returncode == 0, verify.stdout + verify.stderr

    target = tmp_path / "site"
    done = install(built, target)
    assert done.returncode == 0, done.stderr
    exports = dict(line.removeprefix("export ").split("=", 1) for line in done.stdout.splitlines()
                   if line.startswith("export PYTHONPATH="))
    assert exports["PYTHONPATH"] == f"{target}:$PYTHONPATH"
    assert "HF_HUB_OFFLINE=1" in done.stdout and "VLLM_NO_USAGE_STATS=1" in done.stdout
    env = dict(os.environ, PYTHONPATH=exports["PYTHONPATH"].replace("$PYTHONPATH", os.environ.get("PYTHONPATH", "")))
    where = subprocess.run([sys.executable, "-c", "import dateutil; print(dateutil.__file__)"],
                           env=env, capture_output=True, text=True, cwd=tmp_path)
    assert where.returncode == 0, where.stderr
    assert Path(where.stdout.strip()).is_relative_to(target)

    # The host's six stays the host's; the excluded file is gone; no scripts with this machine's shebang.
    assert not list(target.glob("six*")) and not (target / "six.py").exists()
    assert (target / "dateutil" / "parser").is_dir()
    assert not list((target / "dateutil" / "zoneinfo").glob("*.tar.gz"))
    assert not (target / "bin").exists()
    contents = (built / "CONTENTS.txt").read_text()
    assert "six==1.17.0  (on the host)" in contents and "\npython-dateutil==2.9.0.post0\n" in contents

    # This machine is not the host of HOST_FREEZE.txt (its torch is no 2.11.0+cu130): said, not fatal.
    assert (built / "HOST_FREEZE.txt").read_text() == HOST_FREEZE
    assert "install.sh: warning: the host differs from HOST_FREEZE.txt" in done.stderr
    assert "torch 2.11.0+cu130 " in done.stderr and "rebuild the bundle from this host's pip freeze" in done.stderr


def test_a_host_that_has_the_freeze_is_said_to(built, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(built, copy)
    freeze = subprocess.run([sys.executable, "-m", "pip", "freeze"], capture_output=True, text=True, check=True).stdout
    (copy / "HOST_FREEZE.txt").write_text(freeze)
    done = subprocess.run(["bash", str(copy / "install.sh"), str(tmp_path / "site")], capture_output=True, text=True,
                          timeout=60, env=dict(os.environ, PYTHON=sys.executable))
    assert done.returncode == 0, done.stderr
    assert "install.sh: the host has the " in done.stderr and "warning" not in done.stderr


def test_corrupted_chunk_is_named(built, tmp_path):
    copy = tmp_path / "copy"
    copy.mkdir()
    for f in built.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    (copy / "install.sh").chmod(0o755)
    chunk = copy / "bundle.tar.xz.part001"
    data = bytearray(chunk.read_bytes())
    data[100] ^= 0xFF
    chunk.write_bytes(bytes(data))
    done = install(copy, tmp_path / "site")
    assert done.returncode != 0
    assert done.stderr.strip().splitlines()[-1].startswith("install.sh: chunk bundle.tar.xz.part001 does not match")
    assert not (tmp_path / "site").exists()


def test_same_input_same_bundle(built, tmp_path):
    (tmp_path / "freeze.txt").write_text(HOST_FREEZE)
    done = bundle(*TARGET, "--constraints", str(tmp_path / "freeze.txt"), "--chunk-mb", "0.02",
                  "--exclude", "dateutil/zoneinfo/*.tar.gz", "--out", str(tmp_path / "out"), PACKAGE)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "out" / "SHA256SUMS").read_text() == (built / "SHA256SUMS").read_text()


def test_pip_failure_is_one_line(index_reachable, tmp_path):
    (tmp_path / "freeze.txt").write_text(HOST_FREEZE)
    done = bundle(*TARGET, "--constraints", str(tmp_path / "freeze.txt"), "--out", str(tmp_path / "out"), "six==1.16.0")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "offline_bundle: pip resolve failed: Cannot install six==1.16.0 because these package versions have "
        "conflicting dependencies: The user requested six==1.16.0; The user requested (constraint) six==1.17.0"]


@pytest.mark.parametrize("args, message", [
    (["--constraints", "no-such-freeze.txt"], "offline_bundle: --constraints: no such file: no-such-freeze.txt"),
    (["--constraints", "freeze.txt", "--chunk-mb", "0"], "offline_bundle: --chunk-mb must be > 0, got 0.0"),
    (["--constraints", "freeze.txt", "--chunk-mb", "-1"], "offline_bundle: --chunk-mb must be > 0, got -1.0"),
])
def test_bad_input_is_refused(tmp_path, args, message):
    (tmp_path / "freeze.txt").write_text(HOST_FREEZE)
    done = bundle(*TARGET, *args, "--out", "out", PACKAGE, cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [message]
    assert not (tmp_path / "out").exists()


def test_a_glibc_tag_takes_every_older_one():
    """pip's --platform accepts only the tags it is given, while the host itself takes every older
    glibc: blake3 (a vLLM dependency) ships manylinux2014 wheels only."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("offline_bundle", SCRIPT)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    tags = tool.platform_tags(["manylinux_2_39_x86_64"])
    assert tags[0] == "manylinux_2_39_x86_64" and tags[-1] == "manylinux1_x86_64"
    assert {"manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64"} <= set(tags)
    assert "manylinux_2_40_x86_64" not in tags and len(tags) == len(set(tags))
    assert tool.platform_tags(["linux_x86_64"]) == ["linux_x86_64"]
