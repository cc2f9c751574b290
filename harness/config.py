"""A sweep's configuration as typed records.

`SweepConfig` is the schema Hydra composes harness/conf against (harness.cli registers it as
`gptoss_schema`, the first entry of conf/config.yaml's defaults): a key it does not declare is
refused by name, `+workload.batchsize=2` included, and values are converted to the declared types.
The yaml files hold the defaults; the fields here say what each key means. The module imports
neither Hydra nor OmegaConf: worker processes read it in engines' own interpreters, which have
neither.

`PointConfig` is one point of a sweep, built once by the expansion (harness.runner.sweep) and
carried unchanged to the worker (harness.runner.messages) and to its row. Which workload keys
belong to a point and which to its worker group (the engine loads once per group) is marked on
the fields (`per_point`), not kept in a list elsewhere.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Dict, List, Optional

BACKEND_KEYS = ("_target_", "name", "python", "quants")  # backend yaml keys that are not engine options
MISSING = "???"  # OmegaConf's mark of a value the yaml must give

# Warm-up has settled when the last WARMUP_RUN warm-up calls' TTFTs lie within WARMUP_SETTLED of their
# median and none of them compiled a kernel (workload.warmup_max; harness.runner.measure.settled). A
# fixed count is not enough for every engine: vLLM's prefill of batch 8 x 1k on the H200 took 1.39,
# 0.15, 1.31, 1.37 and 0.71 s on its first five calls at that shape and 0.11-0.12 s from the sixth on
# (its own `bench latency`, LOG.md); 10% passes that steady state's spread and no slow-fast step.
WARMUP_RUN, WARMUP_SETTLED = 3, 0.10


def _key(help: str, per_point: bool = False, default: Any = MISSING):
    return field(default=default, metadata={"help": help, "per_point": per_point})


def _positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


@dataclass
class Workload:
    batch_size: int = _key("sequences per batch", per_point=True)
    context_len: int = _key("prompt tokens per sequence (synthetic, seeded)", per_point=True)
    new_tokens: int = _key("tokens generated per sequence, EOS ignored", per_point=True)
    warmup: int = _key("untimed generate calls before the measured ones", per_point=True)
    warmup_tokens: int = _key("tokens per warm-up call", per_point=True)
    repeats: int = _key("measured generate calls", per_point=True)
    seed: int = _key("prompts and synthetic weights")
    router_skew: float = _key("synthetic router bias towards a few experts (0: uniform routing)")
    timeout_s: float = _key("a point's limit: warm-up, measurement, profile, agreement", per_point=True)
    load_timeout_s: float = _key("a worker's limit to load the model")
    warmup_max: int = _key(f"0: exactly `warmup` warm-up calls; more: they go on, up to this many, until the "
                           f"last {WARMUP_RUN} TTFTs lie within {WARMUP_SETTLED:.0%} of their median and "
                           f"compiled nothing",
                           per_point=True, default=0)

    def problems(self) -> list[str]:
        out = [f"workload.{k}={getattr(self, k)}: must be a positive integer"
               for k in ("batch_size", "context_len", "repeats", "warmup_tokens") if not _positive_int(getattr(self, k))]
        if not (_positive_int(self.new_tokens) and self.new_tokens >= 2):
            out.append(f"workload.new_tokens={self.new_tokens}: must be an integer >= 2 (a prefill and a decode step)")
        if self.warmup < 0:
            out.append(f"workload.warmup={self.warmup}: must be an integer >= 0")
        if self.warmup_max and self.warmup_max < max(self.warmup, WARMUP_RUN):
            out.append(f"workload.warmup_max={self.warmup_max}: must be 0 (exactly workload.warmup calls) or at "
                       f"least max(workload.warmup, {WARMUP_RUN}) (settling compares the last {WARMUP_RUN} calls)")
        out += [f"workload.{k}={getattr(self, k)}: must be a positive number"
                for k in ("timeout_s", "load_timeout_s") if not getattr(self, k) > 0]
        return out

    def group_part(self) -> dict:
        """The keys that load the engine: points that differ in them need a worker each."""
        return {f.name: getattr(self, f.name) for f in fields(self) if not f.metadata["per_point"]}


@dataclass
class ModelChoice:
    name: str = _key("gpt-oss-20b, gpt-oss-120b, gpt-oss-tiny, or auto (20b on a GPU, tiny on a CPU)")
    path: Optional[str] = _key("a checkpoint directory in the HF layout; null: the seeded synthetic weights",
                               default=None)
    synthetic: str = _key("disk: the cached synthetic checkpoint; device: built in device memory", default="disk")


@dataclass
class Parallel:
    """How one engine spans GPUs (docs/multi-gpu.md). gpus = tp x dp; ep is 1 (each expert split by
    TP like the dense weights) or tp x dp (vLLM's expert parallelism: the experts are spread whole
    over every TP x DP rank, the attention stays TP-split and DP-replicated)."""
    gpus: Optional[int] = _key("GPUs one engine uses; null: tp x dp", default=None)
    tp: int = _key("tensor parallel: attention heads, dense and (with ep=1) expert weights split tp ways",
                   default=1)
    ep: int = _key("expert parallel: 1 (experts TP-split) or tp x dp (whole experts spread over every rank)",
                   default=1)
    dp: int = _key("data parallel: engine replicas, each with batch/dp of the sequences", default=1)

    @property
    def gpu_count(self) -> int:
        return self.gpus if self.gpus is not None else self.tp * self.dp

    def problems(self, num_attention_heads: int | None = None, num_experts: int | None = None) -> list[str]:
        """One line per bad combination; the model's head and expert counts where known."""
        bad = [f"parallel.{k}={getattr(self, k)}: must be a positive integer"
               for k in ("tp", "ep", "dp") if not _positive_int(getattr(self, k))]
        if self.gpus is not None and not _positive_int(self.gpus):
            bad.append(f"parallel.gpus={self.gpus}: must be a positive integer or null (tp x dp)")
        if bad:
            return bad
        out = []
        if self.gpus is not None and self.gpus != self.tp * self.dp:
            out.append(f"parallel.gpus={self.gpus}: must equal parallel.tp x parallel.dp = {self.tp * self.dp} "
                       "(or null)")
        if self.ep not in (1, self.tp * self.dp):
            out.append(f"parallel.ep={self.ep}: must be 1 or parallel.tp x parallel.dp = {self.tp * self.dp} "
                       "(experts are spread over every rank)")
        if num_attention_heads is not None and num_attention_heads % self.tp:
            out.append(f"parallel.tp={self.tp}: must divide the model's {num_attention_heads} attention heads")
        if num_experts is not None and num_experts % self.ep:
            out.append(f"parallel.ep={self.ep}: must divide the model's {num_experts} experts")
        return out

    def refused_by(self, backend: str, supported: tuple[str, ...]) -> list[str]:
        """Lines for the keys of this layout that an engine does not implement (`supported`: the
        subset of tp, ep, dp it does); an engine that supports none runs on one GPU."""
        used = [k for k in ("tp", "ep", "dp") if getattr(self, k) > 1 and k not in supported]
        if not used:
            return []
        if not supported:
            return [f"parallel.gpus={self.gpu_count}: backend {backend} runs on one GPU; "
                    "use backend=vllm (or vllm_serve) to span GPUs"]
        return [f"parallel.{k}={getattr(self, k)}: backend {backend} supports only "
                f"{', '.join('parallel.' + s for s in supported)}" for k in used]

    def devices(self, first: int = 0) -> list[int]:
        """The CUDA device indices of the point's GPUs (within CUDA_VISIBLE_DEVICES)."""
        return list(range(first, first + self.gpu_count))

    def columns(self) -> dict:
        return {"gpu_count": self.gpu_count, "tp": self.tp, "ep": self.ep, "dp": self.dp}


