"""Procurement comparisons from recorded run folders of two hardware labels (one of them two runs,
pooled): the front's interpolation (monotone, never beyond the front), cost and energy arithmetic,
projection labelling and ranking, memory fit, price-file errors by key, the CLI end to end, and the
page in headless Chromium with every section drawn."""

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from harness.analysis.hardware import KNOWN_GPUS, gpu_peak
from harness.analysis.prices import PriceFileError, load_prices, parse_prices
from harness.analysis.procurement import (MEASURED, at_target, compare, gpus_needed, load_points, pool, rows_frame,
                                          usd_per_mtok)
from harness.model.spec import get_spec
from harness.report.cli import default_name, main
from harness.analysis.pareto import pareto_front
from harness.report.procurement_page import SECTIONS, write_procurement_page
from procurement_runs import BATCHES, NEW_TOKENS, make_run
from selenium.webdriver.common.by import By
from test_report_browser import CHROMEDRIVER, CHROMIUM, browser, open_report, screenshot  # noqa: F401 (fixture)

REPO = Path(__file__).resolve().parents[1]
PRICES = REPO / "harness" / "conf" / "prices.example.yaml"
REQUIRED = ["hardware", "gpu_name", "model", "backend", "quant", "target_tok_s_per_user", "tok_s_per_gpu", "ttft_ms",
            "tok_per_joule", "usd_per_mtok", "basis"]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    root = tmp_path_factory.mktemp("results")
    make_run(root, "20260101T000000Z", "h100-lab", "NVIDIA H100 80GB HBM3")
    make_run(root, "20260102T000000Z", "h200-lab", "NVIDIA H200")
    make_run(root, "20260103T000000Z", "h200-lab", "NVIDIA H200", speed=0.97)
    return root


@pytest.fixture(scope="module")
def comparison(results):
    return compare([results / "2026*"], (50.0, 100.0, 200.0, 1e5), load_prices(PRICES), load_tok_s=250_000)


def _rows(comparison, **match):
    df = rows_frame(comparison.rows)
    for k, v in match.items():
        df = df[df[k] == v]
    return df


def test_runs_of_one_label_are_pooled(results):
    points, machines = load_points([results / "2026*"])
    assert [(m.hardware, m.peak.name, len(m.run_ids)) for m in machines] == [("h100-lab", "H100 SXM", 1),
                                                                          ("h200-lab", "H200 SXM", 2)]
    pooled = pool(points)
    h200 = pooled[(pooled["hardware"] == "h200-lab") & (pooled["model"] == "gpt-oss-20b") & (pooled["context_len"] == 1024)]
    assert list(h200["batch_size"]) == BATCHES  # one row per batch, not one per run
    raw = points[(points["hardware"] == "h200-lab") & (points["model"] == "gpt-oss-20b") & (points["context_len"] == 1024)
                 & (points["batch_size"] == 8)]
    row = h200[h200["batch_size"] == 8].iloc[0]
    assert row["decode_tok_s"] == pytest.approx(raw["decode_tok_s"].mean())
    assert row["cv"] == pytest.approx(raw["decode_tok_s"].std() / raw["decode_tok_s"].mean())  # runs' spread > repeats'


def test_interpolation_is_monotone_and_never_beyond_the_front(results):
    pooled = pool(load_points([results / "2026*"])[0])
    group = pooled[(pooled["hardware"] == "h100-lab") & (pooled["model"] == "gpt-oss-120b") & (pooled["context_len"] == 8192)]
    front = pareto_front(group, "per_user", "per_gpu")
    lo, hi = front["per_user"].min(), front["per_user"].max()
    grid = np.geomspace(lo / 2, hi, 200)
    values = [at_target(front, t)["tok_s_per_gpu"] for t in grid]
    assert all(v is not None for v in values)
    assert all(a >= b for a, b in zip(values, values[1:]))  # more interactivity never buys throughput
    assert min(values) >= front["per_gpu"].min() - 1e-9 and max(values) <= front["per_gpu"].max() + 1e-9
    for x, y in zip(front["per_user"], front["per_gpu"]):  # through every measured point
        assert at_target(front, x)["tok_s_per_gpu"] == pytest.approx(y, rel=1e-9)
    assert at_target(front, hi * 1.0001)["tok_s_per_gpu"] is None  # beyond the most interactive point
    below = at_target(front, lo / 3)  # less interactive than the largest batch: that batch meets it
    assert below["tok_s_per_gpu"] == pytest.approx(front["per_gpu"].iloc[0])
    assert below["batch_size"] == pytest.approx(front["batch_size"].iloc[0])


