"""The findings section on recorded run folders (written here as a sweep writes them: points.parquet
through harness.results.to_table, env.json, config.yaml): two models, one on synthetic weights and
one from a checkpoint; two engines on the same shapes; an MXFP4 and bf16 pair; failed, throttled,
noisy and disagreeing points. Every number a sentence states is held to points.parquet, every
derived number to the cells it comes from; the section opens the page; two models never share a
series."""

import json
import re

import pandas as pd
import pytest
import yaml
from markupsafe import escape

from harness.report import figures, write_report
from harness.report.findings import HOST_BOUND, KINDS, NOISY_CV, findings
from harness.report.runs import load_runs
from harness.results import POINT_COLUMNS, to_table, write_atomic

CHECKPOINT = "/data/checkpoints/gpt-oss-120b"
SEED = 7
GPU, CAPACITY_GIB = "NVIDIA H200", 139.8
UUID, OTHER_UUID = "GPU-4093be2c-d74f-756d-67ab-f0b5728d0a95", "GPU-7d1e0c55-2b1a-4c9e-9f00-1c2d3e4f5a6b"
# (backend, model, quant): engines and modes of the recorded sweep; weights GiB and a speed factor
ENGINES = [("triton_mxfp4", "gpt-oss-20b", "mxfp4", 12.8, 1.0), ("vllm", "gpt-oss-20b", "mxfp4", 13.1, 0.8),
           ("vllm", "gpt-oss-20b", "bf16", 38.9, 0.45), ("triton_mxfp4", "gpt-oss-120b", "mxfp4", 60.8, 0.9),
           ("vllm", "gpt-oss-120b", "mxfp4", 61.5, 0.7), ("vllm", "gpt-oss-120b", "bf16", 217.0, 1.0)]
BATCHES, CONTEXTS = [1, 8, 64], [128, 8192]
VLLM_PATHS = {1: "TRITON (triton_kernels matmul_ogs)", 8: "TRITON (triton_kernels matmul_ogs)",
              64: "Marlin W4A16"}  # a path that changes with batch, as a selection table can


def _point(run_id, backend, model, quant, weights_gib, speed, batch, ctx, calibrated):
    pid = f"{backend}-{model}-{quant}-b{batch}-c{ctx}-n32"
    row = dict(run_id=run_id, point_id=pid, started_at="2026-12-03T10:00:00Z", backend=backend,
               backend_version="0.11.0" if backend == "vllm" else "0.1", model=model, quant=quant, batch_size=batch,
               context_len=ctx, new_tokens=32, repeats=3, seed=SEED, router_skew=0.0, gpu_name=GPU, gpu_uuid=UUID,
               gpu_count=1,
               hardware="H200 SXM", device_mem_gib=CAPACITY_GIB, weights_gib=weights_gib, group=f"{backend}-{model}-{quant}")
    if weights_gib > CAPACITY_GIB:
        return row | dict(status="skipped", error=f"does not fit: needs {weights_gib:.1f} GiB of {CAPACITY_GIB} GiB")
    step_bytes = weights_gib * 2**30 * (0.2 + 0.8 * min(1.0, batch / 16)) / 4 + batch * ctx * 1e4
    tpot = step_bytes / (4.0e12 * 0.55 * speed) * 1e3 * (1 + 0.1 * (backend == "vllm"))
    row |= dict(status="ok", error="", ttft_ms=tpot * ctx * batch / 300, tpot_ms_mean=tpot, tpot_ms_p50=tpot * 0.99,
                tpot_ms_p90=tpot * 1.05, tpot_ms_p99=tpot * 1.2, decode_tok_s=batch * 1e3 / tpot, cv=0.004,
                peak_mem_gib=weights_gib + 4, energy_j_per_tok=0.5 * tpot / batch + 0.01 * (quant == "bf16"),
                power_w_mean=500.0, sm_clock_mhz_mean=1980.0, throttled=False, decode_bytes_per_step=step_bytes,
                mbu=step_bytes / (tpot / 1e3) / 4.22e12, bound="memory", agreement=1.0, agreement_positions=16,
                agreement_forced=True, engine_path=VLLM_PATHS[batch] if (backend, quant) == ("vllm", "mxfp4") else None)
    if calibrated:
        row["mbu_datasheet"] = step_bytes / (tpot / 1e3) / 4.8e12
    return row


