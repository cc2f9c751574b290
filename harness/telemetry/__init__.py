"""What the GPU did while a point ran: power, energy, memory, clocks, throttling, kernels.

One `Telemetry` per worker process; one `PointTelemetry` context per sweep point:

    tel = Telemetry(cfg.telemetry, device_index=0, trace_dir=run_dir / "traces")
    with tel.point(point_id, profile=tel.profiles(point_id), categorize=backend.kernel_category) as pt:
        for _ in range(repeats):
            backend.generate(prompts, new_tokens, phases=pt.phases)       # measured
        if pt.profiling:
            with pt.profile(backend.profiler):
                backend.generate(prompts, 1 + tel.cfg.profile_steps, phases=pt.phases)
    row |= pt.columns(decode_tokens=repeats * batch * (new_tokens - 1))
    telemetry_rows.append(pt.samples()); kernel_rows.append(pt.kernels())
    tel.close()

A point that spans GPUs (device_index: every GPU of its layout) is sampled on each: telemetry.parquet
has a row per GPU per tick (`gpu`: the position in device_index); energy and power are the GPUs'
sums, peak_mem_gib the largest sum over a tick and peak_mem_per_gpu_gib the fullest GPU's peak,
sm_clock_mhz_mean the mean over every GPU, and the throttle reasons those of any GPU.

Without NVML (no GPU, no driver, telemetry.nvml false) nothing is sampled, every measured column
is None and env() says why; phases still time and mark ranges, and the profiler still runs.
"""

from __future__ import annotations

import contextlib
import sys
import tempfile
import time
from pathlib import Path
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import ContextManager

import numpy as np
import pandas as pd
import pyarrow as pa
import pynvml
import torch
from torch.profiler import ProfilerActivity, record_function

from harness.config import TelemetryConfig
from harness.telemetry import energy, nvml_sampler, nvtx_ranges, throttle
from harness.telemetry.energy import Window
from harness.telemetry.kernel_timeline import kernel_table, nest_trace
from harness.telemetry.nvtx_ranges import nvtx_range

MEASURED = ("prefill", "decode")  # the phases the point columns describe
PROFILED = "profiled"  # the phase label of samples taken inside a profiler window

TELEMETRY_COLUMNS: dict[str, pa.DataType] = {
    "point_id": pa.string(), "gpu": pa.int64(), "t_s": pa.float64(), "phase": pa.string(),
    "power_w": pa.float64(), "energy_j": pa.float64(), "mem_used_gib": pa.float64(), "gpu_util": pa.float64(),
    "mem_util": pa.float64(), "sm_clock_mhz": pa.float64(), "mem_clock_mhz": pa.float64(), "temp_c": pa.float64(),
    "throttle_reasons": pa.string(),
}
KERNEL_COLUMNS: dict[str, pa.DataType] = {
    "point_id": pa.string(), "phase": pa.string(), "kernel": pa.string(), "category": pa.string(),
    "calls": pa.int64(), "total_ms": pa.float64(), "mean_us": pa.float64(), "share": pa.float64(),
}
POINT_TELEMETRY_COLUMNS: dict[str, pa.DataType] = {  # what PointTelemetry.columns fills
    "power_w_mean": pa.float64(), "power_w_max": pa.float64(), "prefill_energy_j": pa.float64(),
    "decode_energy_j": pa.float64(), "energy_j_per_tok": pa.float64(), "energy_source": pa.string(),
    "power_valid": pa.bool_(), "peak_mem_gib": pa.float64(), "peak_mem_per_gpu_gib": pa.float64(),
    "torch_peak_gib": pa.float64(),
    "sm_clock_mhz_mean": pa.float64(), "throttled": pa.bool_(), "throttle_reasons": pa.string(),
}


def _sync():
    if torch.cuda.is_initialized():
        torch.cuda.synchronize()