def test_not_reached_rows_are_empty(comparison):
    far = _rows(comparison, target_tok_s_per_user=1e5)
    assert len(far) and far["tok_s_per_gpu"].isna().all() and far["usd_per_mtok"].isna().all()
    assert (far["verdict"] == "not reached").all()


def test_cost_and_energy_arithmetic(comparison):
    price = load_prices(PRICES).for_gpu("NVIDIA H200")
    row = _rows(comparison, hardware="h200-lab", model="gpt-oss-120b", context_len=1024,
                target_tok_s_per_user=100.0).iloc[0]
    tok_s = row["tok_s_per_gpu"]
    assert row["usd_per_mtok"] == pytest.approx(price.usd_per_gpu_hour_low * 1e6 / (tok_s * 3600))
    assert row["usd_per_mtok_high"] == pytest.approx(price.usd_per_gpu_hour_high * 1e6 / (tok_s * 3600))
    assert row["tok_per_joule"] * row["energy_j_per_tok"] == pytest.approx(1)
    assert row["tok_per_kwh"] == pytest.approx(3.6e6 / row["energy_j_per_tok"])
    assert row["tok_s_per_kw_all_in"] == pytest.approx(tok_s / price.all_in_kw_per_gpu)
    assert row["gpus_needed"] == math.ceil(250_000 / tok_s)
    assert usd_per_mtok(3.6, 1000.0) == pytest.approx(1.0)  # $3.60 an hour at 1000 tok/s: 3.6 M tokens an hour
    assert gpus_needed(1000, 500) == 2 and gpus_needed(1001, 500) == 3
    # energy and power are interpolated between the front's measured points, not invented
    pooled = comparison.points
    h200 = pooled[(pooled["hardware"] == "h200-lab") & (pooled["model"] == "gpt-oss-120b") & (pooled["context_len"] == 1024)]
    assert h200["energy_j_per_tok"].min() <= row["energy_j_per_tok"] <= h200["energy_j_per_tok"].max()


def test_projection_labelling(results, comparison):
    df = rows_frame(comparison.rows)
    projected = df[df["basis"] != MEASURED]
    assert {"H100 SXM (projected)", "H200 SXM (projected)"}.isdisjoint(projected["hardware"])  # measured ones
    b200 = projected[projected["hardware"] == "B200 (projected)"]
    assert set(b200["basis"]) == {"projected from h200-lab"}  # same architecture family, nearest bandwidth
    assert set(projected[projected["hardware"] == "A100 SXM 80GB (projected)"]["basis"]) == {"projected from h100-lab"}
    assert b200["assumptions"].str.contains("assumed the BF16 rate").all()
    assert b200["energy_j_per_tok"].isna().all()  # nothing measured, nothing claimed
    assert not projected[projected["hardware"] == "H200 NVL (projected)"]["assumptions"].str.contains("FP4").any()
    fp4 = compare([results / "2026*"], (100.0,), assume_fp4=True)
    fp4_b200 = rows_frame(fp4.rows).query("hardware == 'B200 (projected)'")
    assert fp4_b200["assumptions"].str.contains("assumed the FP4 rate").all()
    # a projection ranks after every measured row of its (model, context, target)
    for _, g in df.groupby(["model", "context_len", "target_tok_s_per_user"]):
        assert g[g["basis"] == MEASURED]["rank"].max() < g[g["basis"] != MEASURED]["rank"].min()
    # projected decode is the bandwidth ratio at batch 1 (memory-bound everywhere at batch 1)
    pts = comparison.points
    one = pts[(pts["model"] == "gpt-oss-20b") & (pts["context_len"] == 1024) & (pts["batch_size"] == 1)]
    ref = one[one["hardware"] == "h200-lab"].iloc[0]
    proj = one[one["hardware"] == "B200 (projected)"].iloc[0]
    assert proj["tpot_ms_mean"] == pytest.approx(ref["tpot_ms_mean"] * 4.8 / 8.0)
    # a projected batch must fit: 120b at 8192 on a 48 GiB L40S is not projected at all
    assert one[one["hardware"] == "L40S (projected)"].shape[0] == 1
    assert pts[(pts["hardware"] == "L40S (projected)") & (pts["model"] == "gpt-oss-120b")].empty


