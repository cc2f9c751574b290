"""`gptoss-explain`: how GPT-OSS's MXFP4 experts run on this GPU, in well under a minute.

    gptoss-explain                                  # this machine: GPU, ceilings, each engine's path
    gptoss-explain --run results/<run_id>           # plus MXFP4 against bf16 from that run
    gptoss-bench sweep=explain backend=triton_mxfp4 -m model=gpt-oss-20b,gpt-oss-120b   # makes such a run

It prints, and writes one self-contained HTML page (-o, default reports/explain.html):
  - the GPU: name, compute capability, SMs, memory, power limit, FP4 tensor cores yes/no, and its
    ceilings measured (harness.analysis.calibration, cached per GPU and driver) beside the datasheet;
  - per engine installed here the MXFP4 path it takes on this GPU, with evidence: ours from a short
    profiled window of triton_mxfp4 on gpt-oss-20b synthetic weights built in device memory, at
    batch 1 and batch 64, through the harness's own worker process (the kernel names, mapped to
    paths by harness.analysis.mxfp4_paths), and its dispatch by batch where the engine describes it;
    vLLM asked in its own interpreter (conf/backend/vllm.yaml `python`);
  - the documented table: sm_80 .. sm_120 x vLLM, TensorRT-LLM, SGLang, llama.cpp, ours, each cell
    with its engine version and source, documented, not measured.
Without a GPU it prints the CPU, says there is no GPU path, and the documented table; exit 0.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import tempfile
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

from omegaconf import OmegaConf
from rich.console import Console
from rich.table import Table

from harness.analysis import mxfp4_paths
from harness.analysis.calibration import Ceilings, calibrate, fp4_tensor_cores
from harness.analysis.explanation import Ceiling, EngineFinding, Explanation, GpuFacts
from harness.analysis.hardware import gpu_peak
from harness.analysis.quant_comparison import DECODE_BATCHES, compare_quants
from harness.model.spec import get_spec
from harness.results import cpu_model, load, run_dirs
from harness.cli import CONF as CONF_DIR
from harness.config import BackendChoice, ModelChoice, TelemetryConfig, Workload
from harness.runner import messages as M
from harness.runner.worker_process import REPO_ROOT, WorkerDied, WorkerProcess, WorkerTimeout

CONF = Path(CONF_DIR)
PROFILED = ((1, 128), (64, 128))  # (batch, context): the GEMV regime and the grouped one
# A log file or pipe without COLUMNS: rich would assume 80 columns and wrap every cell of the tables.
console = Console(width=None if sys.stdout.isatty() or "COLUMNS" in os.environ else 160)


# ---- the GPU --------------------------------------------------------------------------------------
def gpu_facts(torch) -> GpuFacts | None:
    if not torch.cuda.is_available():
        return None
    props = torch.cuda.get_device_properties(0)
    cc = f"{props.major}.{props.minor}"
    return GpuFacts(props.name, cc, mxfp4_paths.arch_of(cc), props.multi_processor_count,
                    props.total_memory / 2**30, _power_limit_w(), fp4_tensor_cores((props.major, props.minor)))


def _power_limit_w() -> float | None:
    from harness.telemetry import nvml_sampler
    try:
        handles = nvml_sampler.open_devices([0])
    except nvml_sampler.NvmlUnavailable:
        return None
    try:
        return nvml_sampler.gpu_facts(handles, [{}])["gpus"][0]["power_limit_w"]
    finally:
        nvml_sampler.pynvml.nvmlShutdown()


def ceilings_table(measured: Ceilings | None, gpu_name: str | None) -> list[Ceiling]:
    peak = gpu_peak(gpu_name)
    # fp8/fp4 datasheet figures: GpuPeak fields where the hardware table has them
    sheet = {k: getattr(peak, k, None) for k in ("mem_bw_bytes_s", "bf16_flops", "fp8_flops", "fp4_flops")}
    m = measured.to_dict() if measured is not None else {}

    def scaled(v):
        return None if v is None else v / 1e12

    return [Ceiling("copy bandwidth (read + write)", "TB/s", scaled(m.get("copy_bytes_s")), scaled(sheet["mem_bw_bytes_s"])),
            Ceiling("bf16 dense matmul", "TFLOP/s", scaled(m.get("bf16_flops")), scaled(sheet["bf16_flops"])),
            Ceiling("fp8 e4m3 matmul", "TFLOP/s", scaled(m.get("fp8_flops")), scaled(sheet["fp8_flops"])),
            Ceiling("fp4 block-scaled matmul", "TFLOP/s", scaled(m.get("fp4_flops")), scaled(sheet["fp4_flops"]))]


# ---- our engine: a profiled window through the worker ---------------------------------------------
def _yaml(path: Path) -> dict:
    return OmegaConf.to_container(OmegaConf.load(path), resolve=True)


def profile_ours(model: str, cache_dir: Path, log_path: Path) -> tuple[list[tuple[int, str, str, str, str]], str | None]:
    """Kernel evidence of triton_mxfp4 at each PROFILED shape: (batch, phase, kernel, engine, path)
    rows, and an error line when the window could not run."""
    backend = BackendChoice.from_yaml(_yaml(CONF / "backend" / "triton_mxfp4.yaml"))
    workload = Workload(**{**_yaml(CONF / "workload" / "default.yaml"), "new_tokens": 4, "warmup": 1,
                           "warmup_tokens": 2, "repeats": 1})
    telemetry = TelemetryConfig.from_cfg({**_yaml(CONF / "telemetry" / "default.yaml"), "nvml": False, "nvtx": False,
                                          "profile": "all", "profile_steps": 4})
    worker = WorkerProcess(backend.python, log_path)
    rows = []
    try:
        worker.request(None, 120)
        with tempfile.TemporaryDirectory() as traces:
            loaded = worker.request(M.Load(backend, ModelChoice(model, None, "device"), "mxfp4", workload, "cuda",
                                           telemetry, str(cache_dir), traces, max(b for b, _ in PROFILED),
                                           max(c for _, c in PROFILED) + 8), 600)
            if loaded.status != "ok":
                return rows, f"triton_mxfp4 did not load: {loaded.error} ({log_path})"
            for batch, context in PROFILED:
                res = worker.request(M.RunPoint(f"explain-b{batch}", replace(workload, batch_size=batch,
                                                                            context_len=context)), 300)
                if res.status != "ok":
                    return rows, f"batch {batch}: {res.error} ({log_path})"
                k = res.data["kernels"]
                names = [dict(zip(k["columns"], r)) for r in k["data"]] if k else []
                for phase in ("prefill", "decode"):
                    in_phase = [r["kernel"] for r in names if r.get("phase") == phase]
                    rows += [(batch, phase, *hit) for hit in mxfp4_paths.classify_kernels(in_phase)]
    except (WorkerTimeout, WorkerDied) as e:
        return rows, f"the triton_mxfp4 worker failed: {e} ({log_path})"
    finally:
        worker.close()
    return rows, None


def our_dispatch(model: str) -> list[str]:
    """The engine's own MoE dispatch by batch, where its class describes it (`moe_dispatch`)."""
    from harness.runner.point import load_class
    cls = load_class(BackendChoice.from_yaml(_yaml(CONF / "backend" / "triton_mxfp4.yaml")).target)
    describe = getattr(cls, "moe_dispatch", None)
    if describe is None:
        return []
    return [f"batch {lo}{'+' if hi is None else '' if hi == lo else f'-{hi}'}: {kernel}"
            for lo, hi, kernel in describe(get_spec(model))]