@dataclass
class QuantChoice:
    name: str = _key("mxfp4 (experts as shipped), bf16 (dequantised at load), or another harness.model.spec mode")


@dataclass
class TelemetryConfig:
    nvml: bool = _key("sample power, energy, memory, clocks, throttle reasons (null columns without NVML)",
                      default=True)
    period_ms: float = _key("sampler period: the timeline's resolution", default=20.0)
    # Any: off | first | all | a list of point ids (OmegaConf has no unions)
    profile: Any = _key("torch.profiler window: off, first (of each worker group), all, or point ids",
                        default="off")
    profile_steps: int = _key("decode steps in the profiler window, after one prefill", default=32)
    nvtx: bool = _key("NVTX ranges in domain gptoss-bench, for nsys", default=True)

    @classmethod
    def from_cfg(cls, cfg) -> TelemetryConfig:
        values = dict(cfg.items()) if cfg is not None else {}
        unknown = set(values) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"telemetry: unknown keys {sorted(unknown)}; known: {[f.name for f in fields(cls)]}")
        profile = values.get("profile", "off")
        if profile is False or profile is None:  # YAML reads a bare `off` as false
            profile = "off"
        elif isinstance(profile, (list, tuple)) or (hasattr(profile, "__iter__") and not isinstance(profile, str)):
            profile = tuple(str(p) for p in profile)
        elif profile not in ("off", "first", "all"):
            raise ValueError(f"telemetry.profile: {profile!r} is not off, first, all or a list of point ids")
        out = cls(**{**values, "profile": profile})
        if out.period_ms <= 0 or out.profile_steps < 1:
            raise ValueError(f"telemetry: period_ms ({out.period_ms}) and profile_steps ({out.profile_steps}) "
                             "must be positive")
        return out

    @property
    def profiling(self) -> bool:
        return self.profile != "off"


