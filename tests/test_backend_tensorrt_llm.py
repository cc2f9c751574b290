"""The TensorRT-LLM adapter against the stand-in `tensorrt_llm` (tests/stand_ins), which holds the
real signatures of the calls the adapter makes and streams torch_ref's greedy tokens: offline
through LLM.generate_async(streaming=True), served through the stand-in trtllm-serve."""

import os
import sys
from pathlib import Path

import pytest
import torch

from harness.model.load_request import LoadRequest
from backends.tensorrt_llm import TensorRTLLM, TensorRTLLMServe
from backends.torch_ref import TorchRef
from harness.model.spec import SPECS

STAND_INS = Path(__file__).resolve().parent / "stand_ins"
ROOT = Path(__file__).resolve().parents[1]
TINY = SPECS["gpt-oss-tiny"]


@pytest.fixture(autouse=True)
def stand_in(monkeypatch):
    """`import tensorrt_llm` finds the stand-in, here and in the server it starts."""
    monkeypatch.syspath_prepend(str(STAND_INS))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(STAND_INS), str(ROOT), os.environ.get("PYTHONPATH", "")]))
    yield
    for name in [m for m in sys.modules if m == "tensorrt_llm" or m.startswith("tensorrt_llm.")]:
        del sys.modules[name]


@pytest.fixture(scope="module")
def ref(checkpoint):
    ref = TorchRef(device="cpu")
    ref.load(LoadRequest(TINY, "mxfp4", checkpoint, device="cpu", max_batch_size=2, max_seq_len=64))
    return ref


def request(checkpoint, **kw):
    return LoadRequest(TINY, "mxfp4", checkpoint, device="cpu", max_batch_size=2, max_seq_len=64, **kw)


def prompts(batch=2, length=12):
    return torch.randint(0, TINY.vocab_size, (batch, length), generator=torch.Generator().manual_seed(1))


def test_offline_streams_the_engines_tokens_with_per_token_times(checkpoint, ref):
    from tensorrt_llm.llmapi.llm import STEP_S

    backend = TensorRTLLM(moe_backend="TRITON", cuda_graphs=True)
    backend.load(request(checkpoint))
    p = prompts()
    gen = backend.generate(p, 5)
    assert torch.equal(gen.tokens, ref.generate(p, 5).tokens)
    assert gen.ttft_ms > 0 and len(gen.step_ms) == 4
    assert sum(gen.step_ms) >= 4 * STEP_S * 1e3 * 0.9  # the stand-in engine takes STEP_S per token
    args = backend.llm.args
    assert (args["moe_config"].backend, args["cuda_graph_config"].max_batch_size) == ("TRITON", 2)
    assert args["kv_cache_config"].enable_block_reuse is False
    assert backend.columns()["engine_path"] == "requested moe=TRITON attn=TRTLLM cuda_graphs=True"
    assert "stand-in" in backend.version()
    with pytest.raises(NotImplementedError):
        backend.generate(p, 3, forced=torch.zeros(2, 2, dtype=torch.long))
    backend.close()


def test_engine_options_are_checked(checkpoint):
    with pytest.raises(ValueError, match="moe_backend='MARLIN'"):
        TensorRTLLM(moe_backend="MARLIN")
    backend = TensorRTLLM(cuda_graphs=False, llm_args={"max_num_tokens": 256})
    backend.load(request(checkpoint))
    assert backend.llm.args["cuda_graph_config"] is None and backend.llm.args["max_num_tokens"] == 256
    with pytest.raises(ValueError, match="invalid argument: enable_cuda_graph"):
        TensorRTLLM(llm_args={"enable_cuda_graph": True}).load(request(checkpoint))


def test_served_through_trtllm_serve(checkpoint):
    backend = TensorRTLLMServe(serve_command=[sys.executable, "-m", "tensorrt_llm.commands.serve"],
                               ready_timeout_s=120, moe_backend="CUTLASS")
    backend.load(request(checkpoint, seed=5))
    try:
        gen = backend.generate(prompts(), 4)
        cols = backend.columns()
    finally:
        backend.close()
    assert (gen.tokens == -1).all()  # trtllm-serve streams no token ids
    assert len(gen.step_ms) == 3 and gen.ttft_ms > 0
    assert (cols["completed_requests"], cols["failed_requests"]) == (2, 0)
    assert cols["engine_path"].startswith("requested moe=CUTLASS")