class Telemetry:
    def __init__(self, cfg: TelemetryConfig | Mapping | None = None, device_index: int | Sequence[int] = 0,
                 trace_dir: str | Path | None = None):
        """cfg: the telemetry config group; device_index: the CUDA device(s) the points use;
        trace_dir: where profiled points' traces go (<run_dir>/traces), None to keep none."""
        self.cfg = cfg if isinstance(cfg, TelemetryConfig) else TelemetryConfig.from_cfg(cfg)
        self.trace_dir = Path(trace_dir) if trace_dir is not None else None
        self.t0 = time.perf_counter()
        self.handles: list = []
        self.readers: list[dict] = []
        self.sampler: nvml_sampler.NvmlSampler | None = None
        self.profiled = 0
        nvtx_ranges.set_enabled(self.cfg.nvtx)
        indices = [device_index] if isinstance(device_index, int) else list(device_index)
        self.unavailable = "unavailable: telemetry.nvml is false" if not self.cfg.nvml else None
        if self.cfg.nvml:
            try:
                self.handles = nvml_sampler.open_devices(indices)
                self.sampler = nvml_sampler.NvmlSampler(self.handles, self.cfg.period_ms / 1e3)
            except nvml_sampler.NvmlUnavailable as e:
                self.close()
                self.unavailable = f"unavailable: {e}"
        self.readers = [nvml_sampler.supported_readers(h) for h in self.handles]

    def clock(self) -> float:
        """Seconds since this Telemetry started, the clock of samples and phase markers (the
        sampling process stamps time.perf_counter(), the same clock host-wide)."""
        return time.perf_counter() - self.t0

    def env(self) -> dict:
        if self.unavailable:
            return {"nvml": self.unavailable}
        return nvml_sampler.gpu_facts(self.handles, self.readers)

    def profiles(self, point_id: str) -> bool:
        """Whether telemetry.profile selects this point ('first': until one point was profiled)."""
        p = self.cfg.profile
        return p == "all" or (p == "first" and self.profiled == 0) or (isinstance(p, tuple) and point_id in p)

    def point(self, point_id: str, profile: bool = False,
              categorize: Callable[[str], str | None] | None = None) -> PointTelemetry:
        return PointTelemetry(self, point_id, profile, categorize)

    def energy_j(self) -> float | None:
        return nvml_sampler.read_energy_j(self.handles, self.readers)

    def close(self):
        if self.sampler is not None:
            self.sampler.close()
            self.sampler = None
        if self.handles:
            pynvml.nvmlShutdown()
            self.handles = []