@dataclass
class AgreementSchema:
    enabled: bool = _key("compare the backend's greedy tokens with the reference's, same weights and prompts")
    seqs: int = _key("first rows of the batch compared")
    tokens: int = _key("positions compared per row (teacher-forced where the backend can)")
    reference: Dict[str, Any] = field(default_factory=dict, metadata={"help": "the oracle: a backend yaml"})


@dataclass
class SweepConfig:
    """The schema of conf/config.yaml (the defaults are there)."""
    backend: Dict[str, Any] = field(default_factory=dict, metadata={"help": "a conf/backend yaml"})
    model: ModelChoice = field(default_factory=ModelChoice)
    quant: QuantChoice = field(default_factory=QuantChoice)
    workload: Workload = field(default_factory=Workload)
    parallel: Parallel = field(default_factory=Parallel)
    telemetry: TelemetryConfig = field(default_factory=TelemetryConfig)
    agreement: AgreementSchema = field(default_factory=AgreementSchema)
    results_dir: str = _key("run folders go to <results_dir>/<run_id>/")
    reports_dir: str = _key("the HTML report of a sweep goes to <reports_dir>/<run_id>.html")
    arms: List[str] = field(default_factory=list, metadata={
        "help": "engine set-ups compared in one run folder, each a string of overrides "
                "(backend=vllm backend.moe_path=marlin): the sweep runs once per arm"})
    run_id: Optional[str] = _key("null: a new UTC timestamp; letters, digits, '.', '_', '-'", default=None)
    resume: Any = _key("true (with run_id) or a run folder: rerun the points without an ok row", default=False)
    rerun: Optional[str] = _key("a run folder: measure again, into a new run, the points `only` selects", default=None)
    only: str = _key("with rerun: regressed (flagged by gptoss-compare's verdicts.json), failed or all",
                     default="regressed")
    hardware: Optional[str] = _key("the label of this machine in results and reports; null: the GPU name",
                                   default=None)
    device: str = _key("auto, cpu, cuda or cuda:N", default="auto")
    cache_dir: str = _key("synthetic checkpoints, agreement references, calibration")
    allow_failed_points: bool = _key("false: exit 1 when any point is not ok (for nightly jobs)", default=False)
    group: Optional[str] = _key("set by the sweeper on a launcher job: the worker group it runs", default=None)



# ---- one point ----------------------------------------------------------------------------------
@dataclass
class BackendChoice:
    """A backend yaml: the class, its label, its interpreter, and the engine's own options."""
    name: str
    target: Optional[str]  # the yaml's _target_: package.module.Class
    python: Optional[str] = None  # an interpreter of its own; None: the harness's
    quants: Optional[List[str]] = None  # overrides the class's supported quant modes
    options: Dict[str, Any] = field(default_factory=dict)  # constructor keywords

    @classmethod
    def from_yaml(cls, d: dict) -> BackendChoice:
        return cls(d.get("name", "?"), d.get("_target_"), d.get("python"), d.get("quants"),
                   {k: v for k, v in d.items() if k not in BACKEND_KEYS})


@dataclass
class Agreement:
    enabled: bool
    seqs: int
    tokens: int
    reference: BackendChoice


@dataclass
class PointConfig:
    backend: BackendChoice
    model: ModelChoice
    quant: str
    workload: Workload
    telemetry: TelemetryConfig
    agreement: Agreement
    device: str
    parallel: Parallel = field(default_factory=Parallel)  # the agreement reference always runs on one GPU

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> PointConfig:
        a = d["agreement"]
        return cls(BackendChoice(**d["backend"]), ModelChoice(**d["model"]), d["quant"], Workload(**d["workload"]),
                   TelemetryConfig.from_cfg(d["telemetry"]),
                   Agreement(a["enabled"], a["seqs"], a["tokens"], BackendChoice(**a["reference"])), d["device"],
                   Parallel(**d.get("parallel", {})))

    def group_key(self) -> dict:
        """What a worker loads: points with equal keys share one engine."""
        return {"backend": asdict(self.backend), "model": asdict(self.model), "quant": self.quant,
                "workload": self.workload.group_part(), "telemetry": asdict(self.telemetry),
                "reference": asdict(self.agreement.reference), "device": self.device,
                "parallel": asdict(self.parallel)}  # another layout is another engine

    def positions(self) -> int:
        """The longest sequence any call of the point reaches: its own, the profiler window's, the
        agreement check's."""
        w, tel, a = self.workload, self.telemetry, self.agreement
        longest = max(w.new_tokens, tel.profile_steps + 1 if tel.profiling else 0, a.tokens if a.enabled else 0)
        return w.context_len + longest
