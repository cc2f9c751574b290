"""gptoss-explain: the path each engine takes on modelled devices (compute capability 8.0, 8.9, 9.0,
10.0, 12.0), kernel names mapped to paths, vLLM asked where it is absent, MXFP4 against bf16 from a
recorded run, and the console script on this CPU (exit 0, the documented table, the HTML page)."""

from __future__ import annotations

import subprocess
import sys

import pandas as pd
import pytest

from harness.analysis import mxfp4_paths as P
from harness.analysis.quant_comparison import compare_quants, longest_context
from harness.model.spec import get_spec
from harness.results import POINT_COLUMNS, to_table, write_atomic

# compute capability -> (vLLM's default, TensorRT-LLM's, whether llama.cpp multiplies on FP4 tensor cores)
MODELLED = {
    "8.0": ("Marlin", "not supported", False),
    "8.9": ("Marlin", "not supported", False),
    "9.0": ("TRITON: triton_kernels matmul_ogs", "TRITON moe_backend", False),
    "10.0": ("FlashInfer TRTLLM-gen MXFP4 x bf16", "TRTLLM (latency) or CUTLASS", False),
    "12.0": ("Marlin", "CUTLASS moe_backend: MXFP8 x MXFP4", True),
}


@pytest.mark.parametrize("cc", sorted(MODELLED))
def test_the_path_each_engine_takes_on_a_modelled_device(cc):
    arch = P.arch_of(cc)
    assert arch == "sm_" + cc.replace(".", "")
    vllm, trtllm, llama_native = MODELLED[cc]
    assert P.documented("vLLM", arch).path.startswith(vllm)
    assert P.documented("TensorRT-LLM", arch).path.startswith(trtllm)
    assert P.documented("llama.cpp", arch).native_fp4 is llama_native
    ours = P.documented("ours", arch)
    assert not ours.native_fp4 and "_gemv_kernel" in ours.path  # bf16 activations: no FP4 MMA anywhere
    assert ("native" in ours.options) == (cc in ("10.0", "12.0"))
    assert not P.documented("vLLM", arch).native_fp4  # every default of vLLM keeps bf16 activations
    assert ("MXFP8" in P.documented("vLLM", arch).options) == (cc in ("10.0", "12.0"))


def test_every_cell_of_the_table_has_a_version_and_a_source():
    cells = {(p.arch, p.engine): p for p in P.DOCUMENTED}
    assert set(cells) == {(a, e) for a in P.ARCHS for e in P.ENGINES} and len(cells) == len(P.DOCUMENTED)
    assert all(p.version and p.source and p.short and p.basis == "documented" for p in P.DOCUMENTED)


def test_capabilities_map_onto_the_table_rows():
    assert [P.arch_of(c) for c in ("8.6", "8.7", (10, 3), "12.1", "7.5", "11.0", None)] == \
        ["sm_80", "sm_80", "sm_100", "sm_120", None, None, None]


def test_kernel_names_map_to_paths():
    names = ["_gemv_kernel", "_gate_up_kernel", "_down_kernel", "_attn_decode_kernel", "nvjet_tst_64x8_64x16_2x1_v_bz_TNT",
             "_matmul_ogs_NNT_bf16xbf16xmxfp4_16x256x128x1", "void marlin_moe_wna16::Marlin<...>",
             "void mul_mat_vec_q<(ggml_type)39, 1>(...)", "void mul_mat_q<(ggml_type)39, 64, false>(...)"]
    got = {k: (engine, path) for k, engine, path in P.classify_kernels(names)}
    assert set(got) == set(names) - {"_attn_decode_kernel", "nvjet_tst_64x8_64x16_2x1_v_bz_TNT"}
    assert got["_gemv_kernel"][0] == "ours" and "CUDA-core" in got["_gemv_kernel"][1]
    assert "dot_scaled" in got["_down_kernel"][1]
    assert got["_matmul_ogs_NNT_bf16xbf16xmxfp4_16x256x128x1"] == ("vLLM", "TRITON: triton_kernels matmul_ogs (W4A16)")
    assert "Marlin" in got["void marlin_moe_wna16::Marlin<...>"][1]
    assert "dp4a" in got["void mul_mat_vec_q<(ggml_type)39, 1>(...)"][1]
    assert "MMA" in got["void mul_mat_q<(ggml_type)39, 64, false>(...)"][1]


