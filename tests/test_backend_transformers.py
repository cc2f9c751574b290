"""backend=transformers on the CPU: Hugging Face's GptOssForCausalLM on the tiny synthetic
checkpoint, driven step by step over its DynamicCache, against torch_ref on the same weights; the
bf16 layout of the checkpoint gives the same model; a 120b that cannot fit a GPU is refused before
anything is written or allocated."""

import pytest
import torch

from harness.engine import DoesNotFit, LoadRequest
from backends.torch_ref import TorchRef
from backends.transformers import Transformers
from harness.model.bf16_checkpoint import bf16_checkpoint
from harness.model.spec import SPECS

TINY = SPECS["gpt-oss-tiny"]
NEW = 10


def request(checkpoint, quant="mxfp4"):
    return LoadRequest(TINY, quant, checkpoint, device="cpu", max_batch_size=2, max_seq_len=64)


@pytest.fixture(scope="module")
def ref(checkpoint):
    ref = TorchRef(device="cpu")
    ref.load(request(checkpoint))
    return ref


@pytest.fixture(scope="module")
def hf(checkpoint):
    backend = Transformers(dtype="float32")
    backend.load(request(checkpoint))
    return backend


@pytest.fixture(scope="module")
def prompts():
    return torch.randint(0, TINY.vocab_size, (2, 24), generator=torch.Generator().manual_seed(0))


def test_greedy_decode_matches_torch_ref(hf, ref, prompts):
    gen = hf.generate(prompts, NEW)  # 24 + 10 positions: past the window of 16
    assert torch.equal(gen.tokens, ref.generate(prompts, NEW).tokens)
    assert gen.ttft_ms > 0 and len(gen.step_ms) == NEW - 1
    assert hf.columns()["engine_path"].startswith("mxfp4 dequantised to bf16; dtype=float32")
    mem = hf.memory()
    assert mem["weights_gib"] > 0 and mem["kv_cache_gib"] > 0


def test_forced_tokens_feed_the_cache_like_torch_ref(hf, ref, prompts):
    forced = torch.randint(0, TINY.vocab_size, (2, NEW - 1), generator=torch.Generator().manual_seed(1))
    ours = hf.generate(prompts, NEW, forced=forced).tokens
    assert torch.equal(ours, ref.generate(prompts, NEW, forced=forced).tokens)


def test_prefill_logits_match_torch_ref(hf, ref, prompts):
    with torch.no_grad():
        theirs = hf.model(input_ids=prompts).logits.float()
    ours = ref.logits(prompts)
    rel = ((ours - theirs).norm() / ours.norm()).item()
    print(f"transformers fp32 vs torch_ref fp32 logits: relative error {rel:.2e}")
    assert rel < 1e-4


def test_bf16_weights_and_the_bf16_layout_give_the_same_model(checkpoint, hf, prompts):
    want = hf.generate(prompts, NEW).tokens
    for quant, ckpt in (("bf16", checkpoint), ("bf16", bf16_checkpoint(checkpoint))):
        backend = Transformers(dtype="float32")
        backend.load(request(ckpt, quant))
        assert torch.equal(backend.generate(prompts, NEW).tokens, want)
    assert backend.columns()["engine_path"].startswith("bf16;")
    with pytest.raises(ValueError, match="quant=mxfp4 needs an MXFP4 checkpoint"):
        Transformers().load(request(bf16_checkpoint(checkpoint), "mxfp4"))


def test_bfloat16_agrees_with_torch_ref(checkpoint, ref, prompts):
    backend = Transformers(dtype="bfloat16")
    backend.load(request(checkpoint))
    agree = (backend.generate(prompts, NEW).tokens == ref.generate(prompts, NEW).tokens).float().mean().item()
    print(f"transformers bf16 vs torch_ref fp32 greedy agreement: {agree:.3f}")
    assert agree >= 0.9


def test_a_120b_that_cannot_fit_is_refused_before_loading(monkeypatch):
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (40 * 2**30, 80 * 2**30))
    spec = SPECS["gpt-oss-120b"]
    load = LoadRequest(spec, "mxfp4", None, device="cuda", max_batch_size=1, max_seq_len=2048)
    # Both ways of holding the experts, whether or not the `kernels` package is installed (newer
    # transformers require it). checkpoint None: the 65 GB synthetic one is never written.
    for dequantize, weights in ((True, "bf16"), (False, "mxfp4")):
        with pytest.raises(DoesNotFit) as e:
            Transformers(device="cuda", dequantize=dequantize).load(load)
        assert e.value.required_bytes >= spec.weight_bytes(weights)  # dequantised ~233 GB, MXFP4 ~65 GB
        assert e.value.available_bytes == 40 * 2**30
