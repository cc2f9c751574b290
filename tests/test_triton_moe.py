"""MoE kernels of triton_mxfp4 against their torch references.

Without CUDA the kernels run under TRITON_INTERPRET=1 (set by tests/conftest.py before triton is
imported); with CUDA the same tests run compiled.
"""

import re

import numpy as np
import pytest
import torch

from backends.triton_mxfp4 import moe_kernels as K
from backends.triton_mxfp4.moe import (GEMV_BY_MAJOR, GEMV_DEFAULT, gemv_tiles, gemv_tiles_for, moe, moe_reference,
                                       prepare_experts)
from backends.triton_mxfp4.routing import route, route_reference, router_logits
from harness.model.mxfp4 import E2M1_VALUES, dequantize, quantize
from harness.model.spec import get_spec

DEV = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture
def poisoned(monkeypatch):
    """Every torch.empty during the test comes back NaN (floats) or the type's maximum (ints), so an
    element the kernels forget to write fails the comparison or indexes out of bounds."""
    real = torch.empty

    def empty(*args, **kwargs):
        t = real(*args, **kwargs)
        return t.fill_(float("nan") if t.is_floating_point() else torch.iinfo(t.dtype).max)

    monkeypatch.setattr(torch, "empty", empty)


def small_spec(E=8, H=64, I=64):
    return get_spec("gpt-oss-tiny").with_(num_local_experts=E, hidden_size=H, intermediate_size=I)


def make_layer(spec, bias_scale=0.1):
    """Random router and MXFP4 experts of `spec`, quantised from Gaussian weights (std ~ 1/sqrt(K))."""
    E, H, I = spec.num_local_experts, spec.hidden_size, spec.intermediate_size
    g = torch.Generator().manual_seed(int(torch.randint(0, 2 ** 31, ())))
    w1 = torch.randn(E, 2 * I, H, generator=g) / H ** 0.5
    w2 = torch.randn(E, H, I, generator=g) / I ** 0.5
    b1 = (torch.randn(E, 2 * I, generator=g) * bias_scale).bfloat16()
    b2 = (torch.randn(E, H, generator=g) * bias_scale).bfloat16()
    router_w = (torch.randn(E, H, generator=g) / H ** 0.5).bfloat16()
    router_b = (torch.randn(E, generator=g) * 0.1).bfloat16()
    gate_up = (*quantize(w1), b1)
    down = (*quantize(w2), b2)
    to = lambda ts: tuple(t.to(DEV) for t in ts)  # noqa: E731
    return router_w.to(DEV), router_b.to(DEV), to(gate_up), to(down)


def routable_x(T, spec, router_w, router_b, margin=1e-2):
    """Activations whose router logits part the top k from the rest by at least `margin` in every
    row, so that no rounding of the router GEMM (cuBLAS, ours) changes which experts a token gets."""
    k = spec.num_experts_per_tok
    while True:
        x = torch.randn(T, spec.hidden_size, device=DEV).bfloat16()
        top = (x.double() @ router_w.double().T + router_b.double()).topk(k + 1, dim=-1).values
        if (top[:, k - 1] - top[:, k] > margin).all():
            return x


def rel_err(out, ref):
    return ((out.double() - ref.double()).norm() / ref.double().norm()).item()


def distinct_logits(T, E):
    """bf16 logits [T, E] with no ties in a row: a random permutation of 0..E-1 per row, halved."""
    return (torch.rand(T, E, device=DEV).argsort(dim=-1).float() * 0.5 - 1.0).bfloat16()


@pytest.mark.parametrize("T,E,H", [(1, 32, 64), (5, 6, 1100), (17, 20, 96), (70, 128, 64)])
def test_router_logits_are_the_linear_layer(T, E, H, poisoned):
    x = torch.randn(T, H, device=DEV).bfloat16()
    w = (torch.randn(E, H, device=DEV) / H ** 0.5).bfloat16()
    b = torch.randn(E, device=DEV).bfloat16()
    exact = x.double() @ w.double().T + b.double()
    for tiles in (None, {"be": 2, "bk": 64}, {"bt": 16, "be": 16, "bk": 32}):  # the default and both kernels
        out = router_logits(x, w, b, tiles)
        assert out.dtype == torch.bfloat16 and out.shape == (T, E)
        torch.testing.assert_close(out.double(), exact, rtol=2 ** -8, atol=1e-6)  # bf16 rounding of an fp32 sum
    with pytest.raises(ValueError, match=re.escape(f"router: x ({T}, {H + 32}), weight ({E}, {H})")):
        router_logits(torch.zeros(T, H + 32, device=DEV).bfloat16(), w, b)


