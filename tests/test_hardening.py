"""Bad input and faults of the sweep itself, as a user meets them: each ends in one line that names
what is wrong and what to do, with nothing measured lost and no traceback."""

import fcntl
import resource
import signal
import sys
import subprocess
import time
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch

import harness.results as R
from bench_cli import FAULT_POINT, bench, bench_command, bench_env, fault_conf, run_dirs
from harness.runner.sweep import SweepError
from harness.runner.terminal import summary


def _refused(sweep, *overrides) -> str:
    with pytest.raises(SweepError) as e:
        sweep(*overrides)
    return str(e.value)


# ---- refused before anything runs ---------------------------------------------------------------
def test_unknown_keys_are_refused_by_name(sweep):
    msg = _refused(sweep, "backend=fault", "model=gpt-oss-tiny", "+workload.batchsize=2", "+backend.moe_pth=x")
    assert "workload.batchsize: unknown key; known: ['batch_size'," in msg
    assert "backend.moe_pth: not an option of fault_backend.FaultBackend; options: ['compiles', 'does_not_fit', 'faults'," in msg


def test_a_bad_checkpoint_shows_every_line_of_the_validator(sweep, checkpoint, tmp_path):
    bad = tmp_path / "ckpt"
    bad.mkdir()
    for f in checkpoint.iterdir():
        (bad / f.name).symlink_to(f)
    (bad / "config.json").unlink()
    (bad / "config.json").write_text("{not json")
    msg = _refused(sweep, "backend=fault", f"model.path={bad}")
    line = next(x for x in msg.splitlines() if f"model.path={bad}:" in x)
    assert line.split(f"model.path={bad}:", 1)[1].strip(), msg  # the validator's words follow the colon
    assert "config.json" in msg


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusals are of a machine without a GPU")
def test_what_cannot_run_here_is_refused(sweep):
    msg = _refused(sweep, "backend=fault", "model=gpt-oss-tiny", "device=cuda")
    assert "device=cuda: no CUDA GPU is visible here" in msg
    msg = _refused(sweep, "backend=vllm", "model=gpt-oss-tiny", "quant=mxfp4")
    assert "quant=mxfp4: vLLM's CPU build has no MXFP4 MoE kernel; use quant=bf16" in msg


def test_a_run_id_that_cannot_name_a_folder_is_refused_before_anything(tmp_path):
    search = fault_conf(tmp_path, fault={})
    res = bench(tmp_path, search, *FAULT_POINT, "backend=fault", "run_id='nightly (2) <b>'")
    assert res.returncode == 2
    assert res.stderr.strip().splitlines()[-1].startswith("gptoss-bench: run_id='nightly (2) <b>': use letters")
    assert "Traceback" not in res.stderr and not (tmp_path / "results").exists()


# ---- running ------------------------------------------------------------------------------------
def test_flags_anywhere_and_the_opt_out_of_a_failing_exit(tmp_path):
    search = fault_conf(tmp_path, fault={"faults": {"error": 2}})
    res = bench(tmp_path, search, "sweep=none", *FAULT_POINT, "backend=fault", "-m", "workload.batch_size=1,2",
                "allow_failed_points=true")
    assert res.returncode == 0, res.stderr  # -m after the overrides is taken; one error point is allowed
    [run] = run_dirs(tmp_path)
    assert sorted(pd.read_parquet(run / "points.parquet").status) == ["error", "ok"]


def test_a_second_sweep_of_the_same_run_is_refused(tmp_path):
    search = fault_conf(tmp_path, fault={})
    assert bench(tmp_path, search, *FAULT_POINT, "backend=fault").returncode == 0
    [run] = run_dirs(tmp_path)
    with open(run / ".sweep.lock", "a") as held:  # another sweep of this run, as a resume holds it
        fcntl.flock(held, fcntl.LOCK_EX)
        res = bench(tmp_path, f"resume={run}", search)
    assert res.returncode == 2
    assert "is being run by another gptoss-bench right now" in res.stderr.strip().splitlines()[-1]


def _limit_file_size(limit: int):
    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def test_a_report_that_cannot_be_written_keeps_the_results_and_says_so(tmp_path):
    # Files may not grow past 1 MB: the tables fit, the report (plotly inlined, ~4 MB) does not,
    # as on a disk that fills up while the report is written.
    search = fault_conf(tmp_path, fault={})
    res = subprocess.run(bench_command(tmp_path, search, *FAULT_POINT, "backend=fault"), env=bench_env(), cwd=tmp_path,
                         capture_output=True, text=True, timeout=300, preexec_fn=_limit_file_size(1 << 20))
    assert res.returncode == 1
    [run] = run_dirs(tmp_path)
    assert (pd.read_parquet(run / "points.parquet").status == "ok").all()
    assert res.stdout.strip().splitlines()[-1] == f"results: {run}   report: not written"
    assert res.stderr.strip().splitlines()[-1] == (
        "gptoss-bench: the report could not be written (a file grew past the size allowed writing "
        f"{tmp_path / 'reports' / run.name}.html); the results are whole: `gptoss-report {run}` writes it")
    assert not any((tmp_path / "reports").iterdir())  # no temporary file left behind
    assert "Traceback" not in res.stderr


