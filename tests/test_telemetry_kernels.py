"""Kernel categories and the per-phase kernel table, on a trace shaped like torch.profiler's
(kineto) Chrome export of a CUDA run: host ranges and launches, device kernels joined by
correlation id, timestamps in µs on one clock."""

import gzip
import json

import pytest

from harness.telemetry.kernel_categories import CATEGORIES, categorize
from harness.telemetry.kernel_timeline import (OVERLAP_TID, enclosing_ranges, kernel_table, load_trace, nest,
                                               nest_trace, outermost)

HOST, DEVICE = {"pid": 100, "tid": 100}, {"pid": 0, "tid": 7}


class Trace:
    def __init__(self):
        self.events = [{"ph": "M", "name": "process_name", "pid": 0, "tid": 0, "args": {"name": "GPU 0"}}]
        self.corr = 0

    def span(self, cat, name, ts, dur, where, **args):
        self.events.append({"ph": "X", "cat": cat, "name": name, "ts": ts, "dur": dur, **where, "args": args})

    def range(self, name, ts, dur):
        self.span("user_annotation", name, ts, dur, HOST)

    def kernel(self, name, launch_ts, start, dur, cat="kernel", api="cuda_runtime"):
        self.corr += 1
        self.span(api, "cudaLaunchKernel", launch_ts, 2, HOST, correlation=self.corr)
        self.span(cat, name, start, dur, DEVICE, correlation=self.corr, stream=7)


GEMM = "sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64"


def trace() -> Trace:
    t = Trace()
    t.kernel("warmup_kernel", 0, 5, 10)  # before the phases: not in the table
    t.range("prefill", 100, 200)  # device busy 120-150, 150-190, 200-280: idle 20 + 10 + 20
    t.range("attention", 101, 10)
    t.kernel(GEMM, 102, 120, 30)
    t.kernel("_flash_attn_fwd", 104, 150, 40)
    t.range("w1+swiglu", 120, 10)
    t.kernel(GEMM, 121, 200, 50, api="cuda_driver")  # the same GEMM, launched inside the MoE range
    t.kernel("Memcpy DtoH (Device -> Pinned)", 125, 250, 30, cat="gpu_memcpy")
    t.range("decode", 300, 100)  # two steps; device busy 310-330, 330-340, 360-380, 380-390
    t.span("cpu_op", "aten::rms_norm", 300, 2, HOST)  # the first step's kernel launches from it
    for step in (0, 50):
        t.kernel("triton_poi_fused_mystery_0", 301 + step, 310 + step, 20)
        t.kernel("void at::native::reduce_kernel<ArgMaxOps<float>>", 302 + step, 330 + step, 10)
    return t


def test_kernel_table_groups_categorises_and_finds_launch_gaps():
    table = kernel_table(trace().events, ["prefill", "decode"])
    prefill = table[table.phase == "prefill"].set_index(["kernel", "category"])
    assert prefill.loc[(GEMM, "moe_gemm"), "total_ms"] == pytest.approx(0.050)
    assert prefill.loc[(GEMM, "attention"), "total_ms"] == pytest.approx(0.030)
    assert prefill.loc[("_flash_attn_fwd", "attention"), "calls"] == 1
    assert prefill.loc[("Memcpy DtoH (Device -> Pinned)", "memcpy"), "mean_us"] == pytest.approx(30)
    gap = prefill.loc[("launch_gap", "launch_gap")]
    assert gap.total_ms == pytest.approx(0.050) and gap.calls == 3
    assert prefill.share.sum() == pytest.approx(1)
    assert prefill.total_ms.sum() == pytest.approx(0.200)  # the phase's wall time
    assert "warmup_kernel" not in set(table.kernel)

    decode = table[table.phase == "decode"].set_index("kernel")
    mystery = decode.loc["triton_poi_fused_mystery_0"]
    assert sorted(zip(mystery.category, mystery.calls)) == [("norm", 1), ("other", 1)]  # never dropped
    assert decode.loc["void at::native::reduce_kernel<ArgMaxOps<float>>", "category"] == "sampling"
    assert decode.loc["launch_gap", "total_ms"] == pytest.approx(0.040)
    assert decode.share.sum() == pytest.approx(1)
    assert list(table.phase.unique()) == ["prefill", "decode"]
    assert table.groupby("phase").kernel.last().tolist() == ["launch_gap", "launch_gap"]  # gap line last


def test_backend_category_comes_first_and_is_checked():
    table = kernel_table(trace().events, ["decode"], lambda k: "router" if "mystery" in k else None)
    assert table.set_index("kernel").loc["void at::native::reduce_kernel<ArgMaxOps<float>>", "category"] == "sampling"
    assert table[table.kernel == "triton_poi_fused_mystery_0"][["category", "calls"]].values.tolist() == [["router", 2]]
    with pytest.raises(ValueError, match="'mystery'.*categories are"):
        categorize("mystery", backend=lambda k: "gemm")


