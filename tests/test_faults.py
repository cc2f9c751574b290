"""A point can fail; a sweep cannot: every fault becomes its point's status, the points after it
run on a fresh or recovered worker, and a sweep killed mid-way leaves valid files that resume
completes."""

import os
import signal
import subprocess
import time

import pandas as pd
import pyarrow.parquet as pq

from bench_cli import FAULT_POINT, bench, bench_command, bench_env, fault_conf, run_dirs
from harness.results import read_parquet


def test_every_fault_is_a_status_and_the_sweep_goes_on(tmp_path):
    search = fault_conf(tmp_path, fault={"faults": {"oom": 2, "kill": 3, "big": 4, "hang": 5, "error": 6}},
                        huge={"does_not_fit": True})
    res = bench(tmp_path, search, *FAULT_POINT, "backend=fault,huge", "workload.batch_size=1,2,3,4,5,6,7",
                "workload.timeout_s=5")
    # A nightly job must see failed points: exit 1, one line saying how many and how to opt out.
    assert res.returncode == 1, res.stderr
    assert res.stderr.strip().splitlines()[-1] == ("gptoss-bench: 12 of 14 points are not ok (error, oom, skipped, "
                                                   "timeout); allow_failed_points=true makes that exit 0")
    [run] = run_dirs(tmp_path)
    df = pd.read_parquet(run / "points.parquet").set_index("point_id")
    fault = df[df.backend == "fault"].sort_values("batch_size")
    assert list(fault.status) == ["ok", "oom", "error", "skipped", "timeout", "error", "ok"]
    assert "out of memory" in fault.error.iloc[1]
    # a point its engine cannot hold is skipped with what it needs; its group goes on
    assert "the KV cache of batch 4" in fault.error.iloc[3] and fault.required_gib.iloc[3] == 3.0
    assert "SIGKILL" in fault.error.iloc[2]
    assert "killed" in fault.error.iloc[4] and "5 s" in fault.error.iloc[4]
    assert "ValueError: injected fault" in fault.error.iloc[5]
    assert fault[fault.status == "ok"].error.eq("").all()
    assert fault[fault.status != "ok"].ttft_ms.isna().all()  # not measured: null, never 0
    huge = df[df.backend == "huge"]
    assert (huge.status == "skipped").all() and len(huge) == 7
    assert (huge.required_gib > 0).all()
    # the traceback of the injected error is in the group's log
    assert "ValueError: injected fault" in (run / "logs" / f"{fault.group.iloc[0]}.log").read_text()
    samples = pd.read_parquet(run / "samples.parquet")
    assert set(samples.point_id) == set(fault.index[fault.status == "ok"])


def test_killed_sweep_leaves_valid_files_and_resume_completes_it(tmp_path):
    search = fault_conf(tmp_path, slow={"step_ms": 100})
    args = [search, *FAULT_POINT, "backend=slow", "workload.batch_size=1,2,3,4,5,6"]
    proc = subprocess.Popen(bench_command(tmp_path, *args), env=bench_env(), cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 180
    points = tmp_path / "results"
    while time.monotonic() < deadline:
        files = list(points.glob("*/points.parquet"))
        if files and (read_parquet(files[0]).status == "ok").sum() >= 2:  # read as the sweep replaces it
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the sweep and its worker, mid-write if it comes to that
    proc.wait()
    [run] = run_dirs(tmp_path)
    for table in run.glob("*.parquet"):
        pq.read_table(table)  # every file present is a whole parquet file
    before = pd.read_parquet(run / "points.parquet")
    assert 2 <= (before.status == "ok").sum() < 6

    res = bench(tmp_path, "resume=true", f"run_id={run.name}", search)
    assert res.returncode == 0, res.stderr
    after = pd.read_parquet(run / "points.parquet")
    assert len(after) == 6 and (after.status == "ok").all()
    kept = before[before.status == "ok"].set_index("point_id").started_at
    assert (after.set_index("point_id").started_at[kept.index] == kept).all()  # ok points were not rerun
    assert run_dirs(tmp_path) == [run]
