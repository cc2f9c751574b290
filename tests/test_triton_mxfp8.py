"""quant=mxfp4_mxfp8 of triton_mxfp4: the MXFP8 quantisation in add_rmsnorm's and gate_up's epilogues
against its torch reference, the grouped GEMMs (e4m3 x e2m1, and e4m3 x e4m3 as on sm_120) against
torch, the tiny model end to end against torch_ref on the MXFP4 weights, and the kernels compiled for
sm_90 / sm_100 / sm_120 without running them (benchmarks/fp4_codegen.py). On a CPU the kernels run
in Triton's interpreter (tests/conftest.py)."""

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import triton
import triton.language as tl

from backends.triton_mxfp4 import moe_kernels as K
from backends.triton_mxfp4 import mxfp8
from backends.triton_mxfp4.moe import DECODE_MX, PREFILL, moe, moe_reference, prepare_experts, uses_gemv
from backends.triton_mxfp4.norm_rope import add_rmsnorm, add_rmsnorm_ref
from backends.triton_mxfp4.routing import route, router_logits
from backends.triton_mxfp4 import TritonMxfp4
from harness.model.mxfp4 import E2M1_VALUES
from harness.model.spec import weight_format
from test_triton_engine import compare, engine_logits, full_model_error, inputs, reference_logits, request
from test_triton_moe import make_layer, poisoned, rel_err, routable_x, small_spec  # noqa: F401 (fixture)

DEV = "cuda" if torch.cuda.is_available() else "cpu"
ROOT = Path(__file__).resolve().parents[1]
# Each MXFP8 element is within 2^-4 of itself (3 mantissa bits, round to nearest, no clipping), so each
# GEMM input moves by at most 2^-4 of its norm; through the two GEMMs of an expert (a Lipschitz SwiGLU
# between them) the output moves by at most about the sum, 2^-3. Independent roundings give ~0.04.
MXFP8_BOUND = 2 * 2 ** -4


def test_quantize_reference_rule():
    """Scale: the smallest power of two that brings the group maximum within 448; zero groups get
    the smallest normal scale."""
    x = torch.zeros(4, 32)
    x[0, 0], x[1, 0], x[2, 0] = 448.0, 449.0, 1.0
    x[:3, 1:] = torch.linspace(-0.9, 0.9, 31)
    m = mxfp8.quantize_reference(x)
    assert m.scales[:, 0].tolist() == [127, 128, 119, 1]
    assert m.values.float().abs().max() <= 448 and m.values[3].float().abs().sum() == 0
    back = mxfp8.dequantize(m)
    scale = torch.ldexp(torch.ones(4, 1), m.scales.int() - 127)
    assert ((back - x).abs() <= torch.maximum(x.abs() * 2 ** -4, scale * 2 ** -10)).all()  # subnormals: 2^-10
    assert back[0, 0] == 448 and back[1, 0] == 448  # 449 = 224.5 * 2 rounds to 224 * 2 (nearest even)


@pytest.mark.parametrize("hidden", [160, 2880])  # groups past H masked out: next power of two is 256 / 4096
def test_add_rmsnorm_writes_mxfp8(hidden):
    """The quantised copy is bitwise the torch rule applied to the bf16 output, which is unchanged."""
    g = torch.Generator().manual_seed(hidden)
    x, y = (torch.randn(5, hidden, generator=g) * 3).bfloat16().to(DEV), torch.randn(5, hidden, generator=g).bfloat16().to(DEV)
    x[2] = -y[2]  # a row of zeros: every group at the smallest scale
    w = (1 + 0.1 * torch.randn(hidden, generator=g)).bfloat16().to(DEV)
    _, t_ref = add_rmsnorm_ref(x.clone(), y, w, 1e-5)
    plain = add_rmsnorm(x.clone(), y, w, 1e-5)
    out_mx = mxfp8.empty(5, hidden, DEV)
    out_mx.values.view(torch.uint8).fill_(0x7F)  # NaN in e4m3: anything left unwritten fails
    out_mx.scales.fill_(255)
    t = add_rmsnorm(x, y, w, 1e-5, out_mx=out_mx)
    assert torch.equal(t, plain), "quantising must not change the bf16 output"
    ref = mxfp8.quantize_reference(t)
    assert torch.equal(out_mx.scales, ref.scales)
    assert torch.equal(out_mx.values.view(torch.uint8), ref.values.view(torch.uint8))
    assert (out_mx.scales[2] == 1).all()
    assert rel_err(t, t_ref) < 1e-2


