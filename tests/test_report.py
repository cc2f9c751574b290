"""The HTML report from synthetic run folders: sections present only with their data, escaping,
several runs overlaid, runs that cannot be read left out by name, the CLI. Values come from a small
roofline model of a decode step, so the figures have the shapes real sweeps have."""

import html as htmllib
import json
import math
import re

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from harness.analysis.pareto import pareto_front
from harness.report import figures, write_report
from harness.report.cli import main
from harness.report.page import SECTIONS
from harness.report.runs import NoReadableRun, load_runs
from harness.results import POINT_COLUMNS

BACKENDS = [("torch_ref", "bf16", 0.35), ("torch_ref", "mxfp4", 0.25), ("triton_mxfp4", "mxfp4", 0.7)]
BATCHES, CONTEXTS = [1, 4, 16, 64], [128, 2048, 32768]
PEAK_BW, PEAK_FLOPS, CAPACITY_GIB = 3.35e12, 989e12, 79.6
LAYERS, EXPERTS, EXPERT_PARAMS, DENSE_BYTES = 24, 32, 24.9e6, 2.4e9
BYTES_PER_PARAM = {"bf16": 2.0, "mxfp4": 4.25 / 8}
PROFILED = {("triton_mxfp4", "mxfp4", 4, 2048), ("torch_ref", "bf16", 4, 2048)}
PHASES = [(None, 0.3), ("prefill", 0.25), ("decode", 1.5)]  # (phase, seconds) of a point's timeline
SHARES = {"prefill": {"moe_gemm": 0.45, "attention": 0.3, "norm": 0.05, "rope": 0.03, "lm_head": 0.1, "other": 0.07},
          "decode": {"moe_gemm": 0.55, "attention": 0.12, "router": 0.05, "norm": 0.04, "lm_head": 0.12,
                     "sampling": 0.03, "memcpy": 0.02, "other": 0.07}}
XSS = "<script>alert(1)</script>"


def _identity(run_id, hardware, backend, quant, batch, ctx):
    return dict(
        run_id=run_id, point_id=f"{backend}-{quant}-b{batch}-c{ctx}", started_at=f"2025-06-01T12:{batch:02d}:{ctx % 60:02d}Z",
        backend=backend, backend_version="0.1", model="gpt-oss-20b", quant=quant, batch_size=batch, context_len=ctx,
        new_tokens=64, repeats=3, gpu_name="NVIDIA H100 80GB HBM3", gpu_count=1, hardware=hardware)


def _point(run_id, hardware, backend, quant, eff, batch, ctx, speed):
    touched = EXPERTS * (1 - (1 - 4 / EXPERTS) ** batch)  # experts a decode step of the batch reads per layer
    weights_gib = (DENSE_BYTES + LAYERS * EXPERTS * EXPERT_PARAMS * BYTES_PER_PARAM[quant]) / 2**30
    kv_bytes = batch * ctx * LAYERS * 2 * 8 * 64 * 2
    step_bytes = DENSE_BYTES + LAYERS * touched * EXPERT_PARAMS * BYTES_PER_PARAM[quant] + kv_bytes
    step_flops = 2 * 3.6e9 * batch + 4 * LAYERS * 64 * 64 * ctx * batch
    step_s = max(step_bytes / PEAK_BW, step_flops / PEAK_FLOPS) / (eff * speed)
    row = _identity(run_id, hardware, backend, quant, batch, ctx) | dict(
        device_mem_gib=CAPACITY_GIB, required_gib=weights_gib + kv_bytes / 2**30, weights_gib=weights_gib,
        kv_cache_gib=kv_bytes / 2**30)
    if row["required_gib"] > CAPACITY_GIB:
        return row | dict(status="skipped", error=f"does not fit: needs {row['required_gib']:.1f} GiB")
    power = 250 + 350 * min(1.0, eff * speed * (1 + math.log2(batch) / 6))
    return row | dict(
        status="ok", error="", ttft_ms=1e3 * step_s * (1 + ctx * batch / 512), tpot_ms_mean=1e3 * step_s,
        tpot_ms_p50=0.98e3 * step_s, tpot_ms_p90=1.1e3 * step_s, tpot_ms_p99=1.3e3 * step_s,
        decode_tok_s=batch / step_s, peak_mem_gib=row["required_gib"] + 1.5, torch_peak_gib=row["required_gib"] + 0.5,
        power_w_mean=power, power_w_max=power * 1.1, energy_j_per_tok=power * step_s / batch,
        decode_bytes_per_step=step_bytes, decode_flops_per_step=step_flops,
        mbu=step_bytes / PEAK_BW / step_s, mfu=step_flops / PEAK_FLOPS / step_s,
        bound="memory" if step_bytes / PEAK_BW > step_flops / PEAK_FLOPS else "compute",
        agreement=0.875 if (backend, batch, ctx) == ("triton_mxfp4", 16, 2048) else 1.0)


