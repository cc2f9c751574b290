"""Energy and power of a point's phases, from phase windows and NVML samples.

A window is one pass through a phase (the prefill of one repeat, the decode of one repeat), its
times in seconds since the point started and the GPUs' summed energy counter read at both
boundaries after a device synchronisation.

Energy of a phase is the sum of the counter's differences over its windows. The counter is
updated by the driver every few tens of ms (it can be coarser), so a window shorter than that
update period sees either no change or a whole update's worth; for such phases, and wherever the
counter did not move across windows that did work, the energy is mean sampled power x time and
`energy_source` says so. Sampled power lags the load (see nvml_sampler), so the fallback is the
less accurate of the two and is used only where the counter cannot answer.

`samples` is the telemetry.parquet frame: one row per GPU per tick, t_s in seconds since the
point started; a tick's rows share one t_s.
"""

from __future__ import annotations

from dataclasses import dataclass
from statistics import median

import numpy as np
import pandas as pd


@dataclass
class Window:
    phase: str
    t0: float  # s since the point started
    t1: float
    e0: float | None = None  # J, the energy counters of the point's GPUs summed; None without one
    e1: float | None = None

    @property
    def duration_s(self) -> float:
        return self.t1 - self.t0


def counter_period_s(samples: pd.DataFrame) -> float | None:
    """How often the energy counter changed while sampled (the slowest GPU's median interval);
    never below the sampling period, which is all a sampler can resolve. None when it changed
    fewer than three times."""
    periods = []
    for _, s in samples.dropna(subset=["energy_j"]).groupby("gpu"):
        changes = s.t_s[s.energy_j.diff() != 0].iloc[1:]  # the first row is no change
        if len(changes) >= 3:
            periods.append(float(np.median(np.diff(changes))))
    return max(periods) if periods else None


def tick_power(samples: pd.DataFrame) -> pd.Series:
    """Total power of the point's GPUs per tick (index t_s); a tick missing a GPU's power is dropped."""
    gpus = samples.gpu.nunique()
    return samples.groupby("t_s").power_w.sum(min_count=gpus).dropna()


def in_windows(t: pd.Series | pd.Index, windows: list[Window]) -> np.ndarray:
    t = np.asarray(t, dtype=float)
    mask = np.zeros(len(t), dtype=bool)
    for w in windows:
        mask |= (t >= w.t0) & (t <= w.t1)
    return mask


def window_ticks(t, windows: list[Window]) -> np.ndarray:
    """The tick times inside the windows; for windows too short to hold a tick, the tick nearest
    each window's middle."""
    t = np.unique(np.asarray(t, dtype=float))
    inside = t[in_windows(t, windows)]
    if len(inside) or not len(t):
        return inside
    return np.unique([t[np.abs(t - (w.t0 + w.t1) / 2).argmin()] for w in windows])


def window_power(power: pd.Series, windows: list[Window]) -> pd.Series:
    """Tick power (tick_power) at window_ticks."""
    return power[power.index.isin(window_ticks(power.index, windows))]


def phase_energy(windows: list[Window], samples: pd.DataFrame) -> dict[str, tuple[float | None, str | None]]:
    """phase -> (energy in J over all its windows, 'counter' | 'power_x_time'); (None, None) when
    neither the counter nor sampled power can say."""
    period = counter_period_s(samples)
    power = tick_power(samples)
    out = {}
    for phase in dict.fromkeys(w.phase for w in windows):
        ws = [w for w in windows if w.phase == phase]
        counted = None if any(w.e0 is None or w.e1 is None for w in ws) else sum(w.e1 - w.e0 for w in ws)
        too_short = period is not None and median(w.duration_s for w in ws) < period
        if counted and not too_short:
            out[phase] = (counted, "counter")
            continue
        p = window_power(power, ws)
        out[phase] = (float(p.mean()) * sum(w.duration_s for w in ws), "power_x_time") if len(p) else (None, None)
    return out


def power_valid(samples: pd.DataFrame, windows: list[Window], period_s: float) -> bool:
    """False when the windows hold no tick with a power reading, or when such ticks are more than
    3 periods apart anywhere from the first window's start to the last window's end."""
    t = np.unique(samples.t_s[samples.power_w.notna()].to_numpy(dtype=float))
    if not windows or not len(t):
        return False
    start, end = min(w.t0 for w in windows), max(w.t1 for w in windows)
    if not in_windows(t, windows).any():
        return False
    t = np.concatenate([[start], t[(t >= start) & (t <= end)], [end]])
    return bool(np.diff(t).max() <= 3 * period_s)


def label_phases(t: pd.Series, windows: list[Window]) -> pd.Series:
    """The phase of the window each timestamp falls in, null outside every window."""
    label = pd.Series(None, index=t.index, dtype=object)
    for w in windows:
        label[(t >= w.t0) & (t <= w.t1)] = w.phase
    return label
