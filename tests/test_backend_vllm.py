"""vLLM offline (backend=vllm) and served (backend=vllm_serve) on the CPU, in vLLM's own
interpreter (.venv-vllm, built by scripts/setup_vllm_cpu.sh), on the tiny synthetic checkpoint in
its bf16 layout (vLLM's CPU MXFP4 kernels need AMX): the tokens against torch_ref's, the timing
shape, the MoE path from vLLM's log, and a server that fails to start or dies mid-point."""

import gzip
import importlib.util
import json
import os
import subprocess
import tempfile
from pathlib import Path

import pandas as pd
import pytest
import yaml
import torch

from harness.engine import ENGINE_LOG_DIR, DoesNotFit
from harness.model.load_request import LoadRequest
from harness.results import POINT_COLUMNS, to_table, write_atomic
from backends.torch_ref import TorchRef
from backends.vllm import VLLM, check_kv_fit, paths
from backends.vllm.log import EngineLog
from backends.vllm.profile import EngineTraces, phase_trace
from harness.telemetry.kernel_timeline import kernel_table, load_trace
from test_telemetry_kernels import Trace
from harness.model.spec import SPECS

ROOT = Path(__file__).resolve().parents[1]
VLLM_PYTHON = ROOT / ".venv-vllm" / "bin" / "python"
TINY = SPECS["gpt-oss-tiny"]
NEW_TOKENS = 8

# The tests that start a vLLM engine (~25 s each on two cores) need vLLM's interpreter.
needs_vllm = pytest.mark.skipif(not VLLM_PYTHON.exists(),
                                reason=f"no vLLM interpreter at {VLLM_PYTHON}: run scripts/setup_vllm_cpu.sh")


# ---- what is asked of vLLM and what it reports, without vLLM ---------------------------------------
def test_moe_paths_map_to_the_installed_versions_switches():
    new = paths.moe_path("flashinfer_mxfp8", has_moe_backend_flag=True)
    assert new.cli_args() == ["--moe-backend", "flashinfer_trtllm", "--quantization-config",
                              '{"moe": {"activation": "mxfp8"}}']
    assert new.engine_kwargs() == {"moe_backend": "flashinfer_trtllm",
                                   "quantization_config": {"moe": {"activation": "mxfp8"}}}
    old = paths.moe_path("flashinfer_mxfp8", has_moe_backend_flag=False)
    assert old.env == {"VLLM_USE_FLASHINFER_MOE_MXFP4_MXFP8": "1"} and old.cli_args() == []
    assert paths.moe_path("marlin", False).env == {"VLLM_MXFP4_USE_MARLIN": "1"}
    assert paths.moe_path("auto", True).engine_kwargs() == {}
    with pytest.raises(ValueError, match="moe_path='fp4'"):
        paths.moe_path("fp4", True)
    assert paths.moe_path("triton_unfused", True).cli_args() == ["--moe-backend", "triton_unfused"]
    with pytest.raises(ValueError, match="needs a vLLM with --moe-backend"):
        paths.moe_path("triton_unfused", False)


def test_admit_is_batch_or_stream():
    with pytest.raises(ValueError, match="admit='all': expected batch or stream"):
        VLLM(admit="all")


def test_engine_path_and_memory_come_from_the_log():
    log = "\n".join([
        "(Worker pid=1) INFO [cuda.py:507] Using FLASH_ATTN attention backend out of potential backends: [...]",
        "(Worker pid=1) INFO [mxfp4.py:499] Using 'TRITON' Mxfp4 MoE backend.",
        "(Worker pid=1) INFO [gpu_model_runner.py:5150] Model loading took 13.72 GiB memory and 21.3 seconds",
        "(Worker pid=1) INFO [mxfp4.py:2223] Using MoEPrepareAndFinalizeNoEP",
        "(Worker pid=2) INFO [mxfp4.py:499] Using 'TRITON' Mxfp4 MoE backend.",
        "(Worker pid=1) INFO [gpu_worker.py:760] Available KV cache memory: 52.1 GiB"])
    assert paths.engine_path(log) == "FLASH_ATTN attention; TRITON Mxfp4 MoE"
    assert paths.memory(log) == {"weights_gib": 13.72, "kv_cache_gib": 52.1}
    assert paths.engine_path("no choices here") is None


