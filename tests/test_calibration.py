"""Calibration (harness.analysis.calibration): the record, its cache, no GPU -> None, the FP4 probe's
reference; the roofline columns against measured ceilings and the datasheet side by side. The gpu
test measures the ceilings of the GPU it runs on."""

from __future__ import annotations

import json

import pytest
import torch

from harness.analysis import calibration as C
from harness.analysis import fp4_matmul
from harness.analysis.hardware import gpu_peak
from harness.analysis.roofline import COLUMNS, roofline
from harness.model.spec import get_spec

H100 = "NVIDIA H100 80GB HBM3"


def record(**changes) -> C.Ceilings:
    base = dict(gpu_name=H100, compute_capability="9.0", driver="580.65.06", copy_bytes_s=3.0e12,
                bf16_flops=700e12, fp8_flops=1300e12, fp4_flops=None, fp4_kernel=None,
                measured_at="2026-12-02T00:00:00+00:00")
    return C.Ceilings(**{**base, **changes})


def test_record_round_trips_through_json():
    c = record()
    assert C.Ceilings.from_dict(json.loads(json.dumps(c.to_dict()))) == c
    assert c.ridge_flops_per_byte == pytest.approx(700e12 / 3.0e12)


def test_cache_path_is_per_gpu_and_driver(tmp_path):
    a = C.cache_path(tmp_path, H100, "580.65.06")
    assert a.parent == tmp_path / "calibration" and "H100" in a.name and "580.65.06" in a.name
    assert a != C.cache_path(tmp_path, H100, "575.51.03") != C.cache_path(tmp_path, "NVIDIA H200", "580.65.06")
    assert "unknown" in C.cache_path(tmp_path, H100, None).name


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour without a GPU")
def test_without_a_gpu_calibrate_is_none_and_measuring_says_why(tmp_path):
    assert C.calibrate("cuda", tmp_path) is None and C.calibrate("cpu", tmp_path) is None
    assert not (tmp_path / "calibration").exists()
    with pytest.raises(C.NoGpu, match="CUDA GPU"):
        C.copy_bandwidth()
    with pytest.raises(C.NoGpu):
        C.matmul_rate("cpu")


def test_fp4_tensor_cores_only_on_blackwell():
    assert [C.fp4_tensor_cores(cc) for cc in ((8, 0), (8, 9), (9, 0), (10, 0), (12, 0))] == \
        [False, False, False, True, True]


def test_fp4_reference_decodes_e2m1_and_e8m0():
    codes = torch.tensor([[0x21] * 16], dtype=torch.uint8)  # low nibble 1 (0.5) first, high 2 (1.0)
    scales = torch.tensor([[128]], dtype=torch.uint8)  # 2^(128-127) = 2
    values = fp4_matmul.dequantize(codes, scales)
    assert values.shape == (1, 32) and values[0, :2].tolist() == [1.0, 2.0]
    neg = fp4_matmul.dequantize(torch.tensor([[0xF9] * 16], dtype=torch.uint8), torch.tensor([[127]], dtype=torch.uint8))
    assert neg[0, :2].tolist() == [-0.5, -6.0]


def test_roofline_against_measured_ceilings_and_the_datasheet():
    spec, c = get_spec("gpt-oss-20b"), record()
    peak = gpu_peak(H100)
    cols = roofline(spec, "mxfp4", 1, 1024, 2, tpot_ms=5.0, ttft_ms=20.0, gpu_name=H100, ceilings=c)
    assert set(cols) == set(COLUMNS)
    nbytes, flops = spec.decode_step_bytes(1, 1024, "mxfp4"), spec.decode_step_flops(1, 1024)
    assert cols["mbu"] == pytest.approx(nbytes / 5e-3 / c.copy_bytes_s)
    assert cols["mbu_datasheet"] == pytest.approx(nbytes / 5e-3 / peak.mem_bw_bytes_s)
    assert cols["mbu"] > cols["mbu_datasheet"]  # the copy reaches less than the datasheet's peak
    assert cols["mfu"] == pytest.approx(flops / 5e-3 / c.bf16_flops)
    assert cols["prefill_mfu"] == pytest.approx(spec.prefill_flops(1, 1024) / 20e-3 / c.bf16_flops)
    assert cols["prefill_mfu_datasheet"] == pytest.approx(spec.prefill_flops(1, 1024) / 20e-3 / peak.bf16_flops)
    assert cols["bound"] == "memory"


def test_roofline_without_calibration_leaves_the_measured_columns_null():
    spec = get_spec("gpt-oss-20b")
    cols = roofline(spec, "mxfp4", 1, 1024, 2, tpot_ms=5.0, ttft_ms=None, gpu_name=H100)
    assert cols["mbu"] is None and cols["mfu"] is None and cols["mbu_datasheet"] > 0
    assert cols["bound"] == "memory" and cols["prefill_mfu_datasheet"] is None
    unknown = roofline(spec, "mxfp4", 1, 1024, 2, tpot_ms=5.0, ttft_ms=1.0, gpu_name="NVIDIA GH200 480GB",
                       ceilings=record(gpu_name="NVIDIA GH200 480GB"))
    assert unknown["mbu_datasheet"] is None and unknown["mbu"] > 0 and unknown["bound"] == "memory"
    cpu = roofline(spec, "mxfp4", 1, 1024, 2, tpot_ms=5.0, ttft_ms=1.0, gpu_name=None)
    assert all(cpu[k] is None for k in COLUMNS if not k.startswith("decode_"))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_calibrate_measures_once_and_caches(tmp_path):
    first = C.calibrate("cuda", tmp_path)
    files = list((tmp_path / "calibration").glob("*.json"))
    assert len(files) == 1 and first.gpu_name == torch.cuda.get_device_name()
    assert 1e11 < first.copy_bytes_s < 2e13 and 1e13 < first.bf16_flops < 1e16
    major, minor = torch.cuda.get_device_capability()
    assert (first.fp8_flops is not None) == ((major, minor) >= (8, 9))
    assert (first.fp4_flops is None) or C.fp4_tensor_cores((major, minor))
    peak = gpu_peak(first.gpu_name)
    if peak is not None:  # a measured ceiling below the datasheet's, within reason
        assert 0.3 * peak.mem_bw_bytes_s < first.copy_bytes_s < peak.mem_bw_bytes_s
        assert 0.3 * peak.bf16_flops < first.bf16_flops < 1.05 * peak.bf16_flops
    assert C.calibrate("cuda", tmp_path) == first  # from the cache: same measured_at
    print(first)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_fp4_matmul_matches_its_reference():
    """tl.dot_scaled e2m1 x e2m1: native on cc 10.x/12.x, emulated (upcast) elsewhere; same numbers."""
    a, a_s, b, b_s = fp4_matmul.random_operands(256, 512, 512, "cuda")
    out = fp4_matmul.matmul(a, a_s, b, b_s, torch.empty(256, 512, device="cuda", dtype=torch.bfloat16))
    ref = fp4_matmul.reference(a, a_s, b, b_s)
    assert (out.float() - ref).norm() / ref.norm() < 1e-2