# kernels.parquet rows of the recorded run's profiled points (launch_gap: the GPU idle)
PROFILED = [("vllm-gpt-oss-20b-mxfp4-b8-c128-n32", "prefill", "_matmul_ogs_NNT_bf16xbf16xmxfp4", "moe_gemm", 24, 80.0),
            ("vllm-gpt-oss-20b-mxfp4-b8-c128-n32", "prefill", "launch_gap", "launch_gap", 300, 2221.0),
            ("vllm-gpt-oss-20b-mxfp4-b8-c128-n32", "decode", "_matmul_ogs_NNT_bf16xbf16xmxfp4", "moe_gemm", 768, 96.0),
            ("vllm-gpt-oss-20b-mxfp4-b8-c128-n32", "decode", "launch_gap", "launch_gap", 400, 16.0),
            ("triton_mxfp4-gpt-oss-20b-mxfp4-b1-c128-n32", "decode", "_gemv_kernel", "moe_gemm", 48, 60.0),
            ("triton_mxfp4-gpt-oss-20b-mxfp4-b1-c128-n32", "decode", "launch_gap", "launch_gap", 282, 60.0)]


def record_run(root, run_id="20261203T100000Z", calibrated=True, faults=True, measured=True):
    """A run folder as the sweep leaves it. `faults` adds a failed, a timed-out, a throttled, a
    noisy, a disagreeing and an unsettled point; `measured=False` nulls what a CPU run cannot measure."""
    rows = [_point(run_id, *engine, b, c, calibrated) for engine in ENGINES for b in BATCHES for c in CONTEXTS]
    by_id = {r["point_id"]: r for r in rows}
    if faults:
        by_id["triton_mxfp4-gpt-oss-20b-mxfp4-b64-c8192-n32"] |= dict(
            status="error", error="RuntimeError: triton compilation failed (logs/triton_mxfp4-gpt-oss-20b-mxfp4.log)",
            **dict.fromkeys(["ttft_ms", "tpot_ms_mean", "tpot_ms_p50", "decode_tok_s", "mbu", "cv", "agreement"]))
        by_id["vllm-gpt-oss-120b-mxfp4-b64-c128-n32"] |= dict(status="timeout", error="point exceeded timeout_s=600")
        by_id["vllm-gpt-oss-20b-mxfp4-b8-c8192-n32"] |= dict(throttled=True, throttle_reasons="sw_thermal,hw_slowdown",
                                                             sm_clock_mhz_mean=1410.0)
        by_id["triton_mxfp4-gpt-oss-120b-mxfp4-b1-c128-n32"] |= dict(cv=0.12)
        by_id["triton_mxfp4-gpt-oss-120b-mxfp4-b8-c128-n32"] |= dict(cv=NOISY_CV)  # at the threshold: not noisy
        by_id["vllm-gpt-oss-20b-mxfp4-b64-c128-n32"] |= dict(ttft_cv=0.21)  # steady steps, an uneven prefill
        by_id["triton_mxfp4-gpt-oss-20b-mxfp4-b8-c128-n32"] |= dict(agreement=0.9375)
        by_id["vllm-gpt-oss-20b-mxfp4-b8-c128-n32"] |= dict(warmup_calls=10, warmup_settled=False)
        by_id["vllm-gpt-oss-20b-mxfp4-b1-c128-n32"] |= dict(warmup_calls=4, warmup_settled=True, jit_compiles=0)
        by_id["vllm-gpt-oss-20b-mxfp4-b64-c8192-n32"] |= dict(jit_compiles=2)  # streamed: new step sizes
        by_id["vllm-gpt-oss-120b-mxfp4-b8-c8192-n32"] |= dict(agreement=0.5, agreement_forced=False)
        for pid in ("vllm-gpt-oss-120b-bf16-b1-c128-n32", "vllm-gpt-oss-20b-bf16-b64-c8192-n32"):
            by_id[pid] |= dict(gpu_uuid=OTHER_UUID)  # resumed on another machine
    if not measured:
        rows = [r | dict.fromkeys(["mbu", "mbu_datasheet", "energy_j_per_tok", "cv", "agreement", "engine_path",
                                   "throttled", "decode_bytes_per_step", "peak_mem_gib", "weights_gib"]) for r in rows]
    path = root / run_id
    path.mkdir(parents=True)
    # a run from before calibration has no mbu_datasheet column at all
    columns = {c: t for c, t in POINT_COLUMNS.items() if calibrated or not c.endswith("_datasheet")}
    write_atomic(to_table(pd.DataFrame(rows), columns), path / "points.parquet")
    if faults:  # two profiled points: a prefill the host held up, and phases the kernels filled
        pd.DataFrame(PROFILED, columns=["point_id", "phase", "kernel", "category", "calls", "total_ms"]).to_parquet(
            path / "kernels.parquet")
    groups = {r["group"]: dict(device="cuda:0", gpu_name=GPU, compute_capability="9.0", cpu_model="Intel Xeon")
              for r in rows}
    (path / "env.json").write_text(json.dumps(dict(gpu_name=GPU, gpu_count=1, gpus=[dict(name=GPU, memory_gib=CAPACITY_GIB)],
                                                   cpu_model="Intel Xeon", groups=groups)))
    model = {"gpt-oss-20b": dict(name="gpt-oss-20b", path=None, synthetic="disk"),
             "gpt-oss-120b": dict(name="gpt-oss-120b", path=CHECKPOINT, synthetic="disk")}
    config = dict(model=model["gpt-oss-20b"], workload=dict(seed=SEED, batch_size=1), run_id=run_id,
                  sweep=dict(overrides=["model=gpt-oss-20b,gpt-oss-120b"], points=[
                      dict(point_id=r["point_id"], group=r["group"], overrides=[],
                           config=dict(model=model[r["model"]], workload=dict(seed=SEED, batch_size=r["batch_size"])))
                      for r in rows]))
    (path / "config.yaml").write_text(yaml.safe_dump(config))
    return path