@pytest.mark.parametrize("T", [1, 3, 17, 64])
@pytest.mark.parametrize("E", [8, 6])
def test_route_matches_topk_softmax(T, E, poisoned):
    logits = distinct_logits(T, E)
    r = route(logits, 4)
    ids, weights = route_reference(logits, 4)
    assert torch.equal(r.ids.long(), ids)
    torch.testing.assert_close(r.weights, weights, rtol=1e-6, atol=1e-7)
    counts = torch.bincount(ids.flatten(), minlength=E)
    assert r.offsets.tolist() == [0] + counts.cumsum(0).tolist()
    # Sorted rows: by expert, tokens ascending within an expert, every assignment exactly once.
    flat = ids.flatten()
    expected = torch.cat([(flat == e).nonzero().flatten() for e in range(E)])
    assert torch.equal(r.order.long(), expected)


def test_route_empty_experts_and_one_expert_for_all(poisoned):
    T, E = 40, 8
    logits = distinct_logits(T, E)
    logits[:, 5] = 100.0  # every token picks expert 5 first
    logits[:, 6:8] = torch.tensor([-100.0, -99.0], device=DEV)  # never picked
    r = route(logits, 4)
    ids, _ = route_reference(logits, 4)
    assert (r.ids[:, 0] == 5).all()
    assert r.offsets[6].item() == r.offsets[8].item() == T * 4
    assert r.offsets[6].item() - r.offsets[5].item() == T
    assert torch.equal(r.order[r.offsets[5]:r.offsets[6]].long(), torch.arange(T, device=DEV) * 4)
    assert torch.equal(r.ids.long(), ids)


GROUPED_TILES = {
    "decode_swap": K.Tiles(bm=16, bn=64, bk=64, swap=True),
    "prefill": K.Tiles(bm=32, bn=32, bk=64, swap=False, group_m=2),
}


@pytest.mark.parametrize("tiles", list(GROUPED_TILES), ids=str)
@pytest.mark.parametrize("T", [3, 17])
def test_grouped_kernels(T, tiles, poisoned):
    """Each regime's tiles at H = I = 96: two reduction steps, the second one half masked."""
    spec = small_spec(H=96, I=96)
    router_w, router_b, gate_up, down = make_layer(spec)
    x = routable_x(T, spec, router_w, router_b)
    t = GROUPED_TILES[tiles]
    w1, w2 = prepare_experts(*gate_up, "gate_up"), prepare_experts(*down, "down")
    r = route(router_logits(x, router_w, router_b), spec.num_experts_per_tok)
    y = K.down_grouped(K.gate_up_grouped(x, r, w1, spec, t), r, w2, spec, t)
    ref = moe_reference(x, router_w, router_b, gate_up, down, spec)
    assert not y.isnan().any()
    assert rel_err(y, ref) < 1e-2


@pytest.mark.parametrize("T", [1, 3])
def test_gemv_kernels(T, poisoned):
    """H = I = 96 at bk 64: one full reduction step and a half-masked one."""
    spec = small_spec(H=96, I=96)
    router_w, router_b, gate_up, down = make_layer(spec)
    x = routable_x(T, spec, router_w, router_b)
    t = K.GemvTiles(bn=32, bk=64)
    w1, w2 = prepare_experts(*gate_up, "gate_up"), prepare_experts(*down, "down")
    logits = torch.nn.functional.linear(x, router_w, router_b)
    y = K.down_gemv(K.gate_up_gemv(x, logits, w1, spec, t), logits, w2, spec, t)
    ref = moe_reference(x, router_w, router_b, gate_up, down, spec)
    assert not y.isnan().any()
    assert rel_err(y, ref) < 1e-2


def test_fp16_decode_is_the_e2m1_table():
    """The fp16x2 decode, op for op as its PTX, of every byte in every position of a word: each
    code becomes the fp16 of its E2M1 value times 2^-14, exactly (signed zeros included)."""
    table = np.array(E2M1_VALUES, np.float64) * 2.0 ** -14
    byte = np.arange(256, dtype=np.uint32)
    for pos in range(4):  # byte pos of a word holds codes 2*pos (low nibble) and 2*pos + 1
        pairs = K._fp16x2_decode_reference(byte << np.uint32(8 * pos))
        for nibble, code in ((2 * pos, byte & 15), (2 * pos + 1, byte >> 4)):
            i, half = nibble % 4, nibble // 4  # pair i holds nibble i (low half) and i + 4 (high half)
            bits = (pairs[i] >> np.uint32(16 * half)) & np.uint32(0xFFFF)
            got = bits.astype(np.uint16).view(np.float16).astype(np.float64)
            np.testing.assert_array_equal(got, table[code])
            np.testing.assert_array_equal(np.signbit(got), np.signbit(table[code]))
            others = (pairs[i] >> np.uint32(16 * (1 - half))) & np.uint32(0xFFFF)
            assert not others.any(), "a byte's code leaked into the other half of its pair"


