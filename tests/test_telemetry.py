"""Telemetry aggregation on NVML sample sequences, and the whole point path without a GPU.

The sequences come from `Gpu` (tests/nvml_model.py), a model of what NVML reports on an H100.
"""

import os
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pynvml
import pytest
import torch

import nvml_model
from bench_cli import FAULT_POINT, bench, fault_conf, run_dirs
from harness.telemetry import POINT_TELEMETRY_COLUMNS, TELEMETRY_COLUMNS, Telemetry, TelemetryConfig, energy, throttle
from harness.telemetry.energy import Window
from nvml_model import Gpu

IDLE_W, PREFILL_W, DECODE_W = 70.0, 650.0, 380.0
POWER_CAP = pynvml.nvmlClocksEventReasonSwPowerCap
IDLE = pynvml.nvmlClocksEventReasonGpuIdle


@dataclass
class Schedule:
    """Repeats of idle, prefill and decode, as the runner's measured loop makes them."""
    repeats: int = 3
    idle_s: float = 0.25
    prefill_s: float = 0.03
    decode_s: float = 0.8
    decode_mask: int = 0
    windows: list = field(default_factory=list)

    def gpu(self, **kw) -> Gpu:
        segments, t = [], 0.0
        for _ in range(self.repeats):
            segments.append((t, IDLE_W, IDLE))
            t += self.idle_s
            segments.append((t, PREFILL_W, 0))
            self.windows.append(("prefill", t, t + self.prefill_s))
            t += self.prefill_s
            segments.append((t, DECODE_W, self.decode_mask))
            self.windows.append(("decode", t, t + self.decode_s))
            t += self.decode_s
        segments.append((t, IDLE_W, IDLE))
        self.end = t + self.idle_s
        return Gpu(segments, **kw)


def sample(gpu: Gpu, end: float, period=0.02, drop=()):
    ticks = [k * period for k in range(int(end / period) + 1) if not any(a <= k * period < b for a, b in drop)]
    return pd.DataFrame({
        "gpu": 0, "t_s": ticks,
        "power_w": [gpu.power_field(t) for t in ticks],
        "energy_j": [gpu.counter(t) for t in ticks],
        "mem_used_gib": gpu.mem_gib, "sm_clock_mhz": 1980.0,
        "throttle_reasons": [",".join(throttle.decode(gpu.reasons(t))) for t in ticks],
    })


def windows_of(schedule: Schedule, gpu: Gpu, counter=True):
    return [Window(p, a, b, gpu.counter(a) if counter else None, gpu.counter(b) if counter else None)
            for p, a, b in schedule.windows]


def truth(schedule: Schedule, gpu: Gpu, phase: str) -> float:
    return sum(gpu.energy(b) - gpu.energy(a) for p, a, b in schedule.windows if p == phase)


def test_energy_comes_from_the_counter_where_windows_are_long_enough():
    s = Schedule()
    gpu = s.gpu()
    samples = sample(gpu, s.end)
    assert energy.counter_period_s(samples) == pytest.approx(gpu.counter_period_s)
    out = energy.phase_energy(windows_of(s, gpu), samples)
    decode, source = out["decode"]
    assert source == "counter"
    # per window the counter can be off by at most one update's worth of energy at each end
    assert abs(decode - truth(s, gpu, "decode")) <= s.repeats * 2 * DECODE_W * gpu.counter_period_s
    assert abs(decode / truth(s, gpu, "decode") - 1) < 0.05


def test_short_windows_fall_back_to_power_times_time_and_lagging_power_shows():
    s = Schedule()
    gpu = s.gpu()
    out = energy.phase_energy(windows_of(s, gpu), sample(gpu, s.end))
    prefill, source = out["prefill"]
    assert source == "power_x_time"  # 30 ms prefill windows, 100 ms counter updates
    # the power field still shows the idle draw 300 ms late: the fallback is far below the truth
    assert prefill < 0.5 * truth(s, gpu, "prefill")
    no_lag = Gpu(gpu.segments, lag_s=0.0, hold_s=0.001)
    prefill, _ = energy.phase_energy(windows_of(s, no_lag), sample(no_lag, s.end, period=0.005))["prefill"]
    assert prefill == pytest.approx(truth(s, no_lag, "prefill"), rel=0.2)


