"""triton_mxfp4 across the GPUs of one torchrun job: expert parallelism for the MoE and tensor
parallelism for attention, over one torch.distributed process group (NCCL on CUDA, gloo on a CPU,
where the kernels run in Triton's interpreter).

Rank r of N holds (ModelSpec.shard_weight_bytes(quant, tp=N, ep=N) bytes of weights):
  experts    [r E/N, (r+1) E/N) of every layer (expert parallel);
  attention  query heads [r Hq/N, (r+1) Hq/N) and the KV heads they read, [r Hkv/N, (r+1) Hkv/N)
             (tensor parallel): those rows of q/k/v (weights and biases), those sinks, those input
             columns of o_proj, and a KV cache of those heads only;
  replicated embedding, unembedding (lm_head), the norms, the routers and o_proj's bias.
The residual stream is replicated: every rank embeds, normalises and samples the same tokens, and
two all_reduce(sum) per layer keep it identical on all ranks (a collective hands every rank the
same bits):
  attention  each rank's heads through its o_proj columns, a partial product in fp32; the sum, then
             o_proj's bias and one rounding to bf16, as the single GEMM rounds once. The partial
             sums' order is the only numerical difference from the one-process engine.
  MoE        every rank runs the router and the routing of all tokens (the same kernels on the same
             input, so the same choice everywhere), then the grouped expert kernels over the rows
             routed to its own experts only (moe.moe with `experts` and `reduce`). Each (token, slot) output row is written by the one rank that
             owns its expert, zero elsewhere, so the all_reduce of these fp32 rows adds zeros and is
             exact; the combine then sums the k rows of each token in the one-process order. The MoE
             under EP is bit for bit the one-process grouped path.
The MoE exchange is an all_reduce of the [T*k, H] fp32 rows: the simplest exact one. An all_reduce
of each rank's combined [T, H] would move k times fewer bytes but sum in another order; an
all_to_all that sends each rank only the tokens routed to its experts (and their outputs back) is
the bandwidth-optimal form, not written yet. The gemv path (moe.py), which routes inside the kernel
and indexes the expert stack by global id, cannot skip other ranks' experts, so under EP the MoE
always takes the grouped path, also at decode batch sizes where the one-process engine takes gemv.
Only the MXFP4 experts (quant mxfp4 and mxfp4_mxfp8) are split; quant=bf16 is refused.

Entry point, one process per GPU under torchrun (which sets RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR, MASTER_PORT), e.g. `torchrun --nproc-per-node 2 worker.py`:
    backend = TritonMxfp4Parallel()      # a StepBackend: load, prefill, decode, generate as usual
    backend.load(request)                # joins the process group (init_process_group()), loads
                                         # this rank's shard on cuda:LOCAL_RANK (CPU when interpreting)
Every rank must make the same calls with the same inputs; every rank returns the same tokens, and
rank 0 is the one to report them. CUDA graphs are off by default here: capturing NCCL collectives
in a graph is not yet verified on this engine (cuda_graphs=True tries it).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from functools import partial

import torch
import torch.distributed as dist
import torch.nn.functional as F
import triton

from backends.triton_mxfp4 import TritonMxfp4
from backends.triton_mxfp4.model import Layer, Transformer
from backends.triton_mxfp4.moe import moe
from harness.engine import DoesNotFit, LoadRequest
from harness.model.spec import QUANT_MODES, ModelSpec, weight_format
from harness.model.weights import open_weights

TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class Shard:
    """Rank `rank` of `world`: which slice of a dimension of n parts it owns."""
    rank: int
    world: int

    def part(self, n: int) -> slice:
        size = n // self.world
        return slice(self.rank * size, (self.rank + 1) * size)


def check_layout(spec: ModelSpec, world: int) -> None:
    """One line naming what does not split evenly over `world` ranks."""
    if spec.num_key_value_heads % world or spec.num_local_experts % world:
        raise ValueError(f"{spec.name}: {world} ranks must divide num_key_value_heads={spec.num_key_value_heads} "
                         f"and num_local_experts={spec.num_local_experts}")


def init_process_group() -> tuple[Shard, torch.device]:
    """Join the torchrun job from its environment (idempotent): this rank's Shard and device,
    cuda:LOCAL_RANK with NCCL on a GPU, the CPU with gloo when the kernels are interpreted."""
    missing = [k for k in TORCHRUN_ENV if k not in os.environ]
    if missing:
        raise RuntimeError(f"triton_mxfp4 parallel: {', '.join(missing)} not set; start the worker under torchrun")
    cuda = torch.cuda.is_available() and not triton.knobs.runtime.interpret
    if not (cuda or triton.knobs.runtime.interpret):
        raise RuntimeError("triton_mxfp4 needs a CUDA GPU, or TRITON_INTERPRET=1 to run its kernels on the CPU")
    device = torch.device("cuda", int(os.environ["LOCAL_RANK"])) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo", device_id=device if cuda else None)
    return Shard(dist.get_rank(), dist.get_world_size()), device


def _fp32_matmul(a: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """a @ w^T of bf16 operands as fp32: cuBLAS writes the fp32 accumulator directly; torch on a CPU
    has no such op, and widening first is exact there."""
    return torch.mm(a, w.T, out_dtype=torch.float32) if a.is_cuda else F.linear(a.float(), w.float())


class ParallelTransformer(Transformer):
    """Transformer holding rank `shard.rank`'s part of the model (module docstring)."""

    def __init__(self, source, quant: str, device: torch.device, shard: Shard, cuda_graphs: bool = False,
                 group: dist.ProcessGroup | None = None):
        if weight_format(quant) != "mxfp4":
            raise ValueError(f"triton_mxfp4 parallel: quant={quant!r}; expert parallelism splits the MXFP4 "
                             f"experts (quant mxfp4 or mxfp4_mxfp8)")
        check_layout(source.spec, shard.world)
        self.shard, self.group = shard, group
        super().__init__(source, quant, device, cuda_graphs)
        spec = self.spec
        self.moe = partial(moe, experts=shard.part(spec.num_local_experts), reduce=partial(dist.all_reduce, group=group))
        # From here on this rank's attention is that of a model with its heads only (the QKV split,
        # RoPE, the KV cache); the MoE still routes over all the experts.
        self.spec = replace(spec, num_attention_heads=spec.num_attention_heads // shard.world,
                            num_key_value_heads=spec.num_key_value_heads // shard.world)

    def _load_layer(self, get, source_quant: str, i: int) -> Layer:
        return super()._load_layer(lambda name: self._shard_of(name, get(name)), source_quant, i)

    def _shard_of(self, name: str, t: torch.Tensor) -> torch.Tensor:
        """This rank's part of checkpoint tensor `name` (copied, so the whole one is freed)."""
        spec, s, D = self.spec, self.shard, self.spec.head_dim
        q, kv = s.part(spec.num_attention_heads), s.part(spec.num_key_value_heads)
        if ".mlp.experts." in name:
            return t[s.part(spec.num_local_experts)].clone()
        if name.endswith("self_attn.sinks"):
            return t[q].clone()
        if name.endswith("self_attn.o_proj.weight"):
            return t[:, q.start * D:q.stop * D].contiguous()
        for proj, heads in (("q_proj", q), ("k_proj", kv), ("v_proj", kv)):
            if f"self_attn.{proj}." in name:
                return t[heads.start * D:heads.stop * D].clone()
        return t  # replicated

    def _o_proj(self, a: torch.Tensor, L: Layer) -> torch.Tensor:
        y = _fp32_matmul(a, L.o_w)
        dist.all_reduce(y, group=self.group)
        return (y + L.o_b.float()).to(a.dtype)


class TritonMxfp4Parallel(TritonMxfp4):
    """The triton_mxfp4 backend as one rank of a torchrun job (module docstring). The request's
    device is not used: each rank runs on cuda:LOCAL_RANK, or the CPU when interpreting."""

    def __init__(self, cuda_graphs: bool = False, **options):
        super().__init__(cuda_graphs=cuda_graphs, **options)

    def load(self, request: LoadRequest) -> None:
        if request.quant not in QUANT_MODES:
            raise ValueError(f"triton_mxfp4 parallel: quant={request.quant!r}, expected one of {QUANT_MODES}")
        shard, self.device = init_process_group()
        spec = request.spec
        check_layout(spec, shard.world)
        if self.device.type == "cuda":
            need = spec.shard_weight_bytes(request.quant, shard.world, shard.world) \
                + spec.kv_cache_bytes(request.max_batch_size, request.max_seq_len) / shard.world
            free, _ = torch.cuda.mem_get_info(self.device)
            if need > free:
                raise DoesNotFit(need, free, f"{spec.name} {request.quant} rank {shard.rank}/{shard.world} "
                                             f"shard of weights and KV cache")
        self.engine = ParallelTransformer(open_weights(request), request.quant, self.device, shard,
                                          self.options["cuda_graphs"])
        self.engine.allocate(request.max_batch_size, request.max_seq_len)


def main(argv: list[str] | None = None) -> None:
    """`torchrun --nproc-per-node N -m backends.triton_mxfp4.parallel --model gpt-oss-20b`: a smoke
    run on synthetic weights; rank 0 prints the first sequence's tokens and the median decode step."""
    import argparse
    import statistics

    from harness.model.spec import get_spec

    p = argparse.ArgumentParser(prog="backends.triton_mxfp4.parallel")
    p.add_argument("--model", default="gpt-oss-tiny")
    p.add_argument("--quant", default="mxfp4", choices=["mxfp4", "mxfp4_mxfp8"])
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--context", type=int, default=128)
    p.add_argument("--tokens", type=int, default=16)
    p.add_argument("--cuda-graphs", action="store_true")
    a = p.parse_args(argv)
    spec = get_spec(a.model)
    backend = TritonMxfp4Parallel(cuda_graphs=a.cuda_graphs)
    backend.load(LoadRequest(spec, a.quant, None, seed=1, max_batch_size=a.batch,
                             max_seq_len=a.context + a.tokens))
    prompts = torch.randint(0, spec.vocab_size, (a.batch, a.context), generator=torch.Generator().manual_seed(0))
    gen = backend.generate(prompts, a.tokens)
    if dist.get_rank() == 0:
        step = statistics.median(gen.step_ms) if gen.step_ms else float("nan")
        print(f"{spec.name} {a.quant} over {dist.get_world_size()} ranks: tokens {gen.tokens[0].tolist()}; "
              f"ttft {gen.ttft_ms:.2f} ms, median decode step {step:.3f} ms; "
              f"weights {backend.memory()['weights_gib']:.2f} GiB on this rank")
    backend.close()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