def ours(gpu: GpuFacts | None, model: str, cache_dir: Path, log_path: Path, profile: bool) -> EngineFinding:
    doc = mxfp4_paths.documented("ours", gpu.arch if gpu else None)
    if gpu is None:
        return EngineFinding("ours (triton_mxfp4)", "installed (runs on a CPU only in Triton's interpreter)",
                             "no GPU here: no MXFP4 path to take", None, "-")
    finding = EngineFinding("ours (triton_mxfp4)", "installed", doc.path if doc else "-",
                            doc.native_fp4 if doc else None, "documented", [doc.options] if doc else [])
    finding.evidence += our_dispatch(model)
    if profile:
        rows, error = profile_ours(model, cache_dir, log_path)
        if rows:
            finding.basis = "observed"
            finding.evidence += [f"batch {b} {phase}: {kernel} -> {path}" for b, phase, kernel, _, path in rows]
        if error:
            finding.evidence.append(error)
    return finding


# ---- other engines --------------------------------------------------------------------------------
def vllm(gpu: GpuFacts | None) -> EngineFinding:
    python = _yaml(CONF / "backend" / "vllm.yaml").get("python")
    if python and "/" in python:
        python = str(REPO_ROOT / python)
    if not python or not os.access(python, os.X_OK):
        return EngineFinding("vLLM", f"not installed (conf/backend/vllm.yaml python: {python})", "-", None, "-")
    doc = mxfp4_paths.documented("vLLM", gpu.arch if gpu else None)
    answer = mxfp4_paths.ask_vllm(python)
    if answer.backend is not None and gpu is not None:
        evidence = [f"vLLM {answer.version} priority list on cc {answer.capability}: " + ", ".join(
            f"{b} {'yes' if ok else 'no' if ok is False else '?'}" for b, ok, _ in answer.priority),
            "at load it logs \"Using '<backend>' Mxfp4 MoE backend\": the engine_path column"]
        return EngineFinding("vLLM", f"vLLM {answer.version} ({python})", answer.backend,
                             "MXFP8" in answer.backend, "asked", evidence)
    return EngineFinding("vLLM", f"vLLM {answer.version or '?'} ({python})", doc.path if doc else "-",
                         doc.native_fp4 if doc else None, "documented" if doc else "-",
                         [answer.error or "vLLM's priority list accepted no backend on this device"])