@pytest.fixture
def run(tmp_path):
    return record_run(tmp_path)


def _table(*paths) -> pd.DataFrame:
    """points.parquet of the runs as written, indexed by (run_id, point_id)."""
    return pd.concat([pd.read_parquet(p / "points.parquet") for p in paths]).set_index(["run_id", "point_id"])


def _close(shown: str, value: float) -> bool:
    """`shown` is `value` rounded to the digits it shows (a percent shows value x 100)."""
    digits = shown.rstrip("%×").replace(",", "")
    scale = 100 if shown.endswith("%") else 1
    decimals = len(digits.split(".")[1]) if "." in digits else 0
    return abs(float(digits) - value * scale) <= 0.5 * 10 ** -decimals + 1e-9


def _points_of(found, kind, name) -> set[str]:
    return {(f.numbers.get(name) or f.quotes.get(name)).cell.point_id for f in found if f.kind == kind}


def test_every_stated_number_is_a_cell_of_points_parquet(run):
    table = _table(run)
    found = findings(load_runs([run]))
    assert {f.kind for f in found} == set(KINDS)
    for f in found:
        for name, n in f.numbers.items():
            assert n.shown in f.text, (name, f.text)
            assert _close(n.shown, n.value), (name, n, f.text)
            if n.cell:
                assert table.loc[(n.cell.run_id, n.cell.point_id), n.cell.column] == n.value, (name, f.text)
        for name, q in f.quotes.items():
            assert q.value in f.text, (name, f.text)
            if q.cell:
                assert str(table.loc[(q.cell.run_id, q.cell.point_id), q.cell.column]) == q.value
        assert not re.search(r"\b(nan|None)\b", f.text), f.text


def test_derived_numbers_follow_from_their_cells(run):
    table = _table(run)
    found = findings(load_runs([run]))
    derived = {"fastest": {"speedup": ("next_tpot_ms_p50", "tpot_ms_p50")},
               "quant": {"speed": ("bf16_tpot_ms_p50", "tpot_ms_p50"), "memory": ("weights_gib", "bf16_weights_gib"),
                         "energy": ("energy_j_per_tok", "bf16_energy_j_per_tok")}}
    checked = 0
    for f in found:
        for name, (top, bottom) in derived.get(f.kind, {}).items():
            if name in f.numbers:
                assert f.numbers[name].value == pytest.approx(f.numbers[top].value / f.numbers[bottom].value)
                checked += 1
        if f.kind == "mbu" and "tb_s" in f.numbers:
            n = f.numbers
            step_bytes = table.loc[(n["tpot_ms_mean"].cell.run_id, n["tpot_ms_mean"].cell.point_id), "decode_bytes_per_step"]
            assert n["gb"].value == pytest.approx(step_bytes / 1e9)
            assert n["tb_s"].value == pytest.approx(n["gb"].value / n["tpot_ms_mean"].value)
        if f.kind == "setup":
            counts = table["status"].value_counts()
            assert f.numbers["points"].value == len(table)
            assert {k.removeprefix("status_"): n.value for k, n in f.numbers.items() if k.startswith("status_")} \
                == counts.to_dict()
    assert checked