def test_jit_compilations_are_counted_in_the_part_of_the_log_a_call_wrote(tmp_path, monkeypatch):
    # two of the H200's lines (2026-12-04, streamed admission), constexprs cut short
    jit = ("(EngineCore pid=878) WARNING 12-04 01:25:00 [jit_monitor.py:132] Triton kernel JIT compilation "
           "during inference: {} (constexprs={{APPLY_SOFTMAX=True, BLOCK_M=32, stride_rn=2080}})\n")
    monkeypatch.setenv(ENGINE_LOG_DIR, str(tmp_path))
    log = EngineLog()
    with open(log.path, "a") as f:
        f.write("INFO [jit_monitor.py:79] Kernel JIT monitor activated\n" + jit.format("_topk_forward"))
    before = log.size()
    with open(log.path, "a") as f:
        f.write(jit.format("_topk_forward") + jit.format("_sum_bitmatrix_rows") + "INFO [loggers.py:310] Engine 000\n")
    assert paths.jit_compiles(log.text()) == 3
    assert paths.jit_compiles(log.text(before)) == 2  # what the last call's steps logged
    assert paths.jit_compiles(log.text(log.size())) == 0
    log.close()


def test_engine_steps_get_the_phase_of_their_requests(tmp_path):
    """vLLM's step ranges become prefill / decode ranges up to the next step; the kernel launched in a
    step counts in its phase even when it runs after the step's host range (async scheduling)."""
    t = Trace()
    t.range("execute_context_2(32)_generation_0(0)", 0, 50)  # both prompts
    t.kernel("_matmul_ogs_prefill", 10, 110, 40)  # runs in the next step's range: still prefill's
    t.range("execute_context_2(2)_generation_0(0)", 100, 20)  # async: the first decode, still "context"
    t.kernel("_matmul_ogs_decode", 105, 150, 10)
    t.range("execute_context_0(0)_generation_2(2)", 170, 20)
    t.kernel("_matmul_ogs_decode", 175, 190, 10)
    t.range("execute_context_0(0)_generation_0(0)", 220, 5)  # nothing scheduled: no phase
    source = tmp_path / "dp0_pp0_tp0.1.pt.trace.json.gz"
    with gzip.open(source, "wt") as f:
        json.dump({"traceEvents": t.events}, f)
    assert phase_trace(source, tmp_path / "out.json.gz") == 4
    events = load_trace(tmp_path / "out.json.gz")
    phases = [(e["name"], e["ts"], e["dur"]) for e in events if e["name"] in ("prefill", "decode")]
    assert phases == [("prefill", 0, 100), ("decode", 100, 70), ("decode", 170, 50)]
    table = kernel_table(events, ["prefill", "decode"]).set_index(["phase", "kernel"])
    assert table.loc[("prefill", "_matmul_ogs_prefill"), "calls"] == 1
    assert table.loc[("decode", "_matmul_ogs_decode"), "calls"] == 2
    assert table.loc[("prefill", "_matmul_ogs_prefill"), "category"] == "moe_gemm"


def test_a_window_without_a_trace_says_where_it_looked(tmp_path):
    traces = EngineTraces()
    try:
        with pytest.raises(RuntimeError, match=f"vLLM wrote no trace to {traces.dir}"):
            with traces.window(lambda: None, lambda: None, tmp_path / "out.json.gz"):
                pass
    finally:
        traces.close()
    assert not traces.dir.exists()