@triton.jit
def _widen_kernel(W, Out, N: tl.constexpr):
    w = tl.load(W + tl.arange(0, N)[None, :])
    tl.store(Out + tl.arange(0, 2 * N)[None, :], K._e2m1_to_e4m3(w))


def test_e2m1_to_e4m3_is_exact():
    """All 256 byte values: both nibbles become the e4m3 byte of the same value, low nibble first."""
    w = torch.arange(256, dtype=torch.int32).to(torch.uint8).to(DEV)
    out = torch.empty(512, dtype=torch.uint8, device=DEV)
    _widen_kernel[(1,)](w, out, 256)
    lut = torch.tensor(E2M1_VALUES)
    want = torch.stack([lut[torch.arange(256) & 15], lut[torch.arange(256) >> 4]], 1).flatten()
    assert torch.equal(out.cpu().view(torch.float8_e4m3fn).float(), want)


GROUPED = {"decode_swap": K.Tiles(bm=16, bn=64, bk=64, swap=True),
           "prefill": K.Tiles(bm=32, bn=64, bk=64, swap=False, group_m=2)}


@pytest.mark.parametrize("widen", [False, True], ids=["e4m3xe2m1", "e4m3xe4m3"])
@pytest.mark.parametrize("tiles", list(GROUPED))
def test_grouped_gemms_mxfp8(tiles, widen, poisoned, monkeypatch):
    """H = I = 96: two reduction steps, the second half masked. Against torch with the same MXFP8
    roundings the kernels differ only by fp32 summation order; against bf16 activations by at most
    MXFP8_BOUND, and the result must sit much closer to the first."""
    monkeypatch.setattr(K, "e2m1_as_e4m3", lambda device: widen)
    spec = small_spec(H=96, I=96)
    router_w, router_b, gate_up, down = make_layer(spec)
    x = routable_x(17, spec, router_w, router_b)
    t = GROUPED[tiles]
    w1, w2 = prepare_experts(*gate_up, "gate_up"), prepare_experts(*down, "down")
    r = route(router_logits(x, router_w, router_b), spec.num_experts_per_tok)
    h = K.gate_up_grouped(mxfp8.quantize_reference(x), r, w1, spec, t)
    assert isinstance(h, mxfp8.MxTensor) and h.values.dtype == torch.float8_e4m3fn
    y = K.down_grouped(h, r, w2, spec, t)
    exact = moe_reference(x, router_w, router_b, gate_up, down, spec, mxfp8_activations=True)
    plain = moe_reference(x, router_w, router_b, gate_up, down, spec)
    assert not y.isnan().any()
    assert rel_err(y, exact) < 1e-2
    assert rel_err(y, plain) < MXFP8_BOUND
    assert rel_err(y, exact) < rel_err(y, plain) / 4, "the activations were not quantised"


def test_gate_up_mxfp8_needs_whole_groups():
    spec = small_spec(H=96, I=96)
    router_w, router_b, gate_up, _ = make_layer(spec)
    x = routable_x(3, spec, router_w, router_b)
    r = route(router_logits(x, router_w, router_b), spec.num_experts_per_tok)
    with pytest.raises(ValueError, match="multiple of 64"):
        K.gate_up_grouped(mxfp8.quantize_reference(x), r, prepare_experts(*gate_up, "gate_up"), spec,
                          K.Tiles(bm=16, bn=32, bk=64, swap=True))


