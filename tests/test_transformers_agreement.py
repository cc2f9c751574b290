"""An independent implementation agrees with torch_ref: Hugging Face transformers' GptOssForCausalLM
loads a tiny synthetic checkpoint that we wrote and its fp32 logits match ours.

transformers' dequantising MXFP4 path keeps the experts in bf16 whatever `dtype` asks for and runs
them in bf16; we upcast them to fp32 after loading (MXFP4 values are exact in bf16, so this loses
nothing) so that both sides compute in fp32 and the bounds below can be tight."""

import pytest
import torch
from transformers import GptOssConfig, GptOssForCausalLM, Mxfp4Config
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from harness.model.load_request import LoadRequest
from backends.torch_ref import TorchRef
from harness.model.rope import yarn
from harness.model.spec import SPECS

TINY = SPECS["gpt-oss-tiny"]


@pytest.fixture(scope="module")
def hf(checkpoint):
    model = GptOssForCausalLM.from_pretrained(checkpoint, quantization_config=Mxfp4Config(dequantize=True),
                                              dtype=torch.float32)
    for p in model.parameters():
        p.data = p.data.float()
    return model.eval()


@pytest.fixture(scope="module")
def ref(checkpoint):
    ref = TorchRef(device="cpu")
    ref.load(LoadRequest(TINY, "mxfp4", checkpoint, device="cpu", max_batch_size=2, max_seq_len=64))
    return ref


def tokens(T=40, seed=0):
    return torch.randint(0, TINY.vocab_size, (2, T), generator=torch.Generator().manual_seed(seed))


def test_logits_agree_with_transformers(hf, ref):
    x = tokens()  # 40 positions: past the tiny window of 16 twice
    with torch.no_grad():
        theirs = hf(x).logits.float()
    ours = ref.logits(x)
    rel = ((ours - theirs).norm() / theirs.norm()).item()
    top1 = (ours.argmax(-1) == theirs.argmax(-1)).float().mean().item()
    print(f"torch_ref vs transformers, fp32, 2x40 tokens: relative error {rel:.2e}, "
          f"max |diff| {(ours - theirs).abs().max().item():.2e}, top-1 agreement {top1:.4f}")
    assert rel < 1e-5
    assert top1 == 1.0


def test_greedy_decode_agrees_with_transformers_kv_cache(hf, ref):
    x, new = tokens(20, seed=1), 24
    theirs = []
    with torch.no_grad():
        out = hf(x, use_cache=True)
        for _ in range(new):
            theirs.append(out.logits[:, -1].argmax(-1))
            out = hf(theirs[-1][:, None], past_key_values=out.past_key_values, use_cache=True)
    assert torch.equal(ref.generate(x, new).tokens, torch.stack(theirs, 1))


@pytest.mark.parametrize("name", ["gpt-oss-20b", "gpt-oss-tiny"])
def test_yarn_agrees_with_transformers(name):
    spec = SPECS[name]
    inv_freq, factor = ROPE_INIT_FUNCTIONS["yarn"](GptOssConfig(**spec.to_hf_config("bf16")), "cpu")
    concentration, ours = yarn(spec)
    assert concentration == pytest.approx(factor, rel=1e-12)
    torch.testing.assert_close(ours, inv_freq, rtol=1e-6, atol=0)