def test_a_counter_that_does_not_move_or_is_missing_falls_back():
    s = Schedule(decode_s=0.5)
    gpu = s.gpu(counter_period_s=100.0)  # never updates inside the sequence
    samples = sample(gpu, s.end)
    assert energy.counter_period_s(samples) is None
    decode, source = energy.phase_energy(windows_of(s, gpu), samples)["decode"]
    assert source == "power_x_time" and decode > 0
    decode, source = energy.phase_energy(windows_of(s, gpu, counter=False), samples)["decode"]
    assert source == "power_x_time"


def test_coarse_counter_decides_per_phase():
    s = Schedule(decode_s=0.3)
    gpu = s.gpu(counter_period_s=0.5)
    samples = sample(gpu, s.end)
    assert energy.counter_period_s(samples) == pytest.approx(0.5)
    assert energy.phase_energy(windows_of(s, gpu), samples)["decode"][1] == "power_x_time"
    s = Schedule(decode_s=1.5)
    gpu = s.gpu(counter_period_s=0.5)
    assert energy.phase_energy(windows_of(s, gpu), sample(gpu, s.end))["decode"][1] == "counter"


def test_nothing_to_measure_is_null_not_zero():
    s = Schedule()
    gpu = s.gpu()
    samples = sample(gpu, s.end)
    samples["power_w"] = np.nan
    prefill = energy.phase_energy(windows_of(s, gpu, counter=False), samples)["prefill"]
    assert prefill == (None, None)


def test_power_valid_needs_ticks_without_long_gaps():
    s = Schedule()
    gpu = s.gpu()
    ws = windows_of(s, gpu)
    assert energy.power_valid(sample(gpu, s.end), ws, 0.02)
    assert not energy.power_valid(sample(gpu, s.end, drop=[(0.5, 0.58)]), ws, 0.02)  # 100 ms gap
    assert energy.power_valid(sample(gpu, s.end, drop=[(0.5, 0.52)]), ws, 0.02)  # 40 ms
    assert not energy.power_valid(sample(gpu, s.end).iloc[:0], ws, 0.02)
    assert not energy.power_valid(sample(gpu, s.end, drop=[(0.0, s.end + 1)]), ws, 0.02)


def test_window_ticks_take_the_nearest_tick_when_none_is_inside():
    ticks = np.arange(0, 1, 0.1)
    assert list(energy.window_ticks(ticks, [Window("prefill", 0.31, 0.33)])) == [pytest.approx(0.3)]
    assert list(energy.window_ticks(ticks, [Window("decode", 0.25, 0.45)])) == [pytest.approx(0.3),
                                                                                 pytest.approx(0.4)]


def test_throttle_reasons_decode_to_names():
    assert throttle.decode(0) == []
    assert throttle.decode(IDLE | POWER_CAP) == ["gpu_idle", "sw_power_cap"]
    assert throttle.decode(pynvml.nvmlClocksEventReasonHwThermalSlowdown | 1 << 20) == ["hw_thermal", "unknown_0x100000"]
    assert throttle.slowdowns(["gpu_idle", "app_clocks", "sw_power_cap", "hw_power_brake"]) == ["sw_power_cap",
                                                                                              "hw_power_brake"]


# --- the whole point path on a fake NVML that replays a Gpu against the wall clock ----------------

def modelled_nvml(monkeypatch, gpu: Gpu, instant=True):
    """The modelled GPU for this process (patched into pynvml) and for the sampling process (its
    stand-in pynvml, through the environment)."""
    t0 = time.perf_counter()
    for name, fn in nvml_model.fakes(pynvml, gpu, t0, instant).items():
        monkeypatch.setattr(pynvml, name, fn)
    monkeypatch.setenv(nvml_model.ENV, nvml_model.environment(gpu, t0, instant))
    path = [str(nvml_model.STAND_IN), str(nvml_model.STAND_IN.parents[1]), os.environ.get("PYTHONPATH", "")]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in path if p))


