"""triton_mxfp4 end to end against torch_ref on the same synthetic weights: the prompt's next-token
logits, then teacher-forced decode steps (both engines fed the same tokens), compared by relative
error of the logits and agreement of their argmax. On a CPU the tiny model runs in Triton's
interpreter; the gpu tests run the full 20b and 120b."""

import dataclasses
import gc

import pytest
import torch

from harness.engine import DoesNotFit, LoadRequest
from backends.torch_ref import TorchRef
from backends.triton_mxfp4 import TritonMxfp4, model
from harness.model import mxfp4
from harness.model.checkpoint import write_checkpoint
from harness.model.spec import SPECS, weight_format
from harness.model.synthetic import SyntheticWeights

DEV = "cuda" if torch.cuda.is_available() else "cpu"


def request(name, quant="mxfp4", batch=2, seq=64, **kw):
    return LoadRequest(SPECS[name], quant, None, seed=1, max_batch_size=batch, max_seq_len=seq, device=DEV, **kw)


def inputs(spec, batch, context, steps, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, spec.vocab_size, (batch, context), generator=g),
            torch.randint(0, spec.vocab_size, (batch, steps), generator=g))


@torch.inference_mode()
def reference_logits(req, prompts, forced):
    """torch_ref's logits [steps+1, B, V] on the CPU, computed in fp32 on any device: after the prompt,
    then after each forced token."""
    ref = TorchRef(dtype="float32")
    ref.load(req)
    m, cache = ref.model, ref.cache
    out = [m(prompts.to(ref.device), 0, cache, last_only=True)[:, -1].cpu()]
    for i in range(forced.shape[1]):
        out.append(m(forced[:, i, None].to(ref.device), prompts.shape[1] + i, cache)[:, -1].cpu())
    ref.close()
    del ref, m, cache
    gc.collect()
    return torch.stack(out)


def engine_logits(backend, prompts, forced):
    """The engine's logits the same way, and the greedy tokens it returned."""
    B = prompts.shape[0]
    toks = [backend.prefill(prompts.to(backend.device))]
    out = [backend.engine.logits[:B].to("cpu", copy=True)]
    for i in range(forced.shape[1]):
        toks.append(backend.decode(forced[:, i].to(backend.device)))
        out.append(backend.engine.logits[:B].to("cpu", copy=True))
    return torch.stack(out), torch.stack(toks).cpu()


def compare(logits, ref):
    """(median and max over positions and sequences of the logits' relative error, top-1 agreement)."""
    assert not logits.isnan().any()
    err = (logits - ref).norm(dim=-1) / ref.norm(dim=-1)
    agree = (logits.argmax(-1) == ref.argmax(-1)).float().mean().item()
    return err.median().item(), err.max().item(), agree


@pytest.mark.slow  # ~1 min in the interpreter, most of it the MoE's gemv kernel
def test_tiny_end_to_end_matches_torch_ref():
    """Past the sliding window (16) in the prompt and further while decoding."""
    req = request("gpt-oss-tiny", batch=3, seq=32)
    prompts, forced = inputs(req.spec, 2, 20, 3)
    ref = reference_logits(req, prompts, forced)
    eng = TritonMxfp4()
    eng.load(req)
    logits, toks = engine_logits(eng, prompts, forced)
    _, err, agree = compare(logits, ref)
    assert err < 3e-2 and agree >= 0.9, (err, agree)
    assert torch.equal(toks, logits.argmax(-1)), "returned tokens are the argmax of the logits"
    again = eng.generate(prompts, 1)  # through StepBackend.generate: a fresh prefill starts over
    assert torch.equal(again.tokens[:, 0], toks[0]) and again.step_ms == []
    mem = eng.memory()
    assert mem["kv_cache_gib"] == eng.engine.cache.nbytes / 2**30 and mem["weights_gib"] > 0