# ---- the engines, in vLLM's interpreter ------------------------------------------------------------
# Runs in vLLM's interpreter: load one backend, generate a point per batch size, report as JSON.
DRIVER = """
import json, os, signal, sys, torch
from harness.model.load_request import LoadRequest
from backends.vllm import VLLM, VLLMServe
from harness.model.spec import SPECS

def main():
    cfg = json.loads(sys.argv[1])
    backend = {"vllm": VLLM, "vllm_serve": VLLMServe}[cfg["backend"]](**cfg["options"])
    out = {"points": []}
    try:
        backend.load(LoadRequest(SPECS["gpt-oss-tiny"], "bf16", cfg["checkpoint"], device="cpu",
                                 max_batch_size=max(cfg["batches"]), max_seq_len=64))
        for batch in cfg["batches"]:
            g = backend.generate(torch.tensor(cfg["prompts"][:batch]), cfg["new_tokens"])
            out["points"].append({"tokens": g.tokens.tolist(), "ttft_ms": g.ttft_ms, "step_ms": g.step_ms,
                                  "columns": backend.columns(), "compiles": backend.compiles()})
        out["version"] = backend.version()
        if cfg.get("trace_dir"):  # a profiled window: vLLM's own profiler, read as the harness reads one
            from harness.telemetry import Telemetry
            tel = Telemetry({"nvml": False}, trace_dir=cfg["trace_dir"])
            with tel.point("profiled", profile=True) as pt, pt.profile(backend.profiler):
                backend.generate(torch.tensor(cfg["prompts"][:2]), 4, phases=pt.phases)
            out["kernels"] = pt.kernels().to_dict("records")
        if cfg.get("kill_server"):
            out["pgid"] = backend.server.proc.pid
            os.killpg(out["pgid"], signal.SIGKILL)
            backend.generate(torch.tensor(cfg["prompts"][:1]), cfg["new_tokens"])
    except Exception as e:
        out["error"] = f"{type(e).__name__}: {e}"
    finally:
        backend.close()
    print("RESULT " + json.dumps(out), flush=True)

if __name__ == "__main__":
    main()
"""


def run_in_vllm(backend: str, checkpoint: Path, prompts: torch.Tensor, batches=(1,), timeout_s=300, **cfg) -> dict:
    cfg = {"backend": backend, "checkpoint": str(checkpoint), "prompts": prompts.tolist(), "batches": list(batches),
           "new_tokens": NEW_TOKENS, "options": {}, **cfg}
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "VLLM_CPU_KVCACHE_SPACE": "1"}
    proc = subprocess.run([str(VLLM_PYTHON), "-c", DRIVER, json.dumps(cfg)], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=timeout_s)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, f"the driver printed no result (exit {proc.returncode}):\n{proc.stderr[-3000:]}"
    return json.loads(lines[-1][len("RESULT "):])