def test_setup_names_models_weights_and_device(run):
    [setup] = [f for f in findings(load_runs([run])) if f.kind == "setup"]
    assert f"gpt-oss-20b on synthetic weights (seed {SEED})" in setup.text
    assert f"gpt-oss-120b on the checkpoint {CHECKPOINT}" in setup.text
    assert f"on device cuda: 1 × {GPU} (compute capability 9.0)" in setup.text


def test_fastest_engine_per_shape(run):
    table = _table(run).reset_index()
    ok = table[(table["status"] == "ok") & table["tpot_ms_p50"].notna()]
    shapes = ok.groupby(["model", "batch_size", "context_len"])
    expected = {g.loc[g["tpot_ms_p50"].idxmin(), "point_id"] for _, g in shapes if len(g) > 1}
    found = findings(load_runs([run]))
    assert _points_of(found, "fastest", "tpot_ms_p50") == expected
    for f in (f for f in found if f.kind == "fastest"):  # the next is the second fastest of its shape
        best = table.set_index("point_id").loc[f.numbers["tpot_ms_p50"].cell.point_id]
        shape = ok[(ok["model"] == best["model"]) & (ok["batch_size"] == best["batch_size"])
                   & (ok["context_len"] == best["context_len"])]
        assert f.numbers["next_tpot_ms_p50"].value == sorted(shape["tpot_ms_p50"])[1]
        assert f.numbers["engines"].value == len(shape)


def test_mxfp4_against_bf16_for_each_engine_and_shape_with_both(run):
    table = _table(run).reset_index()
    ok = table[table["status"] == "ok"]
    pairs = {(m["point_id"], b["point_id"]) for _, g in ok.groupby(["backend", "model", "batch_size", "context_len"])
             for _, m in g[g["quant"] == "mxfp4"].iterrows() for _, b in g[g["quant"] == "bf16"].iterrows()}
    found = [f for f in findings(load_runs([run])) if f.kind == "quant"]
    assert {(f.numbers["tpot_ms_p50"].cell.point_id, f.numbers["bf16_tpot_ms_p50"].cell.point_id) for f in found} == pairs
    assert pairs and all({"speed", "memory", "energy"} <= set(f.numbers) for f in found)


def test_mbu_against_the_measured_ceiling_and_the_datasheet(tmp_path):
    calibrated = findings(load_runs([record_run(tmp_path / "a")]))
    old = findings(load_runs([record_run(tmp_path / "b", calibrated=False)]))
    for found in (calibrated, old):
        batch1 = [f for f in found if f.kind == "mbu"]
        assert batch1 and all(f.numbers["batch_size"].value == 1 for f in batch1)
    assert all("of the measured copy bandwidth and" in f.text and "of the datasheet bandwidth" in f.text
               for f in calibrated if f.kind == "mbu")
    # a run from before calibration: its mbu column is against the datasheet, and says so
    assert all("measured" not in f.text and "of the datasheet bandwidth (MBU)" in f.text for f in old if f.kind == "mbu")


def test_paths_failures_throttling_disagreement_and_noise(run):
    table = _table(run).reset_index()
    ok = table[table["status"] == "ok"]
    found = findings(load_runs([run]))
    assert _points_of(found, "failed", "status") == set(table.loc[table["status"] != "ok", "point_id"])
    assert _points_of(found, "throttled", "throttle_reasons") == set(ok.loc[ok["throttled"] == True, "point_id"])  # noqa: E712
    assert _points_of(found, "disagrees", "agreement") == set(ok.loc[ok["agreement"] < 1, "point_id"])
    for spread in ("cv", "ttft_cv"):  # a point noisy in its steps, another in its prefills
        said = {f.numbers[spread].cell.point_id for f in found if f.kind == "noisy" and spread in f.numbers}
        assert said == set(ok.loc[ok[spread] > NOISY_CV, "point_id"]) != set()
    assert _points_of(found, "unsettled", "warmup_calls") == set(ok.loc[ok["warmup_settled"] == False, "point_id"])  # noqa: E712
    assert _points_of(found, "compiled", "jit_compiles") == {"vllm-gpt-oss-20b-mxfp4-b64-c8192-n32"}
    failed = [f.level for f in found if f.kind == "failed"]
    assert failed == sorted(failed, key=["warning", "note"].index)  # errors before points that did not fit
    levels = {f.quotes["status"].value: f.level for f in found if f.kind == "failed"}
    assert levels == {"error": "warning", "timeout": "warning", "skipped": "note"}
    assert {f.level for f in found if f.kind == "disagrees"} == {"note", "warning"}  # 93.8% and 50%
    paths = [f for f in found if f.kind == "path"]
    recorded = table[(table["quant"] == "mxfp4")].dropna(subset=["engine_path"])
    assert {(f.quotes["engine_path"].value, f.numbers["points"].value) for f in paths} == \
        {(p, n) for (_, p), n in recorded.groupby(["model", "engine_path"]).size().items()}