def run_point(tel, point_id="p0", repeats=2, decode_steps=4, profile=False):
    lin = torch.nn.Linear(32, 32)
    with tel.point(point_id, profile=profile) as pt:
        for _ in range(repeats):
            with pt.phases("prefill"):
                lin(torch.randn(16, 32))
            with pt.phases("decode"):
                for _ in range(decode_steps):
                    torch.nn.functional.rms_norm(lin(torch.randn(1, 32)), (32,))
                    time.sleep(0.03)
        if profile:
            with pt.profile():
                with pt.phases("prefill"):
                    lin(torch.randn(16, 32))
                with pt.phases("decode"):
                    for _ in range(decode_steps):
                        torch.nn.functional.rms_norm(lin(torch.randn(1, 32)), (32,))
    return pt


def test_point_without_nvml_is_all_null(tmp_path, monkeypatch):
    def no_library():
        raise pynvml.NVMLError(pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)

    monkeypatch.setattr(pynvml, "nvmlInit", no_library)  # as on a machine without a GPU driver
    tel = Telemetry({"nvml": True, "period_ms": 20, "profile": "first", "profile_steps": 2, "nvtx": True},
                    trace_dir=tmp_path)
    assert tel.env()["nvml"].startswith("unavailable: NVML did not initialise")
    assert tel.profiles("p0")
    pt = run_point(tel, profile=True)
    assert not tel.profiles("p1")
    cols = pt.columns(decode_tokens=8)
    assert set(cols) == set(POINT_TELEMETRY_COLUMNS)
    assert all(v is None for k, v in cols.items() if k != "torch_peak_gib"), cols
    assert (cols["torch_peak_gib"] is None) == (not torch.cuda.is_initialized())  # the allocator's, without NVML
    assert pt.samples().empty and list(pt.samples()) == list(TELEMETRY_COLUMNS)
    assert [w.phase for w in pt.windows] == ["prefill", "decode"] * 2
    assert all(w.duration_s > 0 for w in pt.windows)
    kernels = pt.kernels()  # a CPU run: the phases' outermost operators stand in for kernels
    assert list(kernels) == ["point_id", "phase", "kernel", "category", "calls", "total_ms", "mean_us", "share"]
    assert set(kernels.phase) == {"prefill", "decode"}
    assert kernels.groupby("phase").share.sum().to_numpy() == pytest.approx([1, 1])
    assert "norm" in set(kernels[kernels.phase == "decode"].category)
    assert (tmp_path / "p0.json.gz").stat().st_size > 0
    tel.close()


def test_point_with_nvml(monkeypatch):
    modelled_nvml(monkeypatch, Gpu([(0.0, DECODE_W, POWER_CAP)], counter_period_s=0.01, lag_s=0.0, hold_s=0.01))
    tel = Telemetry({"nvml": True, "period_ms": 10, "profile": "off", "profile_steps": 2, "nvtx": False})
    env = tel.env()
    assert env["gpu_name"] == "NVIDIA H100 80GB HBM3" and env["gpus"][0]["power_field"] == "instant"
    assert env["cuda_driver_version"] == "13.0" and env["gpus"][0]["pci_bus_id"] is None  # unanswered -> null
    pt = run_point(tel, decode_steps=5)
    sampler = tel.sampler.proc
    assert sampler.poll() is None  # one sampling process per worker, idle between points
    cols = pt.columns(decode_tokens=10)
    tel.close()
    assert sampler.poll() == 0
    decode_s = sum(w.duration_s for w in pt.windows if w.phase == "decode")
    assert cols["energy_source"] in ("counter", "prefill=power_x_time,decode=counter")
    assert cols["decode_energy_j"] == pytest.approx(DECODE_W * decode_s, rel=0.1)
    assert cols["energy_j_per_tok"] == pytest.approx(cols["decode_energy_j"] / 10)
    assert cols["power_w_mean"] == pytest.approx(DECODE_W) and cols["power_w_max"] == pytest.approx(DECODE_W)
    assert cols["peak_mem_gib"] == pytest.approx(14.0) and cols["sm_clock_mhz_mean"] == 1980.0
    assert cols["throttled"] is True and cols["throttle_reasons"] == "sw_power_cap"
    assert isinstance(cols["power_valid"], bool)
    samples = pt.samples()
    assert list(samples) == list(TELEMETRY_COLUMNS) and (samples.point_id == "p0").all()
    assert set(samples.phase.dropna()) == {"decode"} | ({"prefill"} & set(samples.phase.dropna()))
    assert samples.energy_j.iloc[0] == 0 and samples.energy_j.is_monotonic_increasing
    assert samples.t_s.min() >= 0