@pytest.fixture(scope="module")
def prompts():
    return torch.randint(0, TINY.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def ref(checkpoint):
    ref = TorchRef(device="cpu")
    ref.load(LoadRequest(TINY, "bf16", checkpoint, device="cpu", max_batch_size=2, max_seq_len=64))
    return ref


TIE = 0.25  # logits this close may swap between a bf16 engine and the fp32 reference


def check_tokens(tokens, prompts, ref) -> float:
    """Every token vLLM chose is torch_ref's greedy choice after vLLM's own prefix, or the runner-up
    of a near tie; returns the share that are the greedy choice. (Comparing free-running sequences
    instead, one tie flipped early shifts the whole rest of a sequence.)"""
    t = torch.tensor(tokens)
    p = prompts[: len(t)]
    top = ref.logits(torch.cat([p, t], 1))[:, p.shape[1] - 1: -1].topk(2, -1)
    first = top.indices[..., 0] == t
    tie = (top.indices[..., 1] == t) & (top.values[..., 0] - top.values[..., 1] < TIE)
    assert (first | tie).all(), f"tokens {t.tolist()} are not torch_ref's choices {top.indices[..., 0].tolist()}"
    return first.float().mean().item()


@pytest.mark.slow
@needs_vllm
def test_offline_engine_at_two_batch_sizes(checkpoint, prompts, ref, tmp_path):
    logs = set(Path(tempfile.gettempdir()).glob("vllm-*.log"))
    out = run_in_vllm("vllm", checkpoint, prompts, batches=(1, 2), options={"enforce_eager": True},
                      trace_dir=str(tmp_path))
    assert "error" not in out, out["error"]
    assert set(Path(tempfile.gettempdir()).glob("vllm-*.log")) <= logs  # the engine's log moved to the worker's
    assert out["version"].startswith("vllm 0.")
    for batch, point in zip((1, 2), out["points"]):
        greedy = check_tokens(point["tokens"], prompts, ref)
        print(f"vllm offline batch {batch}: ttft {point['ttft_ms']:.1f} ms, steps {point['step_ms']}, "
              f"torch_ref's greedy choice {greedy:.3f}")
        assert len(point["tokens"]) == batch and len(point["step_ms"]) == NEW_TOKENS - 1
        assert point["ttft_ms"] > 0 and min(point["step_ms"]) >= 0 and sum(point["step_ms"]) > 0
        cols = point["columns"]
        assert "MoE" in cols["engine_path"]  # e.g. "CPU Unquantized MoE; CPUUnquantizedExperts MoE"
        # the TTFT's parts, from the core's timestamps: each one inside the TTFT, together covering it;
        # the batch was added before the clock started (the scheduler paused), so nothing was
        # scheduled before it
        parts = [cols[k] for k in ("ttft_queue_ms", "ttft_prefill_ms")]
        assert min(parts) >= 0 and cols["ttft_prefill_ms"] > 0 and max(parts) <= point["ttft_ms"] + 1e-6
        assert point["ttft_ms"] <= sum(parts) + 1e-6 and cols["submit_ms"] > 0
        assert point["compiles"] == 0  # the CPU build runs no Triton kernels
    check_profiled_window(out["kernels"], tmp_path)


def check_profiled_window(kernels: list[dict], trace_dir: Path):
    """The profiled window's operators (a CPU build has no kernels) came from the engine core's
    trace, by phase, the MoE among them in both."""
    assert (trace_dir / "profiled.json.gz").exists()
    by_phase = {p: [k for k in kernels if k["phase"] == p] for p in ("prefill", "decode")}
    for phase, rows in by_phase.items():
        assert any(k["category"] == "moe_gemm" for k in rows), f"no MoE operator in {phase}: {rows}"
        assert sum(k["share"] for k in rows) == pytest.approx(1.0)


@pytest.mark.slow
@needs_vllm
def test_served_engine_then_its_death_mid_point(checkpoint, prompts, ref, tmp_path):
    out = run_in_vllm("vllm_serve", checkpoint, prompts, batches=(2,), kill_server=True,
                      options={"enforce_eager": True, "ready_timeout_s": 240}, trace_dir=str(tmp_path))
    point = out["points"][0]
    greedy = check_tokens(point["tokens"], prompts, ref)
    print(f"vllm served batch 2: ttft {point['ttft_ms']:.1f} ms, steps {point['step_ms']}, "
          f"torch_ref's greedy choice {greedy:.3f}; columns {point['columns']}")
    assert len(point["step_ms"]) == NEW_TOKENS - 1
    cols = point["columns"]
    assert (cols["completed_requests"], cols["failed_requests"], cols["concurrency"]) == (2, 0, 2)
    assert "MoE" in cols["engine_path"]
    # vLLM's own histograms of the same two requests: its TTFT starts at arrival, inside the client's
    assert 0 < cols["server_ttft_ms_mean"] <= cols["request_ttft_ms_mean"]
    assert cols["server_itl_ms_mean"] > 0 and cols["server_tpot_ms_mean"] > 0
    assert cols["server_queue_ms_mean"] >= 0 and 0 < cols["server_prefill_ms_mean"] <= cols["server_ttft_ms_mean"]
    check_profiled_window(out["kernels"], tmp_path)
    assert "vllm serve died with code -9" in out["error"]  # the killed server, named in the point's error
    with pytest.raises(ProcessLookupError):
        os.killpg(out["pgid"], 0)


@pytest.mark.slow
@needs_vllm
def test_a_server_that_cannot_start_is_an_error_with_its_log(checkpoint, prompts):
    out = run_in_vllm("vllm_serve", checkpoint, prompts, options={"serve_args": ["--kv-cache-dtype", "fp3"]},
                      timeout_s=120)
    first_line = out["error"].splitlines()[0]
    assert "vllm serve exited with code" in first_line and "invalid choice" in first_line


def test_a_batch_the_kv_cache_cannot_hold_at_once_is_a_skipped_point():
    log = ("INFO [default_loader.py:384] Model loading took 13.0 GiB memory and 4.2 seconds\n"
           "INFO [kv_cache_utils.py:2177] GPU KV cache size: 2,414,294 tokens\n"
           "INFO [kv_cache_utils.py:2178] Maximum concurrency for 8,448 tokens per request: 285.79x\n")
    spec, fit = SPECS["gpt-oss-20b"], paths.kv_fit(log)
    assert fit == (2414294, 13.0)
    check_kv_fit(spec, 256, 8448, *fit)  # 2,162,688 tokens: all 256 sequences at once
    check_kv_fit(spec, 4096, 8448, *paths.kv_fit("no engine log yet"))  # nothing to check against
    with pytest.raises(DoesNotFit, match=r"the weights and the KV cache of 512 x 8,448 tokens "
                                         r"\(2,414,294 tokens fit\)") as e:
        check_kv_fit(spec, 512, 8448, *fit)
    kv = spec.kv_cache_bytes(512, 8448)
    assert e.value.required_bytes == 13 * 2**30 + kv
    assert e.value.available_bytes == pytest.approx(13 * 2**30 + kv * 2414294 / (512 * 8448))


# ---- the timing cross-check against `vllm bench latency` (benchmarks/cross_check.py) ---------------

def cross_check_of(run, rows):
    """benchmarks/cross_check.py as a module, and `rows` written as the run folder's points."""
    spec = importlib.util.spec_from_file_location("cross_check", ROOT / "benchmarks" / "cross_check.py")
    cross_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cross_check)
    run.mkdir()
    write_atomic(to_table(pd.DataFrame(rows), POINT_COLUMNS), run / "points.parquet")
    return cross_check


