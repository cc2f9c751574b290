"""`gptoss-bench` end to end: the acceptance sweep on torch_ref, a Hydra launcher, and refusal of
an invalid sweep before anything runs."""

import pandas as pd

import harness.results as R
from bench_cli import FAULT_POINT, bench, fault_conf, run_dirs


def test_multirun_makes_one_run_folder_with_every_column(tmp_path):
    # The acceptance sweep on the default backend and model (torch_ref, gpt-oss-tiny without a GPU),
    # with fewer decode steps than the smoke preset's to keep the test short.
    res = bench(tmp_path, "-m", "workload.batch_size=1,2,4", "workload.context_len=32,128",
                "workload.new_tokens=6", "workload.repeats=2", "workload.warmup_tokens=2", "agreement.tokens=4")
    assert res.returncode == 0, res.stderr
    [run] = run_dirs(tmp_path)
    for name in ("config.yaml", "env.json", "points.parquet", "samples.parquet"):
        assert (run / name).is_file(), name
    points = pd.read_parquet(run / "points.parquet")
    assert len(points) == 6 and (points.status == "ok").all(), points[["point_id", "status", "error"]]
    assert set(R.POINT_COLUMNS) <= set(points.columns)
    assert (points.backend == "torch_ref").all() and (points.model == "gpt-oss-tiny").all()
    assert (points.agreement == 1.0).all()  # torch_ref against its own reference: deterministic
    assert points.ttft_ms.gt(0).all() and points.tpot_ms_p50.gt(0).all()
    samples = pd.read_parquet(run / "samples.parquet")
    steps = samples.groupby("point_id").size()
    expected = (points.repeats * (points.new_tokens - 1)).set_axis(points.point_id)
    assert steps.sort_index().equals(expected.sort_index())  # one row per decode step of every repeat
    assert (tmp_path / "reports" / f"{run.name}.html").is_file()
    assert res.stdout.strip().splitlines()[-1] == f"results: {run}   report: {tmp_path / 'reports' / run.name}.html"


def test_submitit_local_launcher_runs_one_job_per_group(tmp_path):
    search = fault_conf(tmp_path, fault={}, other={})
    res = bench(tmp_path, search, *FAULT_POINT, "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=5",
                "backend=fault,other", "workload.batch_size=1,2")
    assert res.returncode == 0, res.stderr
    [run] = run_dirs(tmp_path)
    points = pd.read_parquet(run / "points.parquet")
    assert len(points) == 4 and (points.status == "ok").all()
    assert set(points.group) == {"fault-gpt-oss-tiny-mxfp4", "other-gpt-oss-tiny-mxfp4"}
    assert len(list((run / "logs" / "hydra" / ".submitit").glob("*/*_result.pkl"))) == 2


def test_invalid_sweep_fails_before_any_point(tmp_path):
    search = fault_conf(tmp_path, fault={})
    res = bench(tmp_path, search, *FAULT_POINT, "backend=fault", "workload.batch_size=0,1", "quant=bf16")
    assert res.returncode != 0
    assert "workload.batch_size=0: must be a positive integer" in res.stderr
    assert "quant=bf16: backend fault supports only ['mxfp4']" in res.stderr
    assert not (tmp_path / "results").exists()


def test_arms_compare_engine_set_ups_in_one_run_folder(tmp_path):
    search = fault_conf(tmp_path, fault={"step_ms": 0.2}, other={})
    res = bench(tmp_path, search, *FAULT_POINT, "workload.batch_size=1,2",
                "arms=['backend=other','backend=fault backend.step_ms=1','backend=fault backend.step_ms=8']")
    assert res.returncode == 0, res.stderr
    [run] = run_dirs(tmp_path)
    points = pd.read_parquet(run / "points.parquet").sort_values("point_id")
    assert len(points) == 6 and (points.status == "ok").all()
    assert list(points.setup.drop_duplicates()) == ["step_ms=1", "step_ms=8", ""]
    slow = points[points.setup == "step_ms=8"]
    assert list(slow.point_id) == ["fault-step_ms.8-gpt-oss-tiny-mxfp4-b1-c16-n4", "fault-step_ms.8-gpt-oss-tiny-mxfp4-b2-c16-n4"]
    assert (slow.tpot_ms_p50 > 4).all() and (points[points.setup == "step_ms=1"].tpot_ms_p50 < 4).all()
    assert "fault-step_ms.8-gpt-oss-tiny-mxfp4 [step_ms=8]" in res.stdout  # the terminal's group table
    html = (tmp_path / "reports" / f"{run.name}.html").read_text()
    assert "fault [step_ms=1] mxfp4" in html and "fault [step_ms=8] mxfp4" in html and "other mxfp4" in html
    assert "as fast as the next, fault [step_ms=1] mxfp4" in html  # the findings name set-ups too