def _telemetry(point_id, power_w):
    rows, t = [], 0.0
    for phase, seconds in PHASES:
        for t in np.arange(t, t + seconds, 0.05):
            load = {None: 0.2, "prefill": 1.0, "decode": 0.8}[phase]
            rows.append(dict(point_id=point_id, gpu=0, t_s=t, phase=phase, power_w=90 + load * power_w
                             + 10 * math.sin(7 * t), mem_used_gib=20.0, sm_clock_mhz=1980.0))
        t += 0.05
    return rows


def _kernels(point_id, ttft_ms, tpot_ms):
    return [dict(point_id=point_id, phase=phase, kernel=f"{category}_kernel", category=category, calls=24,
                 total_ms=share * (ttft_ms if phase == "prefill" else 8 * tpot_ms), mean_us=10.0, share=share)
            for phase, shares in SHARES.items() for category, share in shares.items()]


def make_run(root, run_id="20250601T120000Z", hardware="H100 SXM", speed=1.0, telemetry=True, kernels=True,
             measured=True):
    """A run folder as a GPU sweep leaves it: a failed point, points that did not fit, and with
    `telemetry`/`kernels` the NVML samples of every point and the profiler table of PROFILED. `measured=False`
    leaves the power, roofline and agreement columns null, as a CPU run does."""
    path = root / run_id
    path.mkdir(parents=True)
    rows = [_point(run_id, hardware, b, q, eff, batch, ctx, speed)
            for b, q, eff in BACKENDS for batch in BATCHES for ctx in CONTEXTS]
    rows.append(_identity(run_id, hardware, "triton_mxfp4", "mxfp4", 2, 128) | dict(
        status="error", error="RuntimeError: triton compilation failed for moe_mxfp4"))
    if not measured:
        null = ["power_w_mean", "power_w_max", "energy_j_per_tok", "decode_bytes_per_step", "decode_flops_per_step",
                "mbu", "mfu", "bound", "agreement", "peak_mem_gib", "device_mem_gib"]
        rows = [r | dict.fromkeys(null) for r in rows]
    pq.write_table(pa.Table.from_pylist(rows, schema=pa.schema(POINT_COLUMNS)), path / "points.parquet")
    profiled = [r for r in rows if (r["backend"], r["quant"], r["batch_size"], r["context_len"]) in PROFILED]
    if telemetry:  # NVML samples every point that ran
        pd.DataFrame([s for r in rows if r["status"] == "ok" for s in _telemetry(r["point_id"], r["power_w_mean"])]) \
            .to_parquet(path / "telemetry.parquet")
    if kernels:
        pd.DataFrame([k for r in profiled for k in _kernels(r["point_id"], r["ttft_ms"], r["tpot_ms_mean"])]) \
            .to_parquet(path / "kernels.parquet")
    gpu = dict(name="NVIDIA H100 80GB HBM3", memory_gib=CAPACITY_GIB)
    env = dict(gpu_name=gpu["name"], gpu_count=1, gpus=[gpu], driver_version="570.86.15", cuda_driver_version="12.8",
               host="gpu-node-7", cpu_model="AMD EPYC 9454",
               packages=dict(torch="2.11.0", triton="3.6.0"), git_commit="abc1234def5678", git_dirty=True,
               command=["gptoss-bench", "-m", "workload.batch_size=1,4,16,64",
                        "arms=['backend=triton_mxfp4','backend=vllm backend.moe_path=marlin']"],
               groups={"triton_mxfp4/gpt-oss-20b/mxfp4": dict(torch="2.11.0+cu128", torch_cuda="12.8", triton="3.6.0")})
    (path / "env.json").write_text(json.dumps(env))
    (path / "config.yaml").write_text("model:\n  name: gpt-oss-20b\nworkload:\n  new_tokens: 64\n")
    return path