def test_cross_check_sets_our_ttft_and_e2e_against_bench_latency(tmp_path, capsys):
    run = tmp_path / "ttft-batch"
    cross_check = cross_check_of(run, [
        dict(point_id=f"b{b}-c{c}", backend="vllm", status="ok", batch_size=b, context_len=c, new_tokens=256,
             ttft_ms=ttft, ttft_ms_repeat_p50=p50, ttft_cv=0.3 if p50 else None, e2e_ms=e2e, cv=0.01)
        for b, c, ttft, p50, e2e in ((1, 1024, 61.0, None, 800.0), (8, 1024, 150.0, 120.0, 1400.0),
                                     (8, 8192, 900.0, 900.0, 2500.0))])
    # bench's seconds: at batch 8 two slow first iterations leave the median alone
    for name, lat in (("latency-1x1.json", [0.060] * 8), ("latency-8x1.json", [1.3, 1.4] + [0.118] * 6),
                      ("latency-8x256.json", [1.50] * 8)):
        (tmp_path / name).write_text(json.dumps({"latencies": lat}))

    assert cross_check.main([str(run), *map(str, sorted(tmp_path.glob("latency-*.json")))]) == 1
    lines = capsys.readouterr().out.splitlines()[2:]
    # no config.yaml: admission unknown; batch 1 from before ttft_ms_repeat_p50: its mean;
    # batch 8: the median of its repeats, not their mean (150 ms, one slow repeat)
    assert lines == ["| 1 |  | TTFT mean 61.0 ms |  | 60.0 ms | 0.0% | 60.0 ms | +1.7% | yes |",
                     "| 8 |  | TTFT 120.0 ms | 30.0% | 118.0 ms | 134.0% | 118.0 ms | +1.7% | yes |",
                     "| 8 |  | e2e 1,400.0 ms | 1.0% | 1,500.0 ms | 0.0% | 1,500.0 ms | -6.7% | no |"]
    (tmp_path / "latency-64x1.json").write_text(json.dumps({"latencies": [0.8] * 8}))
    assert cross_check.main([str(run), str(tmp_path / "latency-64x1.json")]) == 1
    assert "no ok vLLM point" in capsys.readouterr().out


