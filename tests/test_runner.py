"""A worker process driven directly: load once, measure points, recover from OOM, report death
and hangs; the measurement's numbers come from per-step samples."""

import pytest

from bench_cli import TESTS
from dataclasses import replace

from harness.config import BackendChoice, ModelChoice, TelemetryConfig, Workload
from harness.model.spec import get_spec
from harness.runner import messages as M
from harness.runner.measure import settled
from harness.runner.prompts import prompts
from harness.runner.worker_process import WorkerDied, WorkerProcess, WorkerTimeout

FAULT = BackendChoice("fault", "fault_backend.FaultBackend", options={"faults": {"oom": 2, "kill": 3, "hang": 5}})
WORKLOAD = Workload(batch_size=1, context_len=8, new_tokens=5, warmup=1, warmup_tokens=2, repeats=3, seed=0,
                    router_skew=0.0, timeout_s=30, load_timeout_s=60)


def load(tmp_path) -> M.Load:
    return M.Load(FAULT, ModelChoice("gpt-oss-tiny", None, "device"), "mxfp4", WORKLOAD, "cpu",
                  TelemetryConfig(nvml=False, nvtx=False), str(tmp_path), None, 8, 16)


@pytest.fixture
def worker(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(TESTS))
    w = WorkerProcess(None, tmp_path / "worker.log")
    records = []
    assert isinstance(w.request(None, 60), M.Hello)
    loaded = w.request(load(tmp_path), 60, records.append)
    assert loaded.status == "ok" and loaded.data["backend_version"] == "fault 1"
    facts = [r.facts for r in records if isinstance(r, M.Facts)]
    assert facts and facts[0]["device"] == "cpu" and facts[0]["gpu_name"] is None
    yield w
    w.kill()


def point(w, batch, reference=None, timeout_s=30, **workload) -> M.Result:
    return w.request(M.RunPoint(f"b{batch}", replace(WORKLOAD, batch_size=batch, **workload), reference), timeout_s)


def test_measurement_comes_from_every_step(worker):
    res = point(worker, 4)
    assert res.status == "ok"
    row, samples = res.data["row"], res.data["samples"]
    assert len(samples) == 3 * 4  # repeats x (new_tokens - 1)
    steps = sorted(s[2] for s in samples)
    assert row["tpot_ms_mean"] == pytest.approx(sum(steps) / len(steps))
    assert row["tpot_ms_p50"] == pytest.approx((steps[5] + steps[6]) / 2)
    assert row["decode_tok_s"] == pytest.approx(4 * 1000 / row["tpot_ms_mean"])
    assert row["prefill_tok_s"] == pytest.approx(4 * 8 / (row["ttft_ms"] / 1e3))
    assert row["cv"] is not None and row["e2e_ms"] > row["ttft_ms"]
    assert "agreement" not in row
    assert (row["warmup_calls"], row["warmup_settled"]) == (1, None)  # exactly `warmup` without warmup_max
    assert row["jit_compiles"] is None  # this engine cannot tell
    one = point(worker, 1, repeats=1).data["row"]
    assert one["cv"] is None and one["ttft_cv"] is None  # one repeat has no spread
    assert one["ttft_ms_repeat_p50"] == one["ttft_ms"]


def test_warm_up_goes_on_until_ttft_settles(tmp_path, monkeypatch):
    """Prefills of 400, 100, 400, 400, 100 ms, then 100: the last three first agree at the 7th call.
    The fast ones are long enough that 10% of them (10 ms) is above a busy 2-core machine's jitter."""
    monkeypatch.setenv("PYTHONPATH", str(TESTS))
    slow = replace(FAULT, options={"prefill_ms": [400, 100, 400, 400, 100]})
    w = WorkerProcess(None, tmp_path / "worker.log")
    try:
        w.request(None, 60)
        assert w.request(replace(load(tmp_path), backend=slow), 60).status == "ok"
        row = point(w, 1, warmup=1, warmup_max=10).data["row"]
        assert (row["warmup_calls"], row["warmup_settled"]) == (7, True)
        assert row["ttft_ms"] < 250  # measured after the slow calls
        row = point(w, 1, warmup=1, warmup_max=3).data["row"]  # prefills of 100 ms from now on
        assert (row["warmup_calls"], row["warmup_settled"]) == (3, True)
    finally:
        w.kill()