def test_gemv_decodes_every_byte_exactly(poisoned):
    """The down gemv with one-hot activation rows and power-of-two scales reads single weights:
    row r of the weights holds byte (r + 37 j) mod 256 at position j, assignment a's x is 1/4 at
    column a, so out[a, r] must be 8/4 times the E2M1 value of nibble a % 2 of byte
    (r + 37 (a // 2)) mod 256, exactly (all 256 bytes, both nibbles, every position of a
    64-column row)."""
    spec = small_spec(E=4, H=32, I=64)
    k, N, Kd = spec.num_experts_per_tok, spec.hidden_size, spec.intermediate_size
    r, j = torch.arange(N)[:, None], torch.arange(Kd // 2)[None, :]
    byte = ((r + 37 * j) % 256).to(torch.uint8)
    assert byte.unique().numel() == 256
    blocks = byte.reshape(1, N, Kd // 32, 16).expand(spec.num_local_experts, -1, -1, -1)
    scales = torch.full(blocks.shape[:-1], 127 + 3, dtype=torch.uint8)  # 2^3: the values times 8
    w = prepare_experts(blocks.to(DEV), scales.to(DEV), torch.zeros(blocks.shape[:2], device=DEV), "down")
    A = Kd  # one assignment per column
    h = torch.eye(A, Kd, device=DEV).bfloat16() * 0.25
    logits = distinct_logits(A // k, spec.num_local_experts)
    out = torch.empty((A, N), device=DEV, dtype=torch.float32)
    out = K._gemv(h, logits, w, spec, K.GemvTiles(bn=32, bk=64).fit(N, Kd), out, gate_up=False)
    table = torch.tensor(E2M1_VALUES, dtype=torch.float32)
    a = torch.arange(A)[:, None]
    b = ((torch.arange(N)[None, :] + 37 * (a // 2)) % 256)
    expected = table[torch.where(a % 2 == 0, b & 15, b >> 4)] * 8 * 0.25
    assert torch.equal(out.cpu(), expected)


@pytest.mark.parametrize("split", [1, 2, 3, 8])
def test_down_gemv_split_k(split, poisoned):
    """down over K = 224 at bk 64: 3 full steps and a half-masked one, so no split divides it evenly
    (split 3: runs of 1, 1 and 2 steps, the tail in the last; split 8 is fitted to 4 runs of one
    step). Every (assignment, run) row must be written (poisoned) and their sum be W2 h + w b2 per
    token, within the fp16 rounding of each product and lane sum."""
    spec = small_spec(H=32, I=224)
    k, T = spec.num_experts_per_tok, 2
    _, _, _, down = make_layer(spec, bias_scale=1.0)
    w = prepare_experts(*down, "down")
    logits = distinct_logits(T, spec.num_local_experts)
    h = torch.randn(T * k, spec.intermediate_size, device=DEV).bfloat16()
    h[:, -32:] *= 100  # the tail's own x scale differs from the other runs'
    tiles = K.GemvTiles(bn=16, bk=64, split=split)
    assert tiles.fit(w.n, w.k).split == min(split, 4)
    y = K.down_gemv(h, logits, w, spec, tiles, torch.float32)
    ids, weights = route_reference(logits, k)
    w2 = dequantize(down[0], down[1], torch.float64)[ids.flatten()]  # [T*k, H, I]
    per_slot = (w2 @ h.double()[:, :, None])[..., 0] + weights.flatten()[:, None].double() * down[2][ids.flatten()]
    ref = per_slot.reshape(T, k, -1).sum(dim=1)
    assert rel_err(y, ref) < 3e-3


def test_gate_up_gemv_refuses_split():
    spec = small_spec()
    _, _, gate_up, _ = make_layer(spec)
    x = torch.zeros(1, spec.hidden_size, device=DEV).bfloat16()
    logits = distinct_logits(1, spec.num_local_experts)
    with pytest.raises(ValueError, match="split 2 > 1 is for down only"):
        K.gate_up_gemv(x, logits, prepare_experts(*gate_up, "gate_up"), spec, K.GemvTiles(bn=32, bk=64, split=2))
    with pytest.raises(ValueError, match="split must be >= 1"):
        K.GemvTiles(bn=32, bk=64, split=0)


def test_gemv_tiles_by_architecture():
    assert gemv_tiles_for(9) == GEMV_BY_MAJOR[9]
    assert gemv_tiles_for(10 ** 6) == GEMV_DEFAULT  # an architecture not in the table
    assert gemv_tiles(torch.device("cpu")) == GEMV_DEFAULT


@pytest.mark.parametrize("major", sorted(GEMV_BY_MAJOR))
def test_gemv_at_each_architectures_tiles(major, poisoned):
    """The table's tiles as the engine runs them: H = I = 640 leaves them unshrunk (bk 512: one
    full step and a masked one of 128), so their warps, thread bytes and split are the real ones."""
    tiles = gemv_tiles_for(major)
    spec = small_spec(H=640, I=640)
    router_w, router_b, gate_up, down = make_layer(spec)
    w1, w2 = prepare_experts(*gate_up, "gate_up"), prepare_experts(*down, "down")
    assert tiles.gate_up.fit(w1.n, w1.k) == tiles.gate_up and tiles.down.fit(w2.n, w2.k) == tiles.down
    x = routable_x(1, spec, router_w, router_b)
    logits = torch.nn.functional.linear(x, router_w, router_b)
    y = K.down_gemv(K.gate_up_gemv(x, logits, w1, spec, tiles.gate_up), logits, w2, spec, tiles.down)
    assert rel_err(y, moe_reference(x, router_w, router_b, gate_up, down, spec)) < 1e-2


@pytest.mark.parametrize("n,k", [(5760, 2880), (2880, 2880), (32, 224), (128, 64)])
def test_gemv_fit_gives_each_thread_whole_16_byte_groups(n, k):
    """fp16x2's asm takes 16-byte groups (pack=16): every fitted tile gives each thread at least 16
    bytes of each step, at any split, and never more runs than steps."""
    for bn in (16, 32, 64, 128):
        for bk in (64, 128, 256, 512):
            for warps in (1, 2, 4, 8):
                for split in (1, 2, 3, 4, 16):
                    t = K.GemvTiles(bn, bk, warps, split=split).fit(n, k)
                    assert t.bn * t.bk // 2 // (32 * t.num_warps) >= 16, t
                    assert 1 <= t.split <= -(-k // t.bk) and t.split <= split, t


@pytest.mark.parametrize("T", [1, 3, 17, 64])
def test_moe_matches_reference(T, poisoned):
    """T = 1 takes the gemv path, 3 and 17 the decode tiles, 64 (32 rows per expert) the prefill tiles."""
    spec = small_spec()
    router_w, router_b, gate_up, down = make_layer(spec)
    x = routable_x(T, spec, router_w, router_b)
    y = moe(x, router_w, router_b, prepare_experts(*gate_up, "gate_up"), prepare_experts(*down, "down"), spec)
    ref = moe_reference(x, router_w, router_b, gate_up, down, spec)
    assert y.dtype == torch.bfloat16 and y.shape == x.shape
    assert not y.isnan().any()
    assert rel_err(y, ref) < 1e-2


@pytest.mark.parametrize("T", [1, 17])
def test_swiglu_clamp_edges(T, poisoned):
    """Biases far beyond the limit drive gates and ups into both clamps (and through 0 for the gate)."""
    spec = small_spec()
    router_w, router_b, gate_up, down = make_layer(spec)
    limit = spec.swiglu_limit
    b1 = torch.linspace(-3 * limit, 3 * limit, gate_up[2].numel(), device=DEV)
    gate_up = (gate_up[0], gate_up[1], b1[torch.randperm(b1.numel(), device=DEV)].reshape(gate_up[2].shape).bfloat16())
    x = routable_x(T, spec, router_w, router_b)
    y = moe(x, router_w, router_b, prepare_experts(*gate_up, "gate_up"), prepare_experts(*down, "down"), spec)
    ref = moe_reference(x, router_w, router_b, gate_up, down, spec)
    assert not y.isnan().any()
    assert rel_err(y, ref) < 1e-2


def test_prepare_experts_rejects_bad_shapes():
    spec = small_spec()
    _, _, gate_up, _ = make_layer(spec)
    with pytest.raises(ValueError, match="bias"):
        prepare_experts(gate_up[0], gate_up[1], gate_up[2][:, :-2], "gate_up")
    with pytest.raises(ValueError, match="kind"):
        prepare_experts(*gate_up, "up")
    with pytest.raises(TypeError, match="uint8"):
        prepare_experts(gate_up[0].float(), gate_up[1], gate_up[2], "gate_up")