def test_a_phase_missing_from_the_trace_has_no_rows():
    assert set(kernel_table(trace().events, ["prefill", "warmup"]).phase) == {"prefill"}


@pytest.mark.parametrize("name, ranges, category", [
    ("fused_moe_kernel", (), "moe_gemm"),
    ("_matmul_ogs_NNT_bf16xbf16xmxfp4_16x256x128x1", (), "moe_gemm"),
    ("void vllm::moe::topkGatingSoftmax<8>", (), "router"),
    ("void at::native::sbtopk::gatherTopK<float>", (), "router"),
    ("flash_fwd_splitkv_kernel", (), "attention"),
    ("triton_red_fused__to_copy_add_mean_mul_pow_rsqrt_rms_norm_0", (), "norm"),
    ("_rope_kernel", (), "rope"),
    ("Memset (Device)", (), "memcpy"),
    ("at::native::normal_kernel", (), "other"),  # "normal" is not a norm
    (GEMM, ("decode", "attention"), "attention"),
    (GEMM, ("decode", "unembedding"), "lm_head"),
    (GEMM, ("decode", "attention", "sdpa"), "attention"),
    ("totally_unknown", ("decode",), "other"),
    ("void at::native::vectorized_elementwise_kernel<4, pow>", ("decode", "attention", "aten::rms_norm"), "norm"),
    ("void at::native::direct_copy_kernel_cuda", ("decode", "w1+swiglu", "aten::to", "aten::copy_"), "moe_gemm"),
])
def test_category_rules(name, ranges, category):
    assert categorize(name, ranges) == category
    assert category in CATEGORIES


def test_enclosing_ranges_innermost_last_and_per_thread():
    annotations = [{"name": "a", "ts": 0, "dur": 100, **HOST}, {"name": "b", "ts": 10, "dur": 20, **HOST},
                   {"name": "c", "ts": 50, "dur": 10, **HOST}, {"name": "x", "ts": 0, "dur": 100, "pid": 1, "tid": 2}]
    points = [(100, 100, 15), (100, 100, 40), (100, 100, 50), (100, 100, 200), (1, 2, 5)]
    assert enclosing_ranges(annotations, points) == [("a", "b"), ("a",), ("a", "c"), (), ("x",)]


def test_outermost_cpu_ops():
    ops = [{"name": n, "ts": ts, "dur": d, **HOST} for n, ts, d in
           [("aten::linear", 0, 10), ("aten::addmm", 1, 8), ("aten::relu", 12, 3), ("aten::clamp", 13, 1)]]
    assert [o["name"] for o in outermost(ops)] == ["aten::linear", "aten::relu"]


def test_load_trace_reads_gzip(tmp_path):
    path = tmp_path / "t.json.gz"
    with gzip.open(path, "wt") as f:
        json.dump({"traceEvents": trace().events}, f)
    assert load_trace(path) == trace().events


def test_overlapping_kernels_of_a_stream_move_to_a_lane_where_they_nest(tmp_path):
    """As on the H100: cuBLASLt's split-K reduce starts (PDL) 2 us before its GEMM ends."""
    t = Trace()
    t.events.append({"ph": "M", "name": "thread_name", "pid": 0, "tid": 7, "args": {"name": "stream 7 "}})
    t.range("decode", 0, 100)
    t.kernel("nvjet_sm90_tst_splitK", 1, 10, 5)
    t.kernel("cublasLt::splitKreduce_kernel", 4, 13, 2.3)  # 10-15 and 13-15.3: neither holds the other
    t.kernel("later", 7, 20, 5)
    t.kernel("inside_later", 10, 21, 2)  # nested: stays
    path = tmp_path / "trace.json.gz"
    with gzip.open(path, "wt") as f:
        json.dump({"traceEvents": t.events, "displayTimeUnit": "ms"}, f)
    events = nest_trace(path)
    assert load_trace(path) == events and json.load(gzip.open(path, "rt"))["displayTimeUnit"] == "ms"
    tid = {e["name"]: e["tid"] for e in events if e.get("cat") == "kernel"}
    assert tid == {"nvjet_sm90_tst_splitK": 7, "cublasLt::splitKreduce_kernel": 7 + OVERLAP_TID, "later": 7,
                   "inside_later": 7}
    assert {"ph": "M", "name": "thread_name", "pid": 0, "tid": 7 + OVERLAP_TID,
            "args": {"name": "stream 7 (overlapping, 1)"}} in events
    assert len(events) == len(t.events) + 1
    assert nest(events) == events  # already nested: unchanged
    decode = kernel_table(events, ["decode"]).set_index("kernel")  # the table still counts every kernel
    assert decode.loc["cublasLt::splitKreduce_kernel", "total_ms"] == pytest.approx(0.0023)