def test_moe_mxfp8_paths():
    """Small T: gemv on bf16 x, bitwise what mxfp4 computes; larger T: the grouped MXFP8 GEMMs."""
    spec = small_spec()
    router_w, router_b, gate_up, down = make_layer(spec)
    w1, w2 = prepare_experts(*gate_up, "gate_up"), prepare_experts(*down, "down")
    assert uses_gemv(1, spec) and not uses_gemv(17, spec)
    assert PREFILL.bn % 64 == 0 and DECODE_MX.bn % 64 == 0
    x = routable_x(1, spec, router_w, router_b)
    assert torch.equal(moe(x, router_w, router_b, w1, w2, spec, x_mx=mxfp8.quantize_reference(x)),
                       moe(x, router_w, router_b, w1, w2, spec))
    x = routable_x(17, spec, router_w, router_b)
    y = moe(x, router_w, router_b, w1, w2, spec, x_mx=mxfp8.quantize_reference(x))
    exact = moe_reference(x, router_w, router_b, gate_up, down, spec, mxfp8_activations=True)
    assert rel_err(y, exact) < 1e-2 < rel_err(moe(x, router_w, router_b, w1, w2, spec), exact)


def tiny_against_torch_ref(batch, context, steps, seq):
    """(logits median rel err, max, top-1 agreement) of the tiny model in mxfp4_mxfp8 against fp32
    torch_ref on the MXFP4 weights it reads, teacher-forced."""
    req = request("gpt-oss-tiny", "mxfp4_mxfp8", batch=batch, seq=seq)
    prompts, forced = inputs(req.spec, batch, context, steps)
    ref = reference_logits(dataclasses.replace(req, quant=weight_format(req.quant)), prompts, forced)
    eng = TritonMxfp4()
    eng.load(req)
    assert not uses_gemv(batch, req.spec), "decode must take the grouped MXFP8 path"
    logits, toks = engine_logits(eng, prompts, forced)
    assert torch.equal(toks, logits.argmax(-1))
    return compare(logits, ref)


@pytest.mark.slow  # ~1-2 min in the interpreter
def test_tiny_model_mxfp4_mxfp8_agrees_with_torch_ref():
    """Batch 3 x 24 tokens: prefill on the prefill tiles (36 rows an expert), decode on DECODE_MX."""
    median, _, agree = tiny_against_torch_ref(3, 24, 6, 32)
    assert agree >= 0.95 and median < 0.1, (median, agree)


@pytest.mark.slow  # compiles ~10 kernel variants for three targets (~1 min on 2 cores)
def test_kernels_compile_to_block_scaled_mma():
    """Compiled without a GPU for each target: sm_100 and sm_120 must carry block-scaled MMA
    instructions for the MXFP8 x MXFP4 grouped GEMMs, sm_90 none (Hopper upcasts)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "fp4_codegen.py"), "--json"], cwd=ROOT,
                         env={**env, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=600)
    if run.returncode == 3:
        pytest.skip(run.stdout.strip().splitlines()[-1])
    assert run.returncode == 0, run.stderr[-3000:]
    found = json.loads(run.stdout.strip().splitlines()[-1])
    assert {r["target"] for r in found} == {"sm_90", "sm_100", "sm_120"}
    for row in found:
        scaled = [i for i in row["mma"] if "block_scale" in i]
        if row["quant"] == "mxfp4" or row["target"] == "sm_90":
            assert not scaled, row
        elif row["tiles"] == "prefill":
            assert scaled and all("kind::mxf8f6f4" in i for i in scaled), row


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["gpt-oss-20b", "gpt-oss-120b"])
def test_full_model_mxfp8_matches_torch_ref(name):
    """Batch 64: the prefill (16k tokens) and the decode steps both take the grouped MXFP8 path."""
    assert not uses_gemv(64, request(name, "mxfp4_mxfp8", batch=64, seq=265).spec)
    median, _, agree = full_model_error(name, "mxfp4_mxfp8", batch=64, context=256, steps=8)
    assert agree >= 0.95 and median < 0.1