ALL_SECTIONS = {s.id for s in SECTIONS}
MEASURED_ONLY = {"power", "energy", "roofline", "kernels", "agreement"}


def _section_ids(html):
    return set(re.findall(r'<section id="([\w-]+)"', html)) - {"findings", "run", "points"}


def test_every_section_with_rich_data(tmp_path):
    out = write_report([make_run(tmp_path)], tmp_path / "r.html")
    html = out.read_text()
    assert _section_ids(html) == ALL_SECTIONS
    assert html.count("Plotly.newPlot(") == len(ALL_SECTIONS)
    assert html.count("plotly.js v") == 1  # the library is inlined once, not per figure
    assert re.search(r'<li class="warning" data-kind="disagrees">gpt-oss-20b, batch 16, context 2,048: '
                     r'triton_mxfp4 mxfp4 agrees with the reference on 87.5% of greedy tokens', html)
    table = html[html.index('<section id="points">'):html.index("</section>", html.index('<section id="points">'))]
    first_row = table[table.index("<tbody>"):].split("</tr>")[0]
    assert "status-error" in first_row and "triton compilation failed" in first_row  # failures first
    for fact in ("570.86.15", "abc1234def56 (dirty tree)", "2.11.0+cu128", "driver 12.8, torch build 12.8",
                 "NVIDIA H100 80GB HBM3 × 1"):
        assert fact in html
    # the command as a shell takes it back, Hydra's quoted list in double quotes
    assert ("gptoss-bench -m workload.batch_size=1,4,16,64 \"arms=['backend=triton_mxfp4','backend=vllm "
            "backend.moe_path=marlin']\"") in htmllib.unescape(html)


def test_sections_absent_without_their_data(tmp_path):
    html = write_report([make_run(tmp_path, telemetry=False, kernels=False, measured=False)],
                        tmp_path / "r.html").read_text()
    assert _section_ids(html) == ALL_SECTIONS - MEASURED_ONLY
    assert 'data-kind="disagrees"' not in html
    for absent in MEASURED_ONLY:
        assert f'href="#{absent}"' not in html


def test_hardware_label_is_escaped(tmp_path):
    html = write_report([make_run(tmp_path, hardware=XSS)], tmp_path / "r.html").read_text()
    assert XSS not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html


def test_two_runs_overlay(tmp_path):
    a = make_run(tmp_path, "20250601T120000Z", "H100 SXM")
    b = make_run(tmp_path, "20250602T120000Z", "H200 SXM", speed=1.4)
    runs = load_runs([a, b])
    fig = figures.decode_throughput(runs.points)
    names = {t.name for t in fig.data if t.showlegend}
    assert {n.split(" · ")[0] for n in names} == {"H100 SXM", "H200 SXM"}
    assert len(names) == 2 * len(BACKENDS)
    html = write_report([a, b], tmp_path / "both.html").read_text()
    assert "20250601T120000Z" in html and "20250602T120000Z" in html
    assert _section_ids(html) == ALL_SECTIONS


