"""llama.cpp (backend=llama_cpp): the tokenizer given to synthetic checkpoints, the GGUF conversion
by llama.cpp's own converter (MXFP4 experts stay MXFP4), what the server's log says, and a sweep
on the CPU llama-server built by scripts/build_llama_server.sh (in CI by .ci/run)."""

from pathlib import Path

import pandas as pd
import pytest

from backends.llama_cpp import install, log
from backends.llama_cpp.gguf_checkpoint import gguf_checkpoint
from backends.llama_cpp.tokenizer import PRE_TOKENIZER, vocabulary, write_tokenizer
from bench_cli import bench, run_dirs
from harness.model.load_request import LoadRequest
from harness.model.spec import SPECS

TINY = SPECS["gpt-oss-tiny"]
SOURCES = sorted(install.ROOT.glob("build/llama.cpp/src-*/convert_hf_to_gguf.py"))
SERVERS = install.built("cpu")
needs_source = pytest.mark.skipif(not SOURCES, reason=f"no llama.cpp source under build/llama.cpp/: run "
                                                      f"{install.BUILD_SCRIPT}")
needs_server = pytest.mark.skipif(not SERVERS, reason=f"no CPU llama-server under build/: run "
                                                      f"{install.BUILD_SCRIPT} cpu")


# ---- the tokenizer of synthetic checkpoints ---------------------------------------------------------
@pytest.mark.parametrize("name", ["gpt-oss-tiny", "gpt-oss-20b"])
def test_synthetic_tokenizer_fills_the_vocabulary_with_ascii_tokens(name):
    spec = SPECS[name]
    tokens, merges = vocabulary(spec)
    assert len(tokens) == min(spec.bos_token_id, spec.eos_token_id, spec.pad_token_id)
    assert len(set(tokens)) == len(tokens)
    # Every token is spelled with the byte-level characters of bytes 0-127 (ids 0-127), so that
    # llama-server never holds one back as an unfinished UTF-8 character.
    ascii_bytes = set(tokens[:128])
    assert len(ascii_bytes) == 128 and "Ġ" in ascii_bytes and "a" in ascii_bytes
    assert all(ch in ascii_bytes for t in tokens for ch in t)
    known = set(tokens[:128])
    for (a, b), t in zip(merges, tokens[128:]):  # each merge joins two earlier tokens
        assert a in known and b in known and a + b == t
        known.add(t)


def test_synthetic_tokenizer_loads_in_transformers(tmp_path):
    from transformers import AutoTokenizer

    write_tokenizer(TINY, tmp_path)
    tok = AutoTokenizer.from_pretrained(tmp_path)
    ids = tok.encode("hello world, 3 + 4", add_special_tokens=False)
    assert ids and max(ids) < TINY.vocab_size
    assert tok.decode(ids) == "hello world, 3 + 4"
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (TINY.bos_token_id, TINY.eos_token_id,
                                                                      TINY.pad_token_id)


# ---- the GGUF ----------------------------------------------------------------------------------------
@needs_source
@pytest.mark.parametrize("quant, experts", [("mxfp4", "MXFP4"), ("bf16", "BF16")])
def test_conversion_keeps_the_expert_format_and_is_cached(tmp_path, monkeypatch, quant, experts):
    monkeypatch.setenv("GPTOSS_BENCH_CACHE", str(tmp_path))
    source = SOURCES[-1].parent
    inst = install.Install(Path("llama-server"), source, "test", "cpu")
    path = gguf_checkpoint(LoadRequest(TINY, quant, None, device="cpu"), inst)
    monkeypatch.syspath_prepend(str(source / "gguf-py"))
    from gguf import GGUFReader

    reader = GGUFReader(path)
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    for layer in range(TINY.num_hidden_layers):
        for proj in ("gate", "up", "down"):
            assert types[f"blk.{layer}.ffn_{proj}_exps.weight"] == experts
        assert types[f"blk.{layer}.attn_q.weight"] == "BF16"
    field = reader.get_field("tokenizer.ggml.tokens")
    assert len(field.data) == TINY.vocab_size
    assert reader.get_field("tokenizer.ggml.pre").contents() == PRE_TOKENIZER
    assert reader.get_field("tokenizer.ggml.eos_token_id").contents() == TINY.eos_token_id
    # Converted once: a second request finds the file (same path, untouched).
    mtime = path.stat().st_mtime_ns
    assert gguf_checkpoint(LoadRequest(TINY, quant, None, device="cpu"), inst) == path
    assert path.stat().st_mtime_ns == mtime
    assert not list(path.parent.glob("*.stage")) and not list(path.parent.glob("*.partial"))


