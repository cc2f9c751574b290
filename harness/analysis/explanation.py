"""What `gptoss-explain` found, as typed records: the GPU and its ceilings, the MXFP4 path each
engine takes here with its evidence, the documented table, and MXFP4 against bf16 from a run.
harness.explain_cli fills them; harness.report.explain_page and the terminal print them."""

from __future__ import annotations

from dataclasses import dataclass, field

from harness.analysis.mxfp4_paths import EnginePath
from harness.analysis.quant_comparison import QuantRow


@dataclass(frozen=True)
class GpuFacts:
    name: str
    compute_capability: str
    arch: str | None  # the documented table's row (mxfp4_paths.arch_of)
    sms: int
    memory_gib: float
    power_limit_w: float | None  # NVML's enforced limit, None without NVML
    fp4_tensor_cores: bool


@dataclass(frozen=True)
class Ceiling:
    what: str
    unit: str  # "TB/s" or "TFLOP/s"
    measured: float | None  # in `unit`
    datasheet: float | None

    @property
    def share(self) -> float | None:
        """measured / datasheet"""
        return self.measured / self.datasheet if self.measured and self.datasheet else None


@dataclass
class EngineFinding:
    engine: str
    here: str  # how it is installed here, or why it is not
    path: str  # the MXFP4 path it takes on this GPU (or "-")
    native_fp4: bool | None
    basis: str  # observed | asked | documented | -
    evidence: list[str] = field(default_factory=list)


@dataclass
class Explanation:
    created_at: str
    cpu: str
    software: dict[str, str]
    gpu: GpuFacts | None
    ceilings: list[Ceiling]
    engines: list[EngineFinding]
    documented: list[EnginePath]
    comparison: list[QuantRow]
    run: str | None  # the run folder the comparison comes from
    notes: list[str] = field(default_factory=list)
