"""vLLM offline (backend=vllm) and served (backend=vllm_serve) on the CPU, in vLLM's own
interpreter (.venv-vllm, built by scripts/setup_vllm_cpu.sh), on the tiny synthetic checkpoint in
its bf16 layout (vLLM's CPU MXFP4 kernels need AMX): the tokens against torch_ref's, the timing
shape, the MoE path from vLLM's log, and a server that fails to start or dies mid-point."""

import json
import os
import subprocess
import tempfile
from pathlib import Path

import pytest
import torch

from harness.model.load_request import LoadRequest
from backends.torch_ref import TorchRef
from backends.vllm import paths
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
                                  "columns": backend.columns()})
        out["version"] = backend.version()
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
def test_offline_engine_at_two_batch_sizes(checkpoint, prompts, ref):
    logs = set(Path(tempfile.gettempdir()).glob("vllm-*.log"))
    out = run_in_vllm("vllm", checkpoint, prompts, batches=(1, 2), options={"enforce_eager": True})
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
        # the TTFT's parts, from the core's timestamps: each one inside the TTFT, together covering it
        parts = [cols[k] for k in ("ttft_submit_ms", "ttft_queue_ms", "ttft_prefill_ms")]
        assert min(parts) >= 0 and cols["ttft_prefill_ms"] > 0 and max(parts) <= point["ttft_ms"] + 1e-6
        assert point["ttft_ms"] <= sum(parts) + 1e-6


@pytest.mark.slow
@needs_vllm
def test_served_engine_then_its_death_mid_point(checkpoint, prompts, ref):
    out = run_in_vllm("vllm_serve", checkpoint, prompts, batches=(2,), kill_server=True,
                      options={"enforce_eager": True, "ready_timeout_s": 240})
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
