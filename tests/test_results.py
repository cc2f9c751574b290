"""The results contract: typed columns with nulls (never 0) for what was not measured, atomic
files, load() over runs and globs, the environment fingerprint, the roofline columns."""

import json
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

import harness.results as R
from harness.analysis.hardware import gpu_peak
from harness.analysis.roofline import roofline
from harness.model.spec import get_spec
from harness.runner.run_folder import RunFolder


def _run(results, run_id, rows):
    run = RunFolder.create(results, run_id)
    for row in rows:
        samples = pd.DataFrame({"point_id": row["point_id"], "repeat": [0, 0], "step": [1, 2], "tpot_ms": [1.0, 2.0]})
        run.add_point(row, samples if row["status"] == "ok" else None)
    return run


def test_tables_have_every_column_typed_and_null_when_unmeasured(tmp_path):
    run = _run(tmp_path, "r1", [{"point_id": "a", "status": "ok", "ttft_ms": 1.5, "batch_size": 2},
                                {"point_id": "b", "status": "oom", "error": "CUDA out of memory"}])
    table = pq.read_table(run.path / "points.parquet")
    for name, dtype in R.POINT_COLUMNS.items():
        assert table.schema.field(name).type == dtype
    df = table.to_pandas().set_index("point_id")
    assert df.ttft_ms["a"] == 1.5 and pd.isna(df.ttft_ms["b"])
    assert pd.isna(df.power_w_mean).all() and pd.isna(df.batch_size["b"])
    samples = pd.read_parquet(run.path / "samples.parquet")
    assert list(samples.columns) == list(R.SAMPLE_COLUMNS) and set(samples.point_id) == {"a"}


def test_a_rerun_point_replaces_its_rows(tmp_path):
    run = _run(tmp_path, "r1", [{"point_id": "a", "status": "error", "error": "boom"}])
    run.add_point({"point_id": "a", "status": "ok", "ttft_ms": 2.0},
                  pd.DataFrame({"point_id": ["a"], "repeat": [0], "step": [1], "tpot_ms": [3.0]}))
    df = pd.read_parquet(run.path / "points.parquet")
    assert len(df) == 1 and df.status[0] == "ok"
    assert run.ok_point_ids() == {"a"}
    assert list(tmp_path.glob("r1/.*tmp")) == []  # no temporary file left behind


def test_load_concatenates_runs_by_path_or_glob(tmp_path):
    _run(tmp_path, "20250101T000000Z", [{"point_id": "a", "run_id": "20250101T000000Z", "status": "ok"}])
    _run(tmp_path, "20250102T000000Z", [{"point_id": "a", "run_id": "20250102T000000Z", "status": "ok"},
                                        {"point_id": "b", "run_id": "20250102T000000Z", "status": "oom"}])
    both = R.load(tmp_path)  # a folder of runs
    assert len(both) == 3 and set(both.run_id) == {"20250101T000000Z", "20250102T000000Z"}
    assert len(R.load([tmp_path / "20250101T000000Z", tmp_path / "20250102T000000Z" / "points.parquet"])) == 3
    assert len(R.load(str(tmp_path / "2025010[2]*"))) == 2
    assert len(R.load(tmp_path, "samples")) == 4
    with pytest.raises(FileNotFoundError, match="no run folder"):
        R.load(tmp_path / "nothing*")
    with pytest.raises(ValueError, match="table='nope'"):
        R.load(tmp_path, "nope")


def test_env_fingerprint_is_json_and_complete(tmp_path):
    env = R.env_fingerprint()
    for key in ("gpus", "gpu_name", "cpu_model", "host", "python", "packages", "git_commit", "git_dirty", "command"):
        assert key in env
    assert env["packages"]["torch"]
    R.write_env(tmp_path / "env.json", env)
    assert json.loads((tmp_path / "env.json").read_text())["cpu_model"] == env["cpu_model"]


def test_roofline_against_the_datasheet():
    spec = get_spec("gpt-oss-20b")
    h100 = gpu_peak("NVIDIA H100 80GB HBM3")
    assert h100.name == "H100 SXM" and gpu_peak("NVIDIA GH200 480GB") is None
    cols = roofline(spec, "mxfp4", 1, 1024, 2, tpot_ms=5.0, ttft_ms=None, gpu_name="NVIDIA H100 80GB HBM3")
    nbytes = spec.decode_step_bytes(1, 1024, "mxfp4")  # mean context of 1024 and 1025
    assert cols["decode_bytes_per_step"] == nbytes
    assert cols["mbu_datasheet"] == pytest.approx(nbytes / 5e-3 / h100.mem_bw_bytes_s)
    assert cols["mbu"] is None  # no measured ceilings without a calibration
    assert cols["bound"] == "memory" and cols["prefill_mfu_datasheet"] is None
    big = roofline(spec, "mxfp4", 4096, 128, 2, tpot_ms=5.0, ttft_ms=10.0, gpu_name="NVIDIA H100 80GB HBM3")
    assert big["bound"] == "compute" and big["prefill_mfu_datasheet"] > 0
    cpu = roofline(spec, "mxfp4", 1, 1024, 2, tpot_ms=5.0, ttft_ms=1.0, gpu_name=None)
    assert cpu["mbu"] is None and cpu["bound"] is None and cpu["decode_bytes_per_step"] == nbytes


def test_every_column_is_documented():
    from backends.openai_endpoint.metrics import SERVING_COLUMNS
    doc = (Path(__file__).resolve().parents[1] / "docs" / "results.md").read_text()
    missing = [c for c in [*R.POINT_COLUMNS, *SERVING_COLUMNS] if f" {c}," not in doc and f" {c} |" not in doc and f" {c} (" not in doc]
    assert not missing, f"docs/results.md does not list {missing}"


def test_backend_columns_never_reuse_a_harness_columns_name():
    """One meaning per column: every backend's own columns (Backend.columns_schema: serving
    percentiles over requests, vLLM's timestamps) are named apart from the harness's (the serving
    ttft_ms_p50 is over requests, the repeats' median is ttft_ms_repeat_p50)."""
    import importlib

    import yaml

    conf = Path(__file__).resolve().parents[1] / "harness" / "conf" / "backend"
    targets = {yaml.safe_load(f.read_text()).get("_target_") for f in conf.glob("*.yaml")} - {None}  # auto picks one
    for target in sorted(targets):
        module, name = target.rsplit(".", 1)
        own = getattr(importlib.import_module(module), name).columns_schema
        assert not set(own) & set(R.POINT_COLUMNS), target
    assert len(targets) >= 9