def test_ranking_margin_and_noise(results, tmp_path):
    twin = tmp_path / "twin"
    twin.mkdir()
    make_run(twin, "20260104T000000Z", "h200-twin", "NVIDIA H200", models=("gpt-oss-20b",), speed=0.98, cv=0.02)
    proc = compare([results / "2026*", twin / "2026*"], (100.0,))
    m = rows_frame(proc.rows).query("basis == 'measured' and model == 'gpt-oss-20b' and context_len == 1024")
    assert list(m["hardware"]) == ["h200-lab", "h200-twin", "h100-lab"]
    lead, twin_row = m.iloc[0], m.iloc[1]
    assert lead["margin_to_next"] == pytest.approx(lead["tok_s_per_gpu"] / twin_row["tok_s_per_gpu"] - 1)
    assert bool(lead["within_noise"]) and "within noise" in lead["verdict"]
    assert not bool(twin_row["within_noise"])  # the H100 is far behind
    assert pd.isna(m.iloc[2]["margin_to_next"])  # nothing measured below it


def test_memory_fit_says_its_basis(comparison):
    fits = comparison.memory
    h100 = [f for f in fits if f.hardware == "h100-lab" and f.model == "gpt-oss-120b" and f.context_len == 8192][0]
    assert h100.basis == "measured peak memory" and h100.max_batch < max(BATCHES) and "did not fit" in h100.note
    spec, b200 = get_spec("gpt-oss-120b"), gpu_peak("B200")
    est = [f for f in fits if f.hardware is None and f.gpu == "B200" and f.model == "gpt-oss-120b"
           and f.context_len == 8192][0]
    kv = spec.kv_cache_bytes(1, 8192 + NEW_TOKENS)
    assert est.basis.startswith("spec") and est.max_batch == (b200.memory_gib * 2**30 - spec.weight_bytes()) // kv
    assert {f.gpu for f in fits if f.hardware is None} == {g.name for g in KNOWN_GPUS}


@pytest.mark.parametrize("text, key", [
    ("gpus: {B200: {usd_per_gpu_hour: 2}}", "source"),
    ("source: x\ngpus: {Z9000: {usd_per_gpu_hour: 2}}", "gpus.Z9000"),
    ("source: x\ngpus: {B200: {usd_per_gpu_hour: -2}}", "gpus.B200.usd_per_gpu_hour"),
    ("source: x\ngpus: {B200: {usd_per_gpu_hour: [3, 2]}}", "gpus.B200.usd_per_gpu_hour"),
    ("source: x\ngpus: {B200: {usd_per_gpu_hour: 2, all_in_kw_per_gpu: zero}}", "gpus.B200.all_in_kw_per_gpu"),
    ("source: x\ngpus: {B200: {usd_per_gpu_hour: 2, pue: 1.2}}", "gpus.B200.pue"),
    ("source: x\ngpus: {B200: {all_in_kw_per_gpu: 2}}", "gpus.B200.usd_per_gpu_hour"),
    ("source: x\ngpus: {B200: {usd_per_gpu_hour: 2}, NVIDIA B200: {usd_per_gpu_hour: 3}}", "gpus.NVIDIA B200"),
    ("source: x\ncurrency: EUR\ngpus: {B200: {usd_per_gpu_hour: 2}}", "'currency'"),
    ("source: x\ngpus: [B200]", "gpus"),
])
def test_price_file_errors_name_the_key(tmp_path, text, key):
    path = tmp_path / "prices.yaml"
    path.write_text(text)
    with pytest.raises(PriceFileError) as e:
        load_prices(path)
    message = str(e.value)
    assert key in message and str(path) in message and "\n" not in message