@pytest.mark.slow  # two prefills and decode steps of 3 sequences in the interpreter
def test_a_prefill_past_prefill_tokens_runs_in_groups_of_sequences(monkeypatch):
    """A batch whose prefill would pass PREFILL_TOKENS runs in groups of whole sequences (bounding
    its activations), each group into its own rows of the KV cache: the same logits as one pass,
    and decoding goes on from every row."""
    eng = TritonMxfp4()
    eng.load(request("gpt-oss-tiny", batch=3, seq=16))
    prompts, forced = inputs(eng.engine.spec, 3, 8, 1)
    whole, whole_toks = engine_logits(eng, prompts, forced)
    passes = []
    layers = eng.engine._layers

    def spy(x, batch, tokens, decode, first=0):
        passes.append((batch, first, decode))
        return layers(x, batch, tokens, decode, first)

    monkeypatch.setattr(eng.engine, "_layers", spy)
    monkeypatch.setattr(model, "PREFILL_TOKENS", 16)  # two sequences a pass: groups of 2 and 1
    grouped, grouped_toks = engine_logits(eng, prompts, forced)
    assert passes[:2] == [(2, 0, False), (1, 2, False)]
    err = ((grouped - whole).norm(dim=-1) / whole.norm(dim=-1)).max().item()
    assert err < 1e-2, err
    assert torch.equal(grouped_toks, whole_toks)


def test_decode_beyond_the_cache_is_an_error():
    eng = TritonMxfp4()
    eng.load(request("gpt-oss-tiny", batch=1, seq=4))
    prompts, _ = inputs(eng.engine.spec, 1, 4, 0)
    eng.prefill(prompts)
    with pytest.raises(ValueError, match="max_seq_len"):
        eng.decode(torch.zeros(1, dtype=torch.int64))
    with pytest.raises(ValueError, match="batch"):
        eng.prefill(torch.zeros(2, 4, dtype=torch.int64))


def checkpoint_tensors(weights, quant):
    """The synthetic tensors in a checkpoint's layout: mxfp4 as generated, or bf16 with the experts
    dequantised into x @ W form [E, in, out] (exact: E2M1 times a power of two fits bf16)."""
    for name, (shape, _) in weights.spec.tensors(quant).items():
        if quant == "bf16" and name.endswith(("gate_up_proj", "down_proj")):
            w = mxfp4.dequantize(weights.get(name + "_blocks"), weights.get(name + "_scales"))
            yield name, w.transpose(1, 2).contiguous()
        else:
            yield name, weights.get(name)


@pytest.mark.slow  # three loads and prefills in the interpreter
def test_checkpoints_load_the_same_model(tmp_path):
    """From a checkpoint on disk, MXFP4 or bf16 layout (re-quantised exactly), the engine computes
    what it computes from the synthetic weights made in memory."""
    req = request("gpt-oss-tiny", batch=1, seq=4)
    prompts, _ = inputs(req.spec, 1, 4, 0)
    logits = []
    for quant in (None, "mxfp4", "bf16"):
        if quant is not None:
            req.checkpoint = write_checkpoint(tmp_path / quant, req.spec,
                                              checkpoint_tensors(SyntheticWeights(req.spec, req.seed), quant), quant)
        eng = TritonMxfp4()
        eng.load(req)
        eng.prefill(prompts)
        logits.append(eng.engine.logits[:1].clone())
    assert torch.equal(logits[0], logits[1]) and torch.equal(logits[0], logits[2])


def test_kernel_categories():
    eng = TritonMxfp4()
    assert eng.kernel_category("_attn_decode_kernel") == "attention"
    assert eng.kernel_category("_rope_kv_kernel") == "rope"
    assert eng.kernel_category("_lm_head_kernel") == "lm_head"
    assert eng.kernel_category("_add_rmsnorm_kernel") == "norm"
    assert eng.kernel_category("_topk_kernel") == "router"
    assert eng.kernel_category("_combine_kernel") == "moe_gemm"
    assert eng.kernel_category("_router_gemv_kernel") == eng.kernel_category("_router_dot_kernel") == "router"
    # names seen on an H100 when the decode graph replays: cuBLAS QKV/O projections
    assert eng.kernel_category("nvjet_sm90_tst_64x8_64x16_4x1_v_bz_splitK_bias_TNT") == "attention"
    assert eng.kernel_category("void cublasLt::splitKreduce_kernel<32, 16, int, float, __nv_bfloat16>") == "attention"
    assert eng.kernel_category("void cutlass::device_kernel<GemmUniversal<GroupProblemShape<>>>") == "moe_gemm"
    assert eng.kernel_category("void at::native::reduce_kernel") is None