def test_asking_an_interpreter_without_vllm_says_why():
    answer = P.ask_vllm(sys.executable, timeout_s=60)
    assert answer.backend is None and answer.version is None
    assert "vLLM could not be asked" in answer.error and "vllm" in answer.error.lower()


def recorded_run(tmp_path):
    """A run folder of the explain sweep: 20b mxfp4 and bf16 ok, 120b bf16 skipped, one failed point."""
    rows = []
    for quant, weights, tpot in (("mxfp4", 12.8, 2.4), ("bf16", 38.9, 4.1)):
        for b in (1, 8, 64):
            for c in (1024, 8192):
                rows.append(dict(run_id="r", point_id=f"20b-{quant}-{b}-{c}", model="gpt-oss-20b", backend="triton_mxfp4",
                                 quant=quant, batch_size=b, context_len=c, status="ok", weights_gib=weights,
                                 device_mem_gib=139.8, tpot_ms_p50=tpot * (1 + b / 64) * (1 + c / 8192),
                                 prefill_tok_s=50000.0 if quant == "mxfp4" else 60000.0, prefill_mfu=0.6,
                                 energy_j_per_tok=1.0))
    rows[-1].update(status="error", tpot_ms_p50=None, error="RuntimeError: boom")
    rows.append(dict(run_id="r", point_id="120b-bf16-1-1024", model="gpt-oss-120b", backend="triton_mxfp4", quant="bf16",
                     batch_size=1, context_len=1024, status="skipped", required_gib=218.0, device_mem_gib=139.8))
    run = tmp_path / "r"
    run.mkdir()
    write_atomic(to_table(pd.DataFrame(rows), POINT_COLUMNS), run / "points.parquet")
    return run


def test_mxfp4_against_bf16_from_a_recorded_run(tmp_path):
    from harness.results import load
    rows = compare_quants(load(recorded_run(tmp_path)))
    assert [(r.model, r.quant, r.fits) for r in rows] == [
        ("gpt-oss-120b", "bf16", False), ("gpt-oss-20b", "mxfp4", True), ("gpt-oss-20b", "bf16", True)]
    big, mx, bf = rows
    assert big.required_gib == 218.0 and big.tpot_ms == {}
    assert mx.tpot_ms[1] == pytest.approx(2.4 * (1 + 1 / 64) * (1 + 1024 / 8192)) and mx.weights_gib == 12.8
    assert mx.prefill_tok_s == 50000.0 and bf.prefill_tok_s == 60000.0
    assert mx.longest_context == get_spec("gpt-oss-20b").max_position_embeddings  # 127 GiB left: every position
    big_spec = get_spec("gpt-oss-120b")  # 3.2 GiB left: full layers hold 18 x 2 KiB a token
    n = longest_context(big_spec, 64.0, 60.8)
    assert big_spec.kv_cache_bytes(1, n) <= 3.2 * 2**30 < big_spec.kv_cache_bytes(1, n + 1)
    assert longest_context(big_spec, 60.0, 60.8) is None


def explain(*args):
    return subprocess.run([sys.executable, "-m", "harness.explain_cli", *args], capture_output=True, text=True,
                          timeout=240, env={"COLUMNS": "200", **__import__("os").environ})


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="the CPU behaviour")
def test_gptoss_explain_on_a_cpu_prints_the_table_and_writes_the_page(tmp_path):
    out = tmp_path / "explain.html"
    res = explain("-o", str(out), "--cache-dir", str(tmp_path / "cache"), "--run", str(recorded_run(tmp_path)))
    assert res.returncode == 0, res.stderr
    text = res.stdout
    assert "no GPU path" in text and "documented, not measured" in text
    for arch in P.ARCHS:
        assert arch in text
    assert "TRITON matmul_ogs W4A16" in text and "Marlin W4A16" in text
    assert "does not fit: needs 218 GiB" in text
    html = out.read_text()
    assert 'id="documented"' in html and 'id="no-gpu"' in html and "documented, not measured" in html
    assert P.VLLM_ORACLE in html and 'id="comparison"' in html and "needs 218 GiB" in html
    assert not (tmp_path / "cache" / "calibration").exists()


def test_gptoss_explain_refuses_a_missing_run_in_one_line(tmp_path):
    res = explain("-o", str(tmp_path / "e.html"), "--run", str(tmp_path / "nope"), "--no-profile")
    assert res.returncode == 2 and "Traceback" not in res.stderr and "no run folder" in res.stderr
