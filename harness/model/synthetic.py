"""Seeded synthetic GPT-OSS weights, in the checkpoint's own names, shapes, dtypes and MXFP4 layout.

Each tensor is a pure function of (seed, tensor name), and of router_skew for the router biases
only, so checkpoints that differ in skew differ in routing and nothing else. Values come from a
counter-based hash of each element's index in int64 torch ops (no product can overflow) and a few
float32 multiplies and adds, each its own correctly rounded operation, so CPU and CUDA produce the
same bits; the small router tensors are computed on the CPU from exact integer sums. A tensor is
generated chunk by chunk in bounded memory, and an engine can materialise the model directly in
device memory (`SyntheticWeights.get(name, device="cuda")`) with no file at all.

Scale (activations finite and well-scaled at every depth and context length):
* embeddings are uniform with RMS 1, so the residual stream starts at RMS 1;
* q/k/v, router and gate_up weights have std 1/sqrt(fan_in): after an RMS norm their outputs have
  RMS ~1, attention scores ~N(0, 1.8^2) with YaRN's concentration, SwiGLU far from its clamp;
* the two writes into the residual stream per layer, o_proj and down_proj, have std
  1/sqrt(fan_in * 2L): each adds RMS <~ 1/sqrt(2L), so after L layers the stream has grown to
  about sqrt(2) for independent updates, and to at most 1 + sqrt(2L) were all of them aligned;
* attention returns a convex combination of value vectors (the sink takes part of the mass) and
  the MoE a convex combination of 4 expert outputs, so neither can grow with the context length;
* experts hold uniform random E2M1 codes (RMS 2.93) with per-block scale bytes base + {-1, 0, 1};
  the base that gives the std above is 116..119 for the published sizes, never near 255.

Agreement (greedy decoding that bf16 engines and an fp32 reference agree on), by two structures:
* The first half of the hidden dimensions carries the token embedding unchanged: o_proj, down_proj
  and their biases write only the second half (attention and experts read all of it), and routers
  read only the first half. Routing is then a function of the token and the layer, so rounding
  seldom changes the experts chosen and never compounds. With routers that read everything, one
  expert choice flipped by rounding perturbs every later layer, which flips more: in a 24-layer
  test model about 15% of the last layers' choices differed between bf16 and fp32.
* Logits: each token c has two seeded successors. lm_head's columns on the token half hold, for
  token v, the summed embeddings of the two tokens v succeeds, which lifts the current token's
  successors SUCCESSOR_MARGIN logit stds above the rest; its random columns on the other half,
  which carry everything the layers computed, decide between the two. Gaussian logits over 201k
  tokens put the top two within bf16 rounding of each other at about 4% of positions, whatever
  their scale and before any error of the engine; a choice between two lifted candidates flips
  only where their own difference is within the error. Successors stay as varied as the prompts,
  so decode batches route like prefill batches.

Router skew s (a Zipf-like exponent, 0 = uniform): router rows have equal norms and the biases
only ROUTER_BIAS_STD of noise, so without skew every expert is about equally loaded. With skew,
each layer ranks its experts by a seeded shuffle and adds -s * b * ln(1 + rank) to their biases,
b = sqrt(6)/pi * ROUTER_LOGIT_STD being the scale of a Gumbel variable with the router logits'
spread: were that noise Gumbel, the top-1 expert would follow P(rank r) ~ (1+r)^-s exactly; with
near-Gaussian logits and top-4 selection the load is Zipf-like, rank 0 the busiest.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import re
import shutil
import socket
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

from harness.model.checkpoint import TORCH_DTYPES, write_checkpoint
from harness.model.mxfp4 import SCALE_BIAS
from harness.model.spec import SPECS, ModelSpec, get_spec

ROUTER_LOGIT_STD = 1.0
LOGIT_STD = 4.0  # std of the layers' contribution to each logit
SUCCESSOR_MARGIN = 8.0  # lift of the current token's two successors, in LOGIT_STDs
NORM_WEIGHT_STD = 0.1  # RMSNorm weights are 1 +- this, so an engine that drops them shows
BIAS_STD = 0.1  # relative to the output each bias is added to
ROUTER_BIAS_STD = 0.03  # in router logit stds: enough to show if an engine drops it, too little to unbalance
SINK_STD = 1.0  # real sinks are O(1) logits
_E2M1_RMS = math.sqrt(68.5 / 8)  # RMS of the 16 E2M1 values, each code equally likely
_JITTER_RMS = math.sqrt((0.25 + 1 + 4) / 3)  # RMS of 2^j for a scale jitter j in {-1, 0, 1}
_U16_STD = 65536 / math.sqrt(12)  # std of an integer uniform on [-2^15, 2^15)
# Elements generated per step (multiples of 4). On a CPU, chunks whose int64 temporaries fit in L2
# and stay below torch's intra-op parallel grain (32768) run ~20x faster than large ones; a GPU
# wants large ones (kernel launches), 64 MB per temporary.
_CPU_CHUNK, _DEVICE_CHUNK = 1 << 14, 1 << 23
_WORD = 0xFFFFFFFF
_NORMS = ("input_layernorm.weight", "post_attention_layernorm.weight", "model.norm.weight")


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """x * c mod 2^32 for 0 <= x < 2^32, by 16-bit halves of c so that no int64 product overflows."""
    return (x * (c & 0xFFFF) + (((x * (c >> 16)) & 0xFFFF) << 16)) & _WORD


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """lowbias32 (C. Wellons, hash-prospector): a bijection of 32-bit values with full avalanche.
    Values stay in [0, 2^32), so >> is a logical shift."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def _key(seed: int, name: str) -> tuple[int, int]:
    digest = hashlib.blake2b(f"{seed}/{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest[:4], "little"), int.from_bytes(digest[4:], "little")


def _hash(index: torch.Tensor, key: tuple[int, int]) -> torch.Tensor:
    """32 random bits (in int64) per counter: a different bijection of [0, 2^32) for each key."""
    return _mix32(_mix32(index ^ key[0]) ^ key[1])


def _uniform(index: torch.Tensor, key: tuple[int, int], std: float) -> torch.Tensor:
    """float32 uniform with mean 0 and this std: an exact integer times one float32 multiply."""
    return ((_hash(index, key) >> 16) - 32768).float() * (std / _U16_STD)


def _permutation(n: int, key: tuple[int, int]) -> torch.Tensor:
    """A seeded shuffle of range(n), on the CPU (the hashes are distinct, so argsort has no ties)."""
    return torch.argsort(_hash(torch.arange(n), key))


def _scale_byte(std: float) -> int:
    """The E8M0 byte around which uniform random E2M1 codes with jittered scales have this std."""
    return SCALE_BIAS + round(math.log2(std / (_E2M1_RMS * _JITTER_RMS)))


class SyntheticWeights:
    """The weights of `spec` in its MXFP4 checkpoint layout, each generated when asked for."""

    quant = "mxfp4"

    def __init__(self, spec: ModelSpec, seed: int = 0, router_skew: float = 0.0):
        if router_skew < 0:
            raise ValueError(f"router_skew={router_skew} must be >= 0 (0 = uniform routing)")
        self.spec, self.seed, self.router_skew = spec, seed, router_skew
        self._tensors = spec.tensors(self.quant)

    def names(self) -> list[str]:
        return list(self._tensors)

    def get(self, name: str, device: str | torch.device = "cpu") -> torch.Tensor:
        if name not in self._tensors:
            raise KeyError(f"{name!r} is not a tensor of {self.spec.name} ({self.quant})")
        shape, dtype = self._tensors[name]
        n = math.prod(shape)
        out = torch.empty(n, dtype=TORCH_DTYPES[dtype], device=device)
        values = self._values(name, out.device)
        chunk = _CPU_CHUNK if out.device.type == "cpu" else _DEVICE_CHUNK
        for start in range(0, n, chunk):
            index = torch.arange(start, min(n, start + chunk), dtype=torch.int64, device=out.device)
            out[start:start + len(index)] = values(index)
        return out.view(shape)

    def _values(self, name: str, device: torch.device):
        """index (int64 tensor of flat positions on `device`) -> the elements of `name` there."""
        s, key = self.spec, _key(self.seed, name)
        H, I, half = s.hidden_size, s.intermediate_size, s.hidden_size // 2
        share = 1 / math.sqrt(2 * s.num_hidden_layers)  # of one write into the residual stream

        def uniform(std, mean=0.0):
            return lambda i: _uniform(i, key, std) + mean

        def only(values, where):  # zero elsewhere
            return lambda i: torch.where(where(i), values(i), 0)

        def codes(i):  # 4 random bytes (8 E2M1 codes) per hash
            words = _hash(i[::4] // 4, key)
            return torch.stack([(words >> shift) & 0xFF for shift in (0, 8, 16, 24)], -1).view(-1).to(torch.uint8)

        def scales(std):
            base = _scale_byte(std)
            return lambda i: (base - 1 + _hash(i, key) % 3).to(torch.uint8)

        leaf = re.sub(r"^model\.layers\.\d+\.", "", name)
        match leaf:
            case "model.embed_tokens.weight":
                return uniform(1.0)
            case _ if leaf in _NORMS:
                return uniform(NORM_WEIGHT_STD, mean=1.0)
            case "self_attn.q_proj.weight" | "self_attn.k_proj.weight" | "self_attn.v_proj.weight":
                return uniform(1 / math.sqrt(H))
            case "self_attn.q_proj.bias" | "self_attn.k_proj.bias" | "self_attn.v_proj.bias" \
                    | "mlp.experts.gate_up_proj_bias":
                return uniform(BIAS_STD)
            case "self_attn.o_proj.weight":
                return only(uniform(share / math.sqrt(s.q_dim)), lambda i: i // s.q_dim >= half)
            case "self_attn.o_proj.bias":
                return only(uniform(BIAS_STD * share), lambda i: i >= half)
            case "self_attn.sinks":
                return uniform(SINK_STD)
            case "mlp.router.weight" | "mlp.router.bias":  # tiny, made whole on the CPU
                table = (self._router_weight(key) if leaf.endswith("weight") else self._router_bias(name, key))
                table = table.to(device).view(-1)
                return lambda i: table[i]
            case "mlp.experts.gate_up_proj_blocks":
                return codes
            case "mlp.experts.gate_up_proj_scales":
                return scales(1 / math.sqrt(H))
            case "mlp.experts.down_proj_blocks":
                return only(codes, lambda i: i // (I // 2) % H >= half)
            case "mlp.experts.down_proj_scales":
                return scales(share / math.sqrt(I))
            case "mlp.experts.down_proj_bias":
                return only(uniform(BIAS_STD * share), lambda i: i % H >= half)
            case "lm_head.weight":
                return self._lm_head(key, device)
        raise KeyError(f"no synthetic recipe for tensor {name!r}")

    def _lm_head(self, key: tuple[int, int], device: torch.device):
        """Token half: row v holds the summed embeddings of the two tokens v succeeds, scaled so
        that the current token's successors gain SUCCESSOR_MARGIN * LOGIT_STD (the final norm leaves
        the token half at RMS ~1). Other half: random, logit std LOGIT_STD."""
        s = self.spec
        H, half = s.hidden_size, s.hidden_size // 2
        embed = _key(self.seed, "model.embed_tokens.weight")
        pred = [_permutation(s.vocab_size, _key(self.seed, f"lm_head.weight/predecessor{j}")).to(device)
                for j in (1, 2)]
        lift = SUCCESSOR_MARGIN * LOGIT_STD / half

        def values(i):
            row, col = i // H, i % H
            successors = _uniform(pred[0][row] * H + col, embed, 1.0) + _uniform(pred[1][row] * H + col, embed, 1.0)
            return torch.where(col < half, successors * lift, _uniform(i, key, LOGIT_STD / math.sqrt(H - half)))
        return values

    def _router_weight(self, key: tuple[int, int]) -> torch.Tensor:
        """Rows of norm ROUTER_LOGIT_STD on the token half, zero on the other: equal norms, so that
        without skew no expert is favoured. The norms are exact integer sums and the rest single
        IEEE operations, so this CPU computation gives the same bits on every machine."""
        E, H, half = self.spec.num_local_experts, self.spec.hidden_size, self.spec.hidden_size // 2
        u = (_hash(torch.arange(E * H), key) >> 16).view(E, H) - 32768
        u[:, half:] = 0
        return (u.double() * (ROUTER_LOGIT_STD / u.pow(2).sum(1, keepdim=True).double().sqrt())).float()

    def _router_bias(self, name: str, key: tuple[int, int]) -> torch.Tensor:
        """Small noise plus the skew term, on the CPU (it is tiny) so every device gets the same bits."""
        E = self.spec.num_local_experts
        rank = torch.empty(E, dtype=torch.int64)
        rank[_permutation(E, _key(self.seed, name + "/rank"))] = torch.arange(E)
        gumbel_scale = math.sqrt(6) / math.pi * ROUTER_LOGIT_STD
        skew = torch.tensor([-self.router_skew * gumbel_scale * math.log1p(r) for r in rank.tolist()])
        return _uniform(torch.arange(E), key, ROUTER_BIAS_STD * ROUTER_LOGIT_STD) + skew.float()


GENERATOR_VERSION = 1  # bump when any value above changes, so cached checkpoints are regenerated
MARKER = "synthetic.json"  # what a cached checkpoint was generated from


def cache_root() -> Path:
    """$GPTOSS_BENCH_CACHE/checkpoints, else ~/.cache/gptoss-bench/checkpoints."""
    return Path(os.environ.get("GPTOSS_BENCH_CACHE") or Path.home() / ".cache" / "gptoss-bench") / "checkpoints"


def synthetic_checkpoint(spec: ModelSpec, seed: int = 0, router_skew: float = 0.0,
                         cache_dir: str | Path | None = None, progress: bool = True) -> Path:
    """The synthetic checkpoint of (spec, seed, router_skew) in the HF layout, written once into
    `cache_dir` (default cache_root()) as <model>-s<seed>-k<skew>/ and reused while its spec and
    generator are unchanged. It is written tensor by tensor (generated on the GPU when there is
    one) into a temporary directory renamed when complete, so an interrupted generation is never
    taken for a cached one."""
    root = Path(cache_dir) if cache_dir is not None else cache_root()
    final = root / f"{spec.name}-s{seed}-k{router_skew:g}"
    marker = {"seed": seed, "router_skew": router_skew, "generator": GENERATOR_VERSION, "config": spec.to_hf_config()}
    if final.is_dir():
        try:
            if json.loads((final / MARKER).read_text()) == marker:
                return final
        except (OSError, ValueError):
            pass
        shutil.rmtree(final)

    root.mkdir(parents=True, exist_ok=True)
    host = socket.gethostname()
    for old in root.glob(f"{final.name}.partial-{host}-*"):  # left by a process that died
        pid = old.name.rsplit("-", 1)[1]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(old, ignore_errors=True)
    need, free = spec.checkpoint_bytes(), shutil.disk_usage(root).free
    if need > free:
        raise OSError(f"the synthetic {spec.name} checkpoint needs {need / 1e9:.1f} GB, {root} has {free / 1e9:.1f} GB "
                      "free: set GPTOSS_BENCH_CACHE or cache_dir elsewhere, or load the weights device-direct")
    partial = root / f"{final.name}.partial-{host}-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    weights = SyntheticWeights(spec, seed, router_skew)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
               TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True), disable=not progress) as bar:
        task = bar.add_task(f"writing {final.name}", total=need)

        def tensors():
            for name in weights.names():
                t = weights.get(name, device).cpu()
                yield name, t
                bar.advance(task, t.numel() * t.element_size())
        try:
            write_checkpoint(partial, spec, tensors())
            (partial / MARKER).write_text(json.dumps(marker, indent=2) + "\n")
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
    try:
        partial.rename(final)
    except OSError:
        shutil.rmtree(partial, ignore_errors=True)
        if not final.is_dir():
            raise
        # another process completed the same checkpoint first
    return final


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


def main(argv: list[str] | None = None) -> None:
    """`python -m harness.model.synthetic --model gpt-oss-20b --seed 0`: write (or find) the cached
    checkpoint and print its path, size and the seconds it took."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--model", default="gpt-oss-20b", choices=sorted(SPECS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--router-skew", type=float, default=0.0)
    parser.add_argument("--cache-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    path = synthetic_checkpoint(get_spec(args.model), args.seed, args.router_skew, args.cache_dir)
    size = sum(f.stat().st_size for f in path.iterdir())
    print(f"{path}\t{size:,} bytes\t{time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