def test_a_write_that_fails_mid_sweep_ends_in_one_line_with_the_resume_command(tmp_path):
    # Files may not grow past 24 kB: the sweep starts, samples.parquet (1,197 steps a point)
    # outgrows it after a point or two, as a disk that fills up mid-sweep.
    search = fault_conf(tmp_path, fault={})
    res = subprocess.run(bench_command(tmp_path, search, *FAULT_POINT, "backend=fault", "workload.new_tokens=400",
                                       "workload.repeats=3", "workload.batch_size=1,2,3,4"),
                         env=bench_env(), cwd=tmp_path, capture_output=True, text=True, timeout=300,
                         preexec_fn=_limit_file_size(24 << 10))
    [run] = run_dirs(tmp_path)
    kept = pq.read_table(run / "points.parquet").to_pandas()
    last = res.stderr.strip().splitlines()[-1]
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert last.startswith("gptoss-bench: a file grew past the size allowed"), last
    assert last.endswith(f"; {len(kept)} ok points are kept in {run}; `gptoss-bench resume={run}` runs the rest")
    assert 0 < len(kept) < 4 and not list(run.glob(".*.tmp"))


def _children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (from /proc: the sweep's workers)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.parametrize("sig, code, said", [(signal.SIGINT, 130, "interrupted"),
                                             (signal.SIGTERM, 143, "stopped by SIGTERM")])
def test_a_stopped_sweep_ends_in_one_line_kills_its_worker_and_says_how_to_resume(tmp_path, sig, code, said):
    # SIGTERM is what a CI timeout sends: without a handler the sweep died at once and its worker, in
    # a session of its own, lived on holding the GPU.
    search = fault_conf(tmp_path, slow={"step_ms": 100})
    # 24 points, so that the sweep is still running when the signal comes on a busy machine (with 6,
    # two test runs on 2 cores saw it finish first); it is interrupted after the first either way.
    proc = subprocess.Popen(bench_command(tmp_path, search, *FAULT_POINT, "backend=slow",
                                          "workload.batch_size=" + ",".join(map(str, range(1, 25)))),
                            env=bench_env(), cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        files = list((tmp_path / "results").glob("*/points.parquet"))
        if files and pq.read_table(files[0]).column("status").to_pylist().count("ok") >= 1:
            break
        time.sleep(0.05)
    workers = _children(proc.pid)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    [run] = run_dirs(tmp_path)
    assert proc.returncode == code and "Traceback" not in err
    assert workers and not [w for w in workers if _alive(w)]
    ok = int((pd.read_parquet(run / "points.parquet").status == "ok").sum())
    assert err.strip().splitlines()[-1] == (f"gptoss-bench: {said}; {ok} ok points are kept in {run}; "
                                            f"`gptoss-bench resume={run}` runs the rest")


# ---- reading results ------------------------------------------------------------------------------
def test_results_glob_lists_each_run_once(tmp_path):
    results = tmp_path / "results"
    for run_id in ("a", "b"):
        (results / run_id).mkdir(parents=True)
        R.write_atomic(R.to_table(pd.DataFrame([{"run_id": run_id, "point_id": "p", "status": "ok"}]),
                                  R.POINT_COLUMNS), results / run_id / "points.parquet")
    (results / "README.md").write_text("what this folder holds\n")
    assert [d.name for d in R.run_dirs(str(results / "*"))] == ["a", "b"]
    assert sorted(R.load(str(results / "*")).run_id) == ["a", "b"]


def test_summary_says_what_agreement_and_memory_mean_here():
    rows = pd.DataFrame([{"group": "g", "point_id": "g-b1", "backend": "torch_ref", "status": "ok", "ttft_ms": 1.0,
                          "tpot_ms_p50": 1.0, "decode_tok_s": 1.0, "peak_mem_gib": None, "torch_peak_gib": None,
                          "agreement": 1.0, "error": ""}])
    table, note = summary(rows)
    assert "self" in [str(c._cells[0]) for c in table.columns if c.header == "agree"][0]
    assert note.startswith("mem GiB: not measured here (no GPU")


def test_the_package_ships_its_configuration(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path),
                    str(Path(__file__).resolve().parents[1])], check=True, capture_output=True, timeout=300)
    [wheel] = tmp_path.glob("gptoss_bench-*.whl")
    names = set(subprocess.run([sys.executable, "-m", "zipfile", "-l", str(wheel)], capture_output=True, text=True,
                               check=True).stdout.split())
    for needed in ("harness/conf/config.yaml", "harness/conf/backend/triton_mxfp4.yaml",
                   "harness/conf/sweep/smoke.yaml", "hydra_plugins/gptoss_bench_sweeper/__init__.py"):
        assert needed in names, needed


def test_rerun_measures_again_only_what_a_comparison_flagged(tmp_path):
    # Two runs of the same points, the second's engine ten times slower a step: gptoss-compare flags
    # them, and `rerun=... only=regressed` measures exactly those again, in a new run folder.
    FAULT_POINT_5 = [*FAULT_POINT, "workload.repeats=5", "workload.new_tokens=8"]
    search = fault_conf(tmp_path / "a", fault={})
    assert bench(tmp_path, search, *FAULT_POINT_5, "backend=fault", "workload.batch_size=1,2", "run_id=base",
                 "hardware=here").returncode == 0
    search = fault_conf(tmp_path / "b", fault={"step_ms": 2.0})
    assert bench(tmp_path, search, *FAULT_POINT_5, "backend=fault", "workload.batch_size=1,2", "run_id=slow",
                 "hardware=here").returncode == 0
    results = tmp_path / "results"
    compare = subprocess.run([sys.executable, "-m", "harness.compare_cli", str(results / "base"), str(results / "slow")],
                             capture_output=True, text=True, timeout=300)
    assert compare.returncode == 1, compare.stdout + compare.stderr
    res = bench(tmp_path, search, "rerun=results/slow", "only=regressed", "run_id=confirm")
    assert res.returncode == 0, res.stderr
    again = pd.read_parquet(results / "confirm" / "points.parquet")
    flagged = pd.read_parquet(results / "slow" / "points.parquet").point_id
    assert sorted(again.point_id) == sorted(flagged) and (again.status == "ok").all()
    assert (again.hardware == "here").all()  # the stored sweep's label, so the confirmation compares
