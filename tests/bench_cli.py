"""Running `gptoss-bench` from tests: a child process, results in a temporary folder, and the
fault backend (tests/fault_backend.py) reachable through a config folder of the test's own."""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

TESTS = Path(__file__).resolve().parent
CACHE = tempfile.mkdtemp(prefix="gptoss-bench-cache-")  # one per test session: synthetic weights, references
atexit.register(shutil.rmtree, CACHE, ignore_errors=True)


def fault_conf(tmp: Path, **backends: dict) -> str:
    """Write conf/backend/<name>.yaml for each FaultBackend variant; the hydra.searchpath override
    that makes them `backend=<name>`."""
    for name, options in backends.items():
        path = tmp / "conf" / "backend" / f"{name}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump({"_target_": "fault_backend.FaultBackend", "name": name, "python": None,
                                        **options}))
    return f"hydra.searchpath=[file://{tmp / 'conf'}]"


# The fault backend's points: no weights on disk, no oracle, no NVML.
FAULT_POINT = ["model=gpt-oss-tiny", "model.synthetic=device", "agreement.enabled=false", "telemetry=off",
               "workload.context_len=16", "workload.new_tokens=4", "workload.repeats=2"]


def bench_command(tmp: Path, *args: str) -> list[str]:
    # Hydra's flags (-m) come first: argparse takes the overrides as one positional run.
    return [sys.executable, "-m", "harness", *args, f"results_dir={tmp / 'results'}", f"reports_dir={tmp / 'reports'}"]


def bench_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(TESTS), env.get("PYTHONPATH")) if p)
    env["GPTOSS_BENCH_CACHE"] = CACHE
    return env


def bench(tmp: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(bench_command(tmp, *args), env=bench_env(), capture_output=True, text=True,
                          timeout=timeout, cwd=tmp)


def run_dirs(tmp: Path) -> list[Path]:
    return sorted(p for p in (tmp / "results").iterdir() if p.is_dir())