class PointTelemetry:
    """Telemetry of one point. Results (columns, samples, kernels) are read after the context."""

    def __init__(self, tel: Telemetry, point_id: str, profile: bool, categorize):
        self.tel, self.point_id, self.profiling, self.categorize = tel, point_id, profile, categorize
        self.windows: list[Window] = []  # measured phases, in order
        self.profile_windows: list[Window] = []
        self._in_profile = False
        self._rows: list[dict] = []
        self._sampling = False
        self._kernels: pd.DataFrame | None = None
        self._torch_peak_gib: float | None = None
        self.t_start = 0.0

    def __enter__(self) -> PointTelemetry:
        if torch.cuda.is_initialized():
            torch.cuda.reset_peak_memory_stats()
        self.t_start = self.tel.clock()
        if self.tel.sampler is not None:
            self.tel.sampler.start()
            self._sampling = True
        return self

    def __exit__(self, *exc):
        if self._sampling:
            self._sampling = False
            try:
                self._rows = self.tel.sampler.stop()
            except nvml_sampler.NvmlUnavailable as e:  # the point's timings stand; its telemetry is null
                print(f"telemetry: point {self.point_id}: {e}", file=sys.stderr)
                self.tel.sampler = None
        if torch.cuda.is_initialized():
            self._torch_peak_gib = torch.cuda.max_memory_allocated() / 2**30
        return False

    def _now(self) -> tuple[float, float | None]:
        return self.tel.clock() - self.t_start, self.tel.energy_j()

    @contextlib.contextmanager
    def phases(self, name: str) -> Iterator[None]:
        """One pass through a phase: an NVTX and a profiler range, the device synchronised and the
        energy counter read at both ends. Windows of a profiler run are kept apart."""
        _sync()
        t0, e0 = self._now()
        with nvtx_range(name), record_function(name):
            yield
            _sync()
        t1, e1 = self._now()
        (self.profile_windows if self._in_profile else self.windows).append(Window(name, t0, t1, e0, e1))

    @contextlib.contextmanager
    def profile(self, engine: Callable[[Path], ContextManager | None] | None = None) -> Iterator[None]:
        """A profiler window around one extra generate (1 prefill + profile_steps decode steps,
        phases=self.phases); kernels() and the trace <trace_dir>/<point_id>.json.gz follow.
        engine: the backend's `profiler` (Backend.profiler); where it gives a context, the engine
        profiles its own processes and writes the trace, else torch.profiler runs here."""
        with contextlib.ExitStack() as stack:
            if self.tel.trace_dir is not None:
                self.tel.trace_dir.mkdir(parents=True, exist_ok=True)
                path = self.tel.trace_dir / f"{self.point_id}.json.gz"
            else:
                path = Path(stack.enter_context(tempfile.TemporaryDirectory())) / "trace.json.gz"
            own = engine(path) if engine is not None else None
            activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_initialized() else [])
            t0 = self.tel.clock() - self.t_start
            self._in_profile = True
            try:
                with nvtx_range("profile"), own or torch.profiler.profile(activities=activities) as prof:
                    yield
            finally:
                self._in_profile = False
            self.profile_windows.append(Window(PROFILED, t0, self.tel.clock() - self.t_start))
            self.tel.profiled += 1
            if own is None:
                prof.export_chrome_trace(str(path))
                phases = list(dict.fromkeys(w.phase for w in self.profile_windows if w.phase != PROFILED))
            else:  # the engine's trace has its own steps' phases
                phases = list(MEASURED)
            table = kernel_table(nest_trace(path), phases, self.categorize)
        table.insert(0, "point_id", self.point_id)
        self._kernels = table

    def samples(self) -> pd.DataFrame:
        """telemetry.parquet rows: t_s in seconds since the point started, energy_j since the
        point's first sample of that GPU, phase the measured phase (or 'profiled') a sample fell in."""
        df = pd.DataFrame(self._rows, columns=["gpu", "t_s", *nvml_sampler.FIELDS])
        df["t_s"] = df.t_s.astype(float) - self.tel.t0 - self.t_start
        df["throttle_reasons"] = [None if pd.isna(m) else ",".join(throttle.decode(int(m))) for m in df.clock_event_mask]
        df["energy_j"] = df.energy_j.astype(float) - df.groupby("gpu").energy_j.transform("first")
        df["phase"] = energy.label_phases(df.t_s, self.windows + self.profile_windows)
        df.insert(0, "point_id", self.point_id)
        return df[list(TELEMETRY_COLUMNS)].astype({k: "float64" for k, t in TELEMETRY_COLUMNS.items()
                                                    if t == pa.float64()} | {"gpu": "int64"})

    def kernels(self) -> pd.DataFrame | None:
        """kernels.parquet rows of the profiled window; None when the point was not profiled."""
        return self._kernels

    def columns(self, decode_tokens: int | None = None) -> dict:
        """The point's telemetry columns (POINT_TELEMETRY_COLUMNS); None for what was not
        measured. decode_tokens: tokens generated in the decode phases of all measured repeats
        (batch x (new_tokens - 1) x repeats), the divisor of energy_j_per_tok."""
        out: dict = dict.fromkeys(POINT_TELEMETRY_COLUMNS)
        out["torch_peak_gib"] = self._torch_peak_gib
        samples = self.samples()
        if samples.empty:
            return out
        gpus = samples.gpu.nunique()
        per_tick = samples.groupby("t_s")
        out["peak_mem_gib"] = _value(per_tick.mem_used_gib.sum(min_count=gpus).max())
        out["peak_mem_per_gpu_gib"] = _value(samples.mem_used_gib.max())
        windows = [w for w in self.windows if w.phase in MEASURED]
        if not windows:
            return out
        phase_energy = energy.phase_energy(windows, samples)
        (pre, _), (dec, _) = (phase_energy.get(p, (None, None)) for p in MEASURED)
        sources = {p: s for p, (_, s) in phase_energy.items() if s is not None}
        out.update(prefill_energy_j=pre, decode_energy_j=dec,
                   energy_j_per_tok=dec / decode_tokens if dec is not None and decode_tokens else None,
                   energy_source=(next(iter(sources.values())) if len(set(sources.values())) == 1
                                  else ",".join(f"{p}={s}" for p, s in sources.items()) or None))
        power = energy.window_power(energy.tick_power(samples), windows)
        out.update(power_w_mean=_value(power.mean()), power_w_max=_value(power.max()),
                   power_valid=energy.power_valid(samples, windows, self.tel.cfg.period_ms / 1e3))
        inside = samples[samples.t_s.isin(energy.window_ticks(samples.t_s, windows))]
        out["sm_clock_mhz_mean"] = _value(inside.sm_clock_mhz.mean())
        reasons = inside.throttle_reasons.dropna()
        if len(reasons):
            slow = sorted({r for rs in reasons for r in throttle.slowdowns(rs.split(","))})
            out.update(throttled=bool(slow), throttle_reasons=",".join(slow))
        return out


def _value(x) -> float | None:
    """A float for a column; None for NaN (nothing measured), never 0."""
    return None if x is None or (isinstance(x, float) and np.isnan(x)) else float(x)