def module_engine(name: str, module: str, gpu: GpuFacts | None) -> EngineFinding:
    if importlib.util.find_spec(module) is None:
        return EngineFinding(name, f"not installed ({module} does not import here)", "-", None, "-")
    if name == "transformers":
        kernels = importlib.util.find_spec("kernels") is not None
        path = ("MXFP4 kernels from the `kernels` hub package (triton_kernels matmul_ogs, W4A16)" if kernels and gpu
                else "experts dequantised to bf16 at load (no `kernels` package or no GPU)")
        return EngineFinding(name, "installed", path, False, "documented",
                             ["the backend reports what ran in the engine_path column"])
    doc = mxfp4_paths.documented(name, gpu.arch if gpu else None)
    return EngineFinding(name, "installed", doc.path if doc else "-", doc.native_fp4 if doc else None,
                         "documented" if doc else "-")


# ---- the whole page -------------------------------------------------------------------------------
def explain(model: str, cache_dir: Path, run: str | None, log_path: Path, profile: bool) -> Explanation:
    import torch
    import triton

    gpu = gpu_facts(torch)
    notes = []
    measured = calibrate("cuda", cache_dir) if gpu is not None else None
    if gpu is None:
        notes.append("No CUDA GPU here: nothing runs MXFP4 on this machine; the table below is what each engine "
                     "documents for the architectures it supports.")
    elif gpu.arch is None:
        notes.append(f"compute capability {gpu.compute_capability} is not in the documented table.")
    engines = [ours(gpu, model, cache_dir, log_path, profile), vllm(gpu),
               module_engine("TensorRT-LLM", "tensorrt_llm", gpu), module_engine("transformers", "transformers", gpu),
               EngineFinding("llama.cpp", "not configured (no conf/backend yaml)", "-", None, "-")]
    comparison = []
    if run is not None:
        comparison = compare_quants(load(run_dirs(run)))
    return Explanation(
        created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"), cpu=cpu_model(),
        software={"python": sys.version.split()[0], "torch": torch.__version__, "triton": triton.__version__,
                  "CUDA (torch build)": str(torch.version.cuda)},
        gpu=gpu, ceilings=ceilings_table(measured, gpu.name if gpu else None), engines=engines,
        documented=list(mxfp4_paths.DOCUMENTED), comparison=comparison, run=run, notes=notes)


def _num(v, fmt=".3g") -> str:
    return "-" if v is None else format(v, fmt)