def test_points_of_several_gpus_are_counted_by_uuid(run, tmp_path):
    [gpus] = [f for f in findings(load_runs([run])) if f.kind == "gpus"]
    assert gpus.level == "note"
    assert "measured on 2 GPUs" in gpus.text
    assert f"{UUID}: 34 points (triton_mxfp4 mxfp4, vllm mxfp4, vllm bf16)" in gpus.text
    assert f"{OTHER_UUID}: 2 points (vllm bf16)" in gpus.text
    assert {q.value for q in gpus.quotes.values()} == {UUID, OTHER_UUID}
    one_gpu = record_run(tmp_path / "one", faults=False)
    assert not [f for f in findings(load_runs([one_gpu])) if f.kind == "gpus"]


def test_host_bound_phases_are_those_mostly_idle(run):
    found = [f for f in findings(load_runs([run])) if f.kind == "host"]
    kernels = pd.DataFrame(PROFILED, columns=["point_id", "phase", "kernel", "category", "calls", "total_ms"])
    phases = kernels.groupby(["point_id", "phase"]).apply(
        lambda g: g.loc[g.kernel == "launch_gap", "total_ms"].sum() / g.total_ms.sum(), include_groups=False)
    assert [f.quotes["phase"].value for f in found] == ["prefill"]  # 96.5% idle; 50.0% is not above
    assert set(phases[phases > HOST_BOUND].index) == {("vllm-gpt-oss-20b-mxfp4-b8-c128-n32", "prefill")}
    assert "vllm mxfp4's profiled prefill left the GPU idle 96.5% of its 2,301 ms (2,221 ms idle)" in found[0].text


def test_no_sentence_for_absent_data(tmp_path):
    found = findings(load_runs([record_run(tmp_path, faults=False, measured=False)]))
    kinds = {f.kind for f in found}
    assert kinds & {"gpus", "mbu", "path", "throttled", "disagrees", "noisy", "unsettled", "compiled", "host"} == set()
    quant = [f for f in found if f.kind == "quant"]
    assert quant and all(set(f.numbers) & {"memory", "energy"} == set() for f in quant)
    assert all("energy" not in f.text and "weights" not in f.text for f in quant)


def test_several_runs_name_their_run(tmp_path):
    a, b = record_run(tmp_path, "20261203T100000Z"), record_run(tmp_path, "20261204T100000Z", faults=False)
    runs = load_runs([a, b])
    found = findings(runs)
    labels = [i.label for i in runs.infos]
    assert all(any(f.text.startswith(label) for label in labels) for f in found)
    noisy = [f for f in found if f.kind == "noisy"]  # only the first run has a noisy point
    assert noisy and all(f.text.startswith(labels[0]) for f in noisy)
    table = _table(a, b)
    for f in found:
        for n in f.numbers.values():
            if n.cell:
                assert table.loc[(n.cell.run_id, n.cell.point_id), n.cell.column] == n.value


def test_findings_open_the_page(run, tmp_path):
    html = write_report([run], tmp_path / "r.html").read_text()
    assert re.findall(r'<section id="([\w-]+)"', html)[0] == "findings"
    assert "What this run found" in html
    body = re.sub(r"\s+", " ", html)
    for f in findings(load_runs([run])):
        assert str(escape(f.text)) in body


def test_two_models_are_separate_series(run):
    runs = load_runs([run])
    points = runs.points
    assert points.groupby("series", observed=True)["model"].nunique().max() == 1
    assert points["series"].nunique() == points[["model", "backend", "quant"]].drop_duplicates().shape[0]
    fig = figures.decode_throughput(points)
    assert fig.layout.legend.title.text == "model · backend · quant"
    for trace in fig.data:
        if trace.name:
            assert sum(model in trace.name for model in ("gpt-oss-20b", "gpt-oss-120b")) == 1, trace.name


def test_one_model_keeps_short_series_names(tmp_path):
    run = record_run(tmp_path)
    df = pd.read_parquet(run / "points.parquet")
    write_atomic(to_table(df[df["model"] == "gpt-oss-20b"], POINT_COLUMNS), run / "points.parquet")
    runs = load_runs([run])
    assert set(runs.points["series"]) == {"triton_mxfp4 mxfp4", "vllm mxfp4", "vllm bf16"}