def test_same_hardware_runs_labelled_by_run_id(tmp_path):
    runs = load_runs([make_run(tmp_path, "20250601T120000Z"), make_run(tmp_path, "20250602T120000Z")])
    assert [i.label for i in runs.infos] == ["H100 SXM · 20250601T120000Z", "H100 SXM · 20250602T120000Z"]


def test_power_timeline_of_profiled_points(tmp_path):
    runs = load_runs([make_run(tmp_path / "a")])
    lines = [t for t in figures.power_timeline(runs.telemetry, runs.kernels, runs.points).data if t.mode == "lines"]
    assert len(lines) == len(PROFILED)
    runs = load_runs([make_run(tmp_path / "b", kernels=False)])
    lines = [t for t in figures.power_timeline(runs.telemetry, runs.kernels, runs.points).data if t.mode == "lines"]
    assert len(lines) == (runs.points["status"] == "ok").sum()


def test_pareto_front():
    df = pd.DataFrame({"x": [1, 2, 3, 4, 2.5], "y": [10, 9, 5, 1, 4]})
    assert pareto_front(df, "x", "y").index.tolist() == [0, 1, 2, 3]
    df.loc[len(df)] = {"x": 3.5, "y": 6}
    assert pareto_front(df, "x", "y")["x"].tolist() == [1, 2, 3.5, 4]


def test_cli_writes_and_prints(tmp_path, capsys, monkeypatch):
    run = make_run(tmp_path / "results")
    out = tmp_path / "out" / "report.html"
    main([str(run), "-o", str(out)])
    assert capsys.readouterr().out.strip() == str(out)
    assert out.read_text().startswith("<!doctype html>")
    monkeypatch.chdir(tmp_path)
    main([str(run)])
    assert capsys.readouterr().out.strip() == f"reports/{run.name}.html"
    assert (tmp_path / "reports" / f"{run.name}.html").is_file()


def test_cli_names_a_folder_that_is_not_a_run(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([str(tmp_path / "nothing")])
    assert exit_.value.code == 2
    assert "nothing: no run folder" in capsys.readouterr().err


def test_unreadable_run_is_left_out_by_name(tmp_path, caplog):
    good = make_run(tmp_path, "20250601T120000Z")
    bad = make_run(tmp_path, "20250602T120000Z", "H200 SXM")
    data = (bad / "points.parquet").read_bytes()
    (bad / "points.parquet").write_bytes(data[:len(data) // 2])  # a copy cut short
    runs = load_runs([good, bad])
    assert [i.path for i in runs.infos] == [good]
    [skipped] = runs.skipped
    assert skipped.path == bad / "points.parquet" and "magic bytes" in skipped.reason
    assert f"{bad / 'points.parquet'}" in caplog.text
    html = write_report([good, bad], tmp_path / "r.html").read_text()
    header = html[html.index('id="skipped-runs"'):html.index('<section id="findings">')]
    assert str(bad / "points.parquet") in header and "magic bytes" in header


def test_no_readable_run_is_one_error_naming_each_file(tmp_path):
    runs = [make_run(tmp_path, "20250601T120000Z"), make_run(tmp_path, "20250602T120000Z")]
    (runs[0] / "points.parquet").write_bytes(b"not parquet")
    (runs[1] / "points.parquet").write_bytes(b"")
    with pytest.raises(NoReadableRun) as error:
        write_report(runs, tmp_path / "r.html")
    assert all(str(r / "points.parquet") in str(error.value) for r in runs)
    assert "\n" not in str(error.value)
    assert not (tmp_path / "r.html").exists()


def test_a_run_named_twice_is_reported_once(tmp_path, monkeypatch):
    run = make_run(tmp_path / "results")
    monkeypatch.chdir(tmp_path)
    runs = load_runs([run, "results/*", f"results/{run.name}/points.parquet"])
    assert len(runs.infos) == 1
    assert runs.points["point_id"].is_unique
