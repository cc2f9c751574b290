"""NVTX ranges in the `gptoss-bench` domain, for `nsys profile` timelines.

    nsys profile -t cuda,nvtx -o gptoss gptoss-bench ...

The runner marks sweep, point, warm-up and phase; engines mark their inner ranges with the same
function. Without a profiler attached the `nvtx` package's domain is a dummy and a range costs a
Python call; without the package a range is a no-op. torch.cuda.nvtx is not used because it
raises on CPU-only torch.
"""

from __future__ import annotations

import contextlib
from typing import ContextManager

try:
    import nvtx
except ImportError:  # the GPU machine may lack the package
    nvtx = None

DOMAIN = "gptoss-bench"
_enabled = nvtx is not None


def set_enabled(flag: bool) -> None:
    """Process-wide switch (telemetry.nvtx); NVTX itself is process-wide."""
    global _enabled
    _enabled = bool(flag) and nvtx is not None


def nvtx_range(name: str) -> ContextManager:
    if not _enabled:
        return contextlib.nullcontext()
    return nvtx.annotate(name, domain=DOMAIN)