def test_warm_up_goes_on_until_no_call_compiles(tmp_path, monkeypatch):
    """Calls compiling 2, 1, 1, then no kernels, all prefilling in 100 ms: without warmup_max the measured repeats
    (calls 2-4) compile 2 and say so; with it the warm-up runs until three calls compiled nothing."""
    monkeypatch.setenv("PYTHONPATH", str(TESTS))
    compiling = replace(FAULT, options={"compiles": [2, 1, 1, 0], "prefill_ms": [100]})
    for warmup_max, expected in ((0, (1, None, 2)), (10, (6, True, 0))):
        w = WorkerProcess(None, tmp_path / "worker.log")
        try:
            w.request(None, 60)
            assert w.request(replace(load(tmp_path), backend=compiling), 60).status == "ok"
            row = point(w, 1, warmup=1, warmup_max=warmup_max).data["row"]
            assert (row["warmup_calls"], row["warmup_settled"], row["jit_compiles"]) == expected
        finally:
            w.kill()


def test_ttft_median_and_spread_are_over_the_repeats(tmp_path, monkeypatch):
    """Repeats prefilling in 30, 120 and 30 ms (after a 5-ms warm-up): the median is a 30-ms one,
    the mean is pulled up by the slow one, and the spread shows it."""
    monkeypatch.setenv("PYTHONPATH", str(TESTS))
    uneven = replace(FAULT, options={"prefill_ms": [5, 30, 120, 30]})
    w = WorkerProcess(None, tmp_path / "worker.log")
    try:
        w.request(None, 60)
        assert w.request(replace(load(tmp_path), backend=uneven), 60).status == "ok"
        row = point(w, 1, warmup=1, repeats=3).data["row"]
        assert 30 <= row["ttft_ms_repeat_p50"] < 80 and row["ttft_ms"] >= 60
        assert row["ttft_cv"] > 0.5
    finally:
        w.kill()


def test_columns_describe_the_last_measured_call_not_the_profiled_one(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(TESTS))
    w = WorkerProcess(None, tmp_path / "worker.log")
    try:
        w.request(None, 60)
        profiled = replace(load(tmp_path), telemetry=TelemetryConfig(nvml=False, nvtx=False, profile="all",
                                                                      profile_steps=2))
        assert w.request(profiled, 60).status == "ok"
        res = point(w, 1, warmup=1, repeats=3)
        assert res.data["row"]["prefills"] == 4  # 1 warm-up + 3 repeats; the profiled call came after
        kernels = res.data["kernels"]
        assert {row[kernels["columns"].index("phase")] for row in kernels["data"]} == {"prefill", "decode"}
    finally:
        w.kill()


def test_settled_needs_three_calls_within_ten_percent_that_compiled_nothing():
    assert not settled([20.0, 20.0], [None, None])
    assert settled([200.0, 20.0, 21.0, 19.0], [None] * 4)
    assert not settled([20.0, 21.0, 25.0], [None] * 3)
    assert settled([200.0, 20.0, 21.0, 19.0], [5, 0, 0, 0])
    assert not settled([200.0, 20.0, 21.0, 19.0], [5, 0, 1, 0])  # a new shape, however fast
    assert Workload(**{**WORKLOAD.__dict__, "warmup_max": 2}).problems() == [
        "workload.warmup_max=2: must be 0 (exactly workload.warmup calls) or at least max(workload.warmup, 3) "
        "(settling compares the last 3 calls)"]


def test_agreement_is_teacher_forced_against_the_reference(worker):
    # The fault backend's greedy tokens: prefill = sum(prompt) % vocab, then t -> (31 t + 7) % vocab.
    own = [int(prompts(get_spec("gpt-oss-tiny"), 0, 8, 1).sum()) % 1024]
    for _ in range(3):
        own.append((31 * own[-1] + 7) % 1024)
    same = point(worker, 1, reference=[own]).data["row"]
    assert same["agreement"] == 1.0 and same["agreement_positions"] == 4 and same["agreement_forced"] is True
    last = point(worker, 1, reference=[own[:3] + [own[3] + 1]]).data["row"]
    assert last["agreement"] == 0.75
    # A wrong first token is fed back: the step after it disagrees too, the later ones agree again
    # (free-running, only the first position would differ).
    first = point(worker, 1, reference=[[own[0] + 1] + own[1:]]).data["row"]
    assert first["agreement"] == 0.5


def test_oom_is_recovered_in_the_same_worker(worker):
    pid = worker.proc.pid
    res = point(worker, 2)
    assert res.status == "oom" and "out of memory" in res.error
    assert point(worker, 1).status == "ok" and worker.proc.pid == pid


def test_death_names_the_signal_and_a_hang_times_out(worker, tmp_path, monkeypatch):
    with pytest.raises(WorkerDied, match="killed by SIGKILL"):
        point(worker, 3)
    monkeypatch.setenv("PYTHONPATH", str(TESTS))
    hung = WorkerProcess(None, tmp_path / "hung.log")
    hung.request(None, 60)
    hung.request(load(tmp_path), 60)
    with pytest.raises(WorkerTimeout, match="no result after 2 s"):
        point(hung, 5, timeout_s=2)
    hung.kill()
    assert hung.proc.returncode == -9
