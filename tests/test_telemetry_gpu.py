"""The real NVML sampler and profiler on a GPU (skipped without CUDA)."""

import time

import pytest
import torch

from harness.telemetry import Telemetry, energy

pytestmark = pytest.mark.gpu


def matmul_loop(seconds: float, n: int = 8192):
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        for _ in range(20):
            a @ a
        torch.cuda.synchronize()


def test_power_field_lags_while_the_energy_counter_moves(capsys):
    """Idle, then 2 s of matmuls. The energy counter's power over the loop is what the harness
    reports; the sampled power field reaches the loaded level later. Prints both lags."""
    tel = Telemetry({"period_ms": 10})
    torch.ones(1, device="cuda")
    with tel.point("lag") as pt:
        time.sleep(0.5)
        with pt.phases("decode"):
            matmul_loop(2.0)
    samples = pt.samples()
    limit_w = tel.env()["gpus"][0]["power_limit_w"]
    tel.close()
    w = pt.windows[0]
    counter_w = (w.e1 - w.e0) / w.duration_s
    idle = samples[samples.t_s < w.t0]
    idle_w = idle.power_w.median()
    busy = samples[(samples.t_s >= w.t0) & (samples.t_s <= w.t1)]
    updates = busy[busy.energy_j.diff() != 0]  # power between consecutive counter updates
    counter_power = updates.energy_j.diff() / updates.t_s.diff()
    half = (idle_w + counter_w) / 2
    lag_field = busy.t_s[busy.power_w > half].min() - w.t0
    lag_counter = updates.t_s[counter_power > half].min() - w.t0
    period = energy.counter_period_s(busy)
    with capsys.disabled():
        print(f"\nidle {idle_w:.0f} W, counter mean {counter_w:.0f} W, sampled mean {busy.power_w.mean():.0f} W; "
              f"half-way reached by power field after {1e3 * lag_field:.0f} ms, by counter after "
              f"{1e3 * lag_counter:.0f} ms; counter updates every {1e3 * period:.0f} ms")
    assert 1.5 * idle_w < counter_w < 1.1 * limit_w  # the loop loads the GPU, within its power limit
    assert period is not None and period <= 0.2  # the counter resolves decode-length windows
    assert lag_counter <= lag_field + 2 * period  # the counter answers no later than the power field


def decode_like(a, seconds: float):
    """Small launch-bound steps, as in decode, for about `seconds` of host time."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        torch.nn.functional.rms_norm(a[:8] @ a, (a.shape[-1],))


def test_real_point_columns_samples_and_kernels(tmp_path):
    tel = Telemetry({"period_ms": 20}, trace_dir=tmp_path)
    env = tel.env()
    assert env["nvml"] == "ok" and env["gpu_count"] == 1 and env["gpus"][0]["energy_counter"]
    a = torch.randn(4096, 4096, device="cuda", dtype=torch.bfloat16)
    with tel.point("p0", profile=True) as pt:
        for _ in range(2):  # phases of equal length: the power field's lag moves as much in as out
            with pt.phases("prefill"):
                matmul_loop(1.5, 4096)
            with pt.phases("decode"):
                decode_like(a, 1.5)
        with pt.profile():
            with pt.phases("prefill"):
                a @ a
            with pt.phases("decode"):
                for _ in range(8):
                    torch.nn.functional.rms_norm(a[:8] @ a, (a.shape[-1],))
    cols = pt.columns(decode_tokens=1000)
    tel.close()
    assert cols["power_valid"] is True and cols["decode_energy_j"] > 0
    assert cols["energy_source"] in ("counter", "prefill=power_x_time,decode=counter")
    decode_s = sum(w.duration_s for w in pt.windows if w.phase == "decode")
    prefill_s = sum(w.duration_s for w in pt.windows if w.phase == "prefill")
    # the acceptance check: counter energy against mean sampled power x time
    measured = (cols["prefill_energy_j"] or 0) + cols["decode_energy_j"]
    assert measured == pytest.approx(cols["power_w_mean"] * (decode_s + prefill_s), rel=0.1)
    assert cols["peak_mem_gib"] > cols["torch_peak_gib"] > 0
    assert cols["sm_clock_mhz_mean"] > 0 and isinstance(cols["throttled"], bool)
    samples = pt.samples()
    assert {"prefill", "decode", "profiled"} <= set(samples.phase.dropna())
    kernels = pt.kernels()
    decode = kernels[kernels.phase == "decode"]
    assert decode.share.sum() == pytest.approx(1)
    assert "norm" in set(decode.category) and "launch_gap" in set(decode.category)
    assert (tmp_path / "p0.json.gz").stat().st_size > 0
