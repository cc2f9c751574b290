"""triton_mxfp4 over two ranks (backends/triton_mxfp4/parallel.py: experts split, attention split by
heads) against the one-process engine and torch_ref: two processes on gloo, the kernels in Triton's
interpreter, gpt-oss-tiny, a short prompt and a few greedy tokens. With two GPUs the same test runs
the ranks on NCCL."""

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from backends.torch_ref import TorchRef
from backends.triton_mxfp4 import TritonMxfp4
from backends.triton_mxfp4 import moe as moe_module
from backends.triton_mxfp4.moe import moe, prepare_experts, uses_gemv
from backends.triton_mxfp4.parallel import ParallelTransformer, Shard, TritonMxfp4Parallel, init_process_group
from harness.engine import LoadRequest
from harness.model.spec import SPECS
from harness.model.synthetic import SyntheticWeights

WORLD = 2
DEV = "cuda" if torch.cuda.is_available() else "cpu"
BATCH, CONTEXT, TOKENS = 1, 6, 3
MOE_TOKENS = 5  # enough tokens for the one-process MoE's grouped path, which EP computes bit for bit


def request():
    return LoadRequest(SPECS["gpt-oss-tiny"], "mxfp4", None, seed=1, max_batch_size=BATCH, max_seq_len=16,
                       device=DEV)


def prompts():
    return torch.randint(0, SPECS["gpt-oss-tiny"].vocab_size, (BATCH, CONTEXT), generator=torch.Generator().manual_seed(0))


def greedy(backend):
    """Free-running greedy tokens [TOKENS, B] and the logits [TOKENS, B, V] each came from."""
    toks, logits = [backend.prefill(prompts())], []
    logits.append(backend.engine.logits[:BATCH].clone())
    for _ in range(TOKENS - 1):
        toks.append(backend.decode(toks[-1]))
        logits.append(backend.engine.logits[:BATCH].clone())
    return torch.stack(toks), torch.stack(logits)


def moe_of_layer0(req, device, local_moe):
    """(this rank's expert-parallel MoE, the one-process MoE with all experts) of layer 0 on MOE_TOKENS tokens."""
    spec, w, dev = req.spec, SyntheticWeights(req.spec, req.seed), torch.device(device)
    p = "model.layers.0.mlp."
    full = [prepare_experts(*(w.get(p + f"experts.{kind}_proj{s}", dev) for s in ("_blocks", "_scales", "_bias")),
                            kind) for kind in ("gate_up", "down")]
    x = torch.randn(MOE_TOKENS, spec.hidden_size, generator=torch.Generator().manual_seed(2)).to(dev, torch.bfloat16)
    router = (w.get(p + "router.weight", dev), w.get(p + "router.bias", dev))
    return local_moe(x), moe(x, *router, *full, spec)


def rank_main(rank, port, out):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    backend = TritonMxfp4Parallel()
    backend.load(request())
    toks, logits = greedy(backend)
    eng = backend.engine
    L = eng.layers[0]
    ep, one = moe_of_layer0(request(), backend.device, lambda x: eng.moe(x, L.router_w, L.router_b, L.gate_up, L.down, eng.spec))
    torch.save({"tokens": toks.cpu(), "logits": logits.cpu(), "moe_ep": ep.cpu(), "moe_one": one.cpu(),
                "experts": L.gate_up.blocks.shape[0], "kv_heads": eng.cache.k[0].shape[1]}, out / f"rank{rank}.pt")
    torch.distributed.destroy_process_group()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@torch.inference_mode()
def torch_ref_logits(req, forced):
    """torch_ref's logits [TOKENS, B, V] (fp32) after the prompt and each of `forced` [TOKENS-1, B]."""
    ref = TorchRef(dtype="float32")
    ref.load(req)
    out = [ref.model(prompts().to(ref.device), 0, ref.cache, last_only=True)[:, -1].cpu()]
    for i, tok in enumerate(forced):
        out.append(ref.model(tok[:, None].to(ref.device), CONTEXT + i, ref.cache)[:, -1].cpu())
    ref.close()
    return torch.stack(out)