@pytest.mark.gpu
def test_bf16_120b_does_not_fit_one_gpu():
    free, _ = torch.cuda.mem_get_info()
    if SPECS["gpt-oss-120b"].weight_bytes("bf16") <= free:
        pytest.skip("this GPU holds the bf16 120b")
    with pytest.raises(DoesNotFit) as e:
        TritonMxfp4().load(request("gpt-oss-120b", "bf16", batch=1, seq=1024))
    assert e.value.required_bytes > free


@pytest.mark.gpu
def test_cuda_graph_replay_equals_eager():
    req = request("gpt-oss-tiny", batch=4, seq=96)
    prompts, forced = inputs(req.spec, 4, 70, 5)
    runs = []
    for graphs in (False, True):
        eng = TritonMxfp4(cuda_graphs=graphs)
        eng.load(req)
        runs.append(engine_logits(eng, prompts, forced)[0])
    assert torch.equal(runs[0], runs[1])


@pytest.mark.gpu
def test_compiles_counts_the_processs_triton_compilations():
    """A repeated call compiles nothing; a kernel launched for the first time counts once."""
    import triton
    import triton.language as tl

    @triton.jit
    def _fresh(x_ptr, n: tl.constexpr):
        tl.store(x_ptr + tl.arange(0, n), tl.arange(0, n))

    req = request("gpt-oss-tiny", batch=2, seq=64)
    eng = TritonMxfp4()
    eng.load(req)
    prompts, _ = inputs(req.spec, 2, 20, 1)
    eng.generate(prompts, 4)
    warm = eng.compiles()
    eng.generate(prompts, 4)
    assert eng.compiles() == warm
    _fresh[(1,)](torch.empty(16, device=eng.device, dtype=torch.int32), 16)
    _fresh[(1,)](torch.empty(16, device=eng.device, dtype=torch.int32), 16)
    assert eng.compiles() == warm + 1
    eng.close()


def full_model_error(name: str, quant: str, batch: int, context: int, steps: int) -> tuple[float, float, float]:
    """Our engine's logits against fp32 torch_ref on the same weights (the weights' own format for a
    mode that only changes how we compute): rel err median, max, top-1 agreement. torch_ref runs
    first, its logits moved to the CPU and the model freed: the packed 120b (61 GiB) does not fit one
    80 GB GPU twice."""
    req = request(name, quant, batch=batch, seq=context + steps + 1)
    prompts, forced = inputs(req.spec, batch, context, steps)
    ref = reference_logits(dataclasses.replace(req, quant=weight_format(quant)), prompts, forced)
    torch.cuda.empty_cache()
    eng = TritonMxfp4()
    eng.load(req)
    logits, _ = engine_logits(eng, prompts, forced)
    eng.close()
    median, worst, agree = compare(logits, ref)
    print(f"{name} {quant} batch {batch} context {context}: logits rel err median {median:.2e} max {worst:.2e}, "
          f"top-1 agreement {agree:.3f}")
    return median, worst, agree


@pytest.mark.gpu
@pytest.mark.parametrize("name,quant,batch,context", [
    ("gpt-oss-20b", "mxfp4", 1, 8192), ("gpt-oss-20b", "mxfp4", 16, 512),
    ("gpt-oss-120b", "mxfp4", 1, 8192), ("gpt-oss-120b", "mxfp4", 16, 512),
])
def test_full_model_matches_torch_ref(name, quant, batch, context):
    median, _, agree = full_model_error(name, quant, batch, context, steps=32)
    assert median < 5e-2 and agree >= 0.9