def test_cross_check_of_a_run_with_several_vllm_setups_takes_the_one_named(tmp_path, capsys):
    run = tmp_path / "peers"
    rows = [dict(point_id=f"{setup}-b8", backend="vllm", setup=setup, status="ok", batch_size=8, context_len=1024,
                 new_tokens=256, ttft_ms=ttft, e2e_ms=2000.0) for setup, ttft in (("moe_path=auto", 119.0),
                                                                                  ("moe_path=marlin", 240.0))]
    cross_check = cross_check_of(run, rows)
    (run / "config.yaml").write_text(yaml.safe_dump({"sweep": {"points": [
        {"point_id": r["point_id"], "config": {"backend": {"name": "vllm", "options": {"admit": admit}}}}
        for r, admit in zip(rows, ("stream", "batch"))]}}))
    (tmp_path / "latency-8x1.json").write_text(json.dumps({"latencies": [0.118] * 8}))
    latency = str(tmp_path / "latency-8x1.json")

    both = "moe_path=auto, moe_path=marlin"
    with pytest.raises(SystemExit, match=rf"several vLLM set-ups \({both}\): name the one"):
        cross_check.main([str(run), latency])
    with pytest.raises(SystemExit, match=rf"--setup moe_path=triton: no ok vLLM point .* {both}"):
        cross_check.main([str(run), latency, "--setup", "moe_path=triton"])
    assert cross_check.main([str(run), latency, "--setup", "moe_path=auto"]) == 0
    row = capsys.readouterr().out.splitlines()[2]
    assert row == "| 8 | stream | TTFT mean 119.0 ms |  | 118.0 ms | 0.0% | 118.0 ms | +0.8% | yes |"


def test_cross_check_of_rounds_judges_the_median_offset(tmp_path, capsys):
    """gpu_peers.sh's `ab` step: bench and ours in turn, a run folder and a bench JSON a round. One
    slow engine start (+20%) among rounds within 2% is not the verdict; the rounds' median is."""
    for r, ttft in ((1, 52.0), (2, 44.0), (3, 43.5)):
        cross_check = cross_check_of(tmp_path / f"ab-r{r}", [dict(
            point_id=f"b1-r{r}", backend="vllm", status="ok", batch_size=1, context_len=1024, new_tokens=256,
            ttft_ms=ttft, ttft_ms_repeat_p50=ttft, ttft_cv=0.01, e2e_ms=800.0)])
        (tmp_path / f"ab-r{r}-latency").mkdir()
        (tmp_path / f"ab-r{r}-latency" / "latency-1x1.json").write_text(json.dumps({"latencies": [0.0433] * 8}))

    assert cross_check.main(["--rounds", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(" | ")[0] for line in lines[2:]] == ["| 1", "| 2", "| 3", "| all 3"]
    assert lines[2].endswith("| +20.1% | no |") and lines[-1].endswith("| +1.6% | yes |")
    with pytest.raises(SystemExit, match="no round"):
        cross_check.main(["--rounds", str(tmp_path / "ab-r1")])
    with pytest.raises(SystemExit):  # neither a run nor rounds: argparse's one line, status 2
        cross_check.main([])