def rel_err(a, b):
    return ((a - b).norm(dim=-1) / b.norm(dim=-1)).max().item()


@pytest.mark.slow  # ~2 min on 2 cores: three engines in the interpreter
@pytest.mark.skipif(torch.cuda.device_count() == 1, reason="one GPU: the ranks would need two (or none: gloo on the CPU)")
def test_two_ranks_match_one_process_and_torch_ref(tmp_path, monkeypatch):
    mp.spawn(rank_main, args=(free_port(), tmp_path), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    spec = request().spec
    assert [r["experts"] for r in ranks] == [spec.num_local_experts // WORLD] * WORLD
    assert [r["kv_heads"] for r in ranks] == [spec.num_key_value_heads // WORLD] * WORLD
    assert not uses_gemv(MOE_TOKENS, spec)
    for r in ranks:  # the expert-parallel MoE is the one-process grouped MoE, bit for bit
        assert torch.equal(r["moe_ep"], r["moe_one"])
    assert torch.equal(ranks[0]["tokens"], ranks[1]["tokens"]) and torch.equal(ranks[0]["logits"], ranks[1]["logits"])
    toks, logits = ranks[0]["tokens"], ranks[0]["logits"]

    # The one-process engine on the MoE path that EP takes (it would take gemv at these decode batch
    # sizes, 20 s a step in the interpreter; test_triton_engine covers gemv against torch_ref), so
    # that what differs is the O projection's sum over ranks alone.
    monkeypatch.setattr(moe_module, "uses_gemv", lambda tokens, spec: False)
    one = TritonMxfp4()
    one.load(request())
    one_toks, one_logits = (t.cpu() for t in greedy(one))
    assert torch.equal(toks, one_toks)
    assert rel_err(logits, one_logits) < 1e-3  # 0 on a CPU

    ref = torch_ref_logits(request(), toks[:-1])
    assert torch.equal(ref.argmax(-1), toks), "torch_ref picks the same greedy tokens"
    assert rel_err(logits, ref) < 3e-2  # test_triton_engine's tolerance


def test_layouts_that_do_not_split_are_refused():
    spec = SPECS["gpt-oss-tiny"]  # 2 KV heads, 8 experts
    with pytest.raises(ValueError, match="must divide num_key_value_heads"):
        ParallelTransformer(SyntheticWeights(spec, 0), "mxfp4", torch.device("cpu"), Shard(0, 4))
    with pytest.raises(ValueError, match="quant='bf16'"):
        ParallelTransformer(SyntheticWeights(spec, 0), "bf16", torch.device("cpu"), Shard(0, 2))
    with pytest.raises(ValueError, match="ep=3 must divide"):
        spec.shard_weight_bytes("mxfp4", 1, 3)


def test_outside_torchrun_is_one_line(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    with pytest.raises(RuntimeError, match="RANK.*start the worker under torchrun"):
        init_process_group()


@pytest.mark.parametrize("name", sorted(SPECS))
def test_shard_weight_bytes(name):
    """One rank holds everything at tp = ep = 1; over N ranks the shards add up to the model once,
    plus N-1 more copies of what every rank replicates."""
    spec = SPECS[name]
    for quant in ("mxfp4", "bf16"):
        whole = spec.weight_bytes(quant)
        assert spec.shard_weight_bytes(quant) == pytest.approx(whole)
        n = 2
        replicated = 2 * (2 * spec.vocab_size * spec.hidden_size + spec.hidden_size
                          + spec.num_hidden_layers * (3 * spec.hidden_size + spec.router_params))
        assert n * spec.shard_weight_bytes(quant, n, n) == pytest.approx(whole + (n - 1) * replicated)
        experts = spec.num_hidden_layers * spec.num_local_experts * spec.expert_bytes(quant)
        assert spec.shard_weight_bytes(quant, 1, n) == pytest.approx(whole - experts / 2)