def test_example_price_file_is_valid():
    prices = load_prices(PRICES)
    assert "InferenceX" in prices.source
    assert prices.for_gpu("NVIDIA B200").usd_per_gpu_hour_low == 1.95 and prices.for_gpu("L40S") is None
    assert parse_prices({"source": "quote", "gpus": {"H100 SXM": {"usd_per_gpu_hour": 2.0}}}).by_gpu[
        "H100 SXM"].all_in_kw_per_gpu is None


def test_cli_end_to_end(results, tmp_path, capsys):
    points, _ = load_points([results / "20260101T000000Z"])
    point = points[(points["model"] == "gpt-oss-120b") & (points["context_len"] == 1024) & (points["batch_size"] == 16)].iloc[0]
    target = float(1000 / point["tpot_ms_mean"])  # exactly a measured point of the h100 front
    csv, page = tmp_path / "out" / "rows.csv", tmp_path / "page.html"
    main([str(results / "2026*"), "--procurement", "--prices", str(PRICES), "--interactivity", f"{target!r},100",
          "--csv", str(csv), "-o", str(page)])
    assert capsys.readouterr().out.split() == [str(csv), str(csv.with_suffix(".parquet")), str(page)]
    df = pd.read_csv(csv)
    assert set(REQUIRED) <= set(df.columns)
    parquet = pd.read_parquet(csv.with_suffix(".parquet"))
    assert list(parquet.columns) == list(df.columns)
    pd.testing.assert_series_equal(parquet["tok_s_per_gpu"], df["tok_s_per_gpu"])
    row = df[(df["hardware"] == "h100-lab") & (df["model"] == "gpt-oss-120b") & (df["context_len"] == 1024)
             & (df["target_tok_s_per_user"] == target)].iloc[0]
    assert row["tok_s_per_gpu"] == pytest.approx(point["decode_tok_s"], rel=1e-9)  # the page's numbers are the points'
    assert row["ttft_ms"] == pytest.approx(point["ttft_ms"], rel=1e-9)
    assert set(df["basis"]) >= {"measured", "projected from h200-lab", "projected from h100-lab"}


def test_cli_refuses_bad_input_with_one_line(results, tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("source: x\ngpus: {B200: {usd_per_gpu_hour: free}}\n")
    for argv in (["--procurement", "--prices", str(bad)], ["--csv", str(tmp_path / "x.csv")],
                 ["--procurement", "--interactivity", "fast"]):
        with pytest.raises(SystemExit) as e:
            main([str(results / "2026*"), *argv])
        assert e.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith("gptoss-report") and ("usd_per_gpu_hour" in err[-1] or "procurement" in err[-1]
                                                         or "'fast'" in err[-1])


def test_default_names_stay_short(tmp_path):
    dirs = [tmp_path / f"2026010{i}T000000Z" for i in range(1, 10)]
    assert default_name(dirs[:1]) == "20260101T000000Z"
    assert default_name(dirs[::-1]) == "20260101T000000Z..20260109T000000Z-9runs"


@pytest.mark.skipif(not (CHROMIUM.exists() and CHROMEDRIVER.exists()), reason="chromium and chromedriver are not installed")
def test_page_opens_with_every_section_drawn(browser, comparison, tmp_path):
    page = write_procurement_page(comparison, tmp_path / "procurement.html")
    assert open_report(browser, page) == []  # no console error, no alert, every figure drawn
    drawn = {s.get_attribute("id") for s in browser.find_elements(By.CSS_SELECTOR, "section")
             if s.find_elements(By.CSS_SELECTOR, ".plotly-graph-div .main-svg")}
    assert drawn == {s.id for s in SECTIONS}
    ranked = browser.find_element(By.ID, "ranked").text
    assert "gpt-oss-120b at 100 tok/s per user" in ranked and "h200-lab" in ranked and "not reached" in ranked
    projected = browser.find_element(By.ID, "projected-fronts").text
    assert "projected from h200-lab" in projected and "assumed the BF16 rate" in projected
    assert "projected" not in ranked.replace("Projected GPUs rank apart", "")  # measured and projected apart
    screenshot(browser, tmp_path / "procurement.png")