def test_point_with_averaged_power_and_idle_gpu_is_not_throttled(monkeypatch):
    modelled_nvml(monkeypatch, Gpu([(0.0, IDLE_W, IDLE)], counter_period_s=0.01), instant=False)
    tel = Telemetry({"period_ms": 10})
    assert tel.env()["gpus"][0]["power_field"] == "average"
    cols = run_point(tel, repeats=1).columns()
    tel.close()
    assert cols["throttled"] is False and cols["throttle_reasons"] == ""
    assert cols["energy_j_per_tok"] is None  # no token count given


def test_a_sampling_process_that_dies_leaves_the_point_with_null_telemetry(monkeypatch, capsys):
    modelled_nvml(monkeypatch, Gpu([(0.0, DECODE_W, 0)], counter_period_s=0.01))
    tel = Telemetry({"period_ms": 10})
    with tel.point("p0") as pt:
        with pt.phases("decode"):
            tel.sampler.proc.kill()
    assert "telemetry: point p0: the NVML sampling process exited with code -9" in capsys.readouterr().err
    assert pt.samples().empty and pt.columns()["power_w_mean"] is None and pt.windows[0].duration_s > 0
    assert tel.sampler is None
    with tel.point("p1") as pt:  # later points run without telemetry
        pass
    tel.close()


def test_nvml_off_starts_nothing(monkeypatch):
    monkeypatch.setattr(pynvml, "nvmlInit", lambda: pytest.fail("NVML initialised with telemetry.nvml false"))
    tel = Telemetry({"nvml": False})
    assert tel.env() == {"nvml": "unavailable: telemetry.nvml is false"}
    with tel.point("p") as pt:
        assert tel.sampler is None and not pt._sampling
    tel.close()


@pytest.mark.parametrize("cfg, message", [({"nvml": True, "period": 5}, "unknown keys"),
                                          ({"profile": "some"}, "telemetry.profile"),
                                          ({"profile": True}, "telemetry.profile"),
                                          ({"period_ms": 0}, "must be positive")])
def test_bad_config_names_the_key(cfg, message):
    with pytest.raises(ValueError, match=message):
        TelemetryConfig.from_cfg(cfg)


def test_profile_selection():
    assert TelemetryConfig.from_cfg({"profile": False}).profile == "off"
    tel = Telemetry({"nvml": False, "profile": ["a", "c"]})
    assert [tel.profiles(p) for p in "abc"] == [True, False, True]


def test_nvtx_ranges_switch_off_and_survive_a_missing_package(monkeypatch):
    import contextlib

    import nvtx

    from harness.telemetry import nvtx_ranges

    nvtx_ranges.set_enabled(True)
    assert isinstance(nvtx_ranges.nvtx_range("point"), nvtx.annotate)
    nvtx_ranges.set_enabled(False)
    assert isinstance(nvtx_ranges.nvtx_range("point"), contextlib.nullcontext)
    monkeypatch.setattr(nvtx_ranges, "nvtx", None)
    nvtx_ranges.set_enabled(True)
    assert isinstance(nvtx_ranges.nvtx_range("point"), contextlib.nullcontext)
    monkeypatch.undo()
    nvtx_ranges.set_enabled(True)


def test_a_sweeps_rows_name_the_gpu_that_measured_them(tmp_path, monkeypatch):
    """gpu_uuid: the NVML UUID of the worker's GPU, in every row, so a run resumed on another
    machine says which points share a GPU (the report's "Points measured on different GPUs")."""
    modelled_nvml(monkeypatch, Gpu([(0.0, DECODE_W, 0)], counter_period_s=0.01))
    r = bench(tmp_path, fault_conf(tmp_path, fault={}), "backend=fault", *FAULT_POINT, "telemetry=default",
              "-m", "workload.batch_size=1,2")
    assert r.returncode == 0, r.stderr
    [run] = run_dirs(tmp_path)
    points = pd.read_parquet(run / "points.parquet")
    assert list(points.gpu_uuid) == ["GPU-modelled-gpu0"] * 2