def print_explanation(x: Explanation) -> None:
    console.print(f"[bold]gptoss-explain[/bold] {x.created_at}   CPU: {x.cpu}   " +
                  "  ".join(f"{k} {v}" for k, v in x.software.items()), soft_wrap=True)
    if x.gpu is None:
        console.print("GPU: none (no CUDA device): no GPU path", soft_wrap=True)
    else:
        g = x.gpu
        console.print(f"GPU: {g.name}  cc {g.compute_capability} ({g.arch or '?'})  {g.sms} SMs  "
                      f"{g.memory_gib:.0f} GiB  power limit {_num(g.power_limit_w, '.0f')} W  "
                      f"FP4 tensor cores: {'yes' if g.fp4_tensor_cores else 'no'}", soft_wrap=True)
        t = Table(title="ceilings: measured here vs datasheet")
        for c in ("ceiling", "unit", "measured", "datasheet", "measured / datasheet"):
            t.add_column(c)
        for c in x.ceilings:
            t.add_row(c.what, c.unit, _num(c.measured), _num(c.datasheet), _num(c.share, ".0%"))
        console.print(t)
    for note in x.notes:
        console.print(note, soft_wrap=True)
    t = Table(title="MXFP4 path per engine on this machine")
    for c in ("engine", "here", "path", "native FP4", "basis", "evidence"):
        t.add_column(c, overflow="fold")
    for e in x.engines:
        t.add_row(e.engine, e.here, e.path, {True: "yes", False: "no", None: "-"}[e.native_fp4], e.basis,
                  "\n".join(e.evidence))
    console.print(t)
    t = Table(title="documented, not measured: default MXFP4 path per architecture (versions and sources: the page)")
    t.add_column("arch")
    for e in mxfp4_paths.ENGINES:
        t.add_column(e, overflow="fold")
    grid = {(p.arch, p.engine): p.short for p in x.documented}
    for a in mxfp4_paths.ARCHS:
        here = x.gpu is not None and x.gpu.arch == a
        t.add_row(f"{a} (here)" if here else a, *(grid.get((a, e), "-") for e in mxfp4_paths.ENGINES),
                  style="bold" if here else None)
    console.print(t)
    if x.comparison:
        t = Table(title=f"MXFP4 vs bf16, from {x.run}")
        for c in ("model", "backend", "quant", "weights GiB", *(f"TPOT b{b} ms" for b in DECODE_BATCHES),
                  "prefill 8k tok/s", "prefill MFU", "J/token b1", "longest ctx b1"):
            t.add_column(c)
        for r in x.comparison:
            if not r.fits:
                t.add_row(r.model, r.backend, r.quant, f"does not fit: needs {r.required_gib:.0f} GiB")
                continue
            t.add_row(r.model, r.backend, r.quant, _num(r.weights_gib, ".1f"),
                      *(_num(r.tpot_ms.get(b)) for b in DECODE_BATCHES), _num(r.prefill_tok_s, ",.0f"),
                      _num(r.prefill_mfu, ".1%"), _num(r.energy_j_per_tok), _num(r.longest_context, ","))
        console.print(t)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="gptoss-explain", description=__doc__.split("\n")[0])
    ap.add_argument("-o", "--out", type=Path, default=Path("reports/explain.html"), help="the HTML page to write")
    ap.add_argument("--run", help="a run folder of `gptoss-bench sweep=explain`: summarise MXFP4 against bf16")
    ap.add_argument("--model", default="gpt-oss-20b", help="the model of our engine's profiled window")
    ap.add_argument("--cache-dir", type=Path,
                    default=Path(os.environ.get("GPTOSS_BENCH_CACHE", "~/.cache/gptoss-bench")).expanduser(),
                    help="calibration cache (<cache-dir>/calibration/)")
    ap.add_argument("--no-profile", action="store_true", help="skip our engine's profiled window")
    args = ap.parse_args(argv)
    if args.run is not None:
        try:
            run_dirs(args.run)
        except FileNotFoundError as e:
            ap.exit(2, f"gptoss-explain: --run {e}\n")
    try:
        get_spec(args.model)
    except KeyError as e:
        ap.exit(2, f"gptoss-explain: --model: {e.args[0]}\n")
    from harness.report.explain_page import write_explain_page

    args.out.parent.mkdir(parents=True, exist_ok=True)
    x = explain(args.model, args.cache_dir, args.run, args.out.with_suffix(".worker.log"), not args.no_profile)
    print_explanation(x)
    console.print(f"page: {write_explain_page(x, args.out)}", soft_wrap=True)


if __name__ == "__main__":
    main()