# ---- the server's log --------------------------------------------------------------------------------
# Lines of llama-server's log on the H200 (2026-12-03, llama.cpp 0c1e57098bba built for sm_90), after
# the converter's own lines in the same worker log.
GPU_LOG = """\
INFO:hf-to-gguf:gguf: file type = 38
0.00.125.480 I cmn  common_param: system_info: n_threads = 16 (n_threads_batch = 16) / 16 | CUDA : ARCHS = 900 | USE_GRAPHS = 1 |
0.00.218.563 I llama_prepare_model_devices: using device CUDA0 (NVIDIA H200) (0000:00:06.0) - 142105 MiB free
0.00.179.244 I llama_model_loader: - type mxfp4:   72 tensors
0.00.218.462 I print_info: file type   = MXFP4 MoE
0.00.485.046 I load_tensors: offloaded 25/25 layers to GPU
0.00.485.051 I load_tensors:   CPU_Mapped model buffer size =  1104.61 MiB
0.00.485.052 I load_tensors:        CUDA0 model buffer size = 12036.68 MiB
0.02.022.914 I llama_context: flash_attn            = auto
0.02.026.628 I llama_kv_cache:      CUDA0 KV buffer size =   240.00 MiB
0.02.026.943 I llama_kv_cache:      CUDA0 KV buffer size =   144.00 MiB
0.02.028.263 I resolve_fused_ops: Flash Attention enabled
"""


def test_engine_path_and_memory_come_from_the_log():
    assert log.engine_path(GPU_LOG) == ("CUDA0 NVIDIA H200 (built for sm_90); 25/25 layers on GPU; MXFP4 MoE; "
                                        "72 mxfp4 tensors; flash_attn on")
    assert log.memory(GPU_LOG) == {"weights_gib": round(12036.68 / 1024, 4), "kv_cache_gib": round(384 / 1024, 4)}
    cpu = "print_info: file type   = BF16\nload_tensors:   CPU_Mapped model buffer size =     4.24 MiB\n" \
          "llama_context: Flash Attention not supported, set to disabled\n"
    assert log.engine_path(cpu) == "CPU; BF16; flash_attn off"
    assert log.memory(cpu) == {"weights_gib": round(4.24 / 1024, 4), "kv_cache_gib": None}
    assert log.engine_path("nothing to see") is None


# ---- bad input ---------------------------------------------------------------------------------------
def test_a_missing_server_refuses_the_sweep_in_one_line(tmp_path):
    res = bench(tmp_path, "backend=llama_cpp", "model=gpt-oss-tiny", "device=cpu", "sweep=none",
                f"backend.server={tmp_path / 'nope' / 'llama-server'}")
    assert res.returncode == 2, res.stderr
    assert "llama_cpp: backend.server=" in res.stderr and "no such file" in res.stderr
    assert "Traceback" not in res.stderr


def test_no_build_and_no_source_are_one_line_each(tmp_path, monkeypatch):
    monkeypatch.setattr(install, "ROOT", tmp_path)
    with pytest.raises(install.NotBuilt, match=r"^llama_cpp: no llama-server under .*: run scripts/build_llama_server.sh"):
        install.find(None, None, "cpu")
    server = tmp_path / "llama-server"
    server.touch()
    with pytest.raises(install.NotBuilt, match="set backend.source"):
        install.find(str(server), None, "cpu")
    with pytest.raises(install.NotBuilt, match=f"backend.source={tmp_path}: need the llama.cpp tree"):
        install.find(str(server), str(tmp_path), "cpu")


# ---- the sweep ---------------------------------------------------------------------------------------
@needs_server
def test_sweep_on_the_cpu_server_lands_ok_rows_with_agreement(tmp_path):
    res = bench(tmp_path, "-m", "backend=llama_cpp", "model=gpt-oss-tiny", "device=cpu", "quant=mxfp4",
                "workload.batch_size=1,2", "workload.context_len=32", "workload.new_tokens=8",
                "workload.repeats=2", "workload.warmup_tokens=2", "agreement.tokens=8", "telemetry=off")
    assert res.returncode == 0, res.stderr[-3000:]
    [run] = run_dirs(tmp_path)
    points = pd.read_parquet(run / "points.parquet")
    assert len(points) == 2 and (points.status == "ok").all(), points[["point_id", "status", "error"]]
    # Another implementation's numerics (ggml's CPU kernels): all 8 tokens matched torch_ref's
    # here; a near tie may flip one on another CPU, so the bar is below 1.
    assert points.agreement.ge(0.75).all(), points.agreement
    assert points.engine_path.str.match(r"CPU; MXFP4 MoE; \d+ mxfp4 tensors; flash_attn (on|off)$").all()
    assert points.weights_gib.gt(0).all() and points.kv_cache_gib.gt(0).all()
    assert points.ttft_ms.gt(0).all() and points.tpot_ms_p50.gt(0).all()
    assert points.completed_requests.eq(points.batch_size).all()
    assert points.backend_version.str.startswith("llama.cpp ").all()
