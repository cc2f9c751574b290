"""NVML clock-event ("throttle") reasons: a bitmask decoded to names.

Only power and thermal slowdowns mark a point as throttled. An idle GPU (between steps), the
application-clock setting, sync boost and display clocks lower or pin clocks for reasons that say
nothing about the hardware being held back under this load.
"""

from __future__ import annotations

import pynvml

REASONS: dict[int, str] = {
    pynvml.nvmlClocksEventReasonGpuIdle: "gpu_idle",
    pynvml.nvmlClocksEventReasonApplicationsClocksSetting: "app_clocks",
    pynvml.nvmlClocksEventReasonSwPowerCap: "sw_power_cap",
    pynvml.nvmlClocksEventReasonHwSlowdown: "hw_slowdown",
    pynvml.nvmlClocksEventReasonSyncBoost: "sync_boost",
    pynvml.nvmlClocksEventReasonSwThermalSlowdown: "sw_thermal",
    pynvml.nvmlClocksEventReasonHwThermalSlowdown: "hw_thermal",
    pynvml.nvmlClocksEventReasonHwPowerBrakeSlowdown: "hw_power_brake",
    pynvml.nvmlClocksEventReasonDisplayClockSetting: "display_clocks",
}
SLOWDOWNS = frozenset({"sw_power_cap", "hw_slowdown", "sw_thermal", "hw_thermal", "hw_power_brake"})


def decode(mask: int) -> list[str]:
    """Names of the set bits, lowest first; a bit NVML adds later reads as unknown_0x...."""
    names = [name for bit, name in REASONS.items() if mask & bit]
    rest = mask & ~sum(REASONS)
    if rest:
        names.append(f"unknown_{rest:#x}")
    return names


def slowdowns(names: list[str]) -> list[str]:
    return [n for n in names if n in SLOWDOWNS]
