"""Regression verdicts (harness/analysis/regression.py, gptoss-compare) from run folders recorded
here: decode steps drawn per repeat with a repeat-to-repeat and a step-to-step spread, so a
planted slowdown, an A/A resampling and a noisy point look as they do in a real sweep."""

import importlib.util
import json
from pathlib import Path

import junitparser
import numpy as np
import pandas as pd
import pytest

from harness.analysis import regression, thresholds
from harness.compare_cli import main
from harness.results import POINT_COLUMNS, SAMPLE_COLUMNS, to_table, write_atomic, write_env

POINTS = [(b, c) for b in (1, 4) for c in (32, 128, 512)]
REPEATS, STEPS = 5, 40
SLOW = (4, 128)  # the point a test slows down


def pid(point) -> str:
    return f"torch_ref-bf16-b{point[0]}-c{point[1]}"


def draw_steps(rng, point, repeat_sd=0.005, step_sd=0.02, scale=1.0) -> np.ndarray:
    """[repeats, steps] decode step times of a point: its level, a shared offset per repeat, noise per step."""
    base = 2.0 + 0.5 * point[0] + point[1] / 512
    return base * scale * (1 + rng.normal(0, repeat_sd, (REPEATS, 1))) * (1 + rng.normal(0, step_sd, (REPEATS, STEPS)))


def resampled(steps: dict, rng) -> dict:
    """A/A: every repeat's steps drawn again, with replacement, from the same repeat."""
    return {p: np.take_along_axis(s, rng.integers(0, STEPS, s.shape), axis=1) for p, s in steps.items()}


def write_run(folder: Path, steps: dict, *, run_id: str, started: str, rows: dict | None = None, commit="a" * 40,
              hardware="H100-test", scale=1.0) -> Path:
    """A run folder as gptoss-bench leaves it: points.parquet (ok rows from `steps`, then the
    overrides of `rows` per point), samples.parquet of the ok points, env.json."""
    folder.mkdir(parents=True)
    points, samples = [], []
    for point, st in steps.items():
        b, c = point
        row = dict(run_id=run_id, point_id=pid(point), started_at=started, backend="torch_ref", backend_version="2.13",
                   model="gpt-oss-tiny", quant="bf16", batch_size=b, context_len=c, new_tokens=STEPS + 1,
                   repeats=REPEATS, seed=0, router_skew=0.0, gpu_name="NVIDIA H100 80GB HBM3", gpu_count=1,
                   hardware=hardware, status="ok", error="", ttft_ms=(5 + b * c / 64) * scale,
                   prefill_tok_s=b * c / ((5 + b * c / 64) * scale) * 1e3, tpot_ms_mean=st.mean(),
                   tpot_ms_p50=float(np.median(st)), decode_tok_s=b * 1e3 / st.mean(), peak_mem_gib=2 + 0.1 * b,
                   torch_peak_gib=1 + 0.1 * b, energy_j_per_tok=(0.8 + 0.2 * b) / b * scale, power_valid=True,
                   throttled=False, agreement=1.0)
        row.update((rows or {}).get(point, {}))
        points.append(row)
        if row["status"] == "ok":
            samples += [dict(point_id=pid(point), repeat=r, step=s + 1, tpot_ms=v)
                        for r in range(REPEATS) for s, v in enumerate(st[r])]
    write_atomic(to_table(pd.DataFrame(points), POINT_COLUMNS), folder / "points.parquet")
    write_atomic(to_table(pd.DataFrame(samples), SAMPLE_COLUMNS), folder / "samples.parquet")
    write_env(folder / "env.json", {"git_commit": commit, "driver_version": "570.1", "gpu_name": "NVIDIA H100 80GB HBM3"})
    return folder


def history(tmp_path, n: int, seed=1) -> list[Path]:
    """n runs of the same sweep, each with its own run-level offset (0.5%)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        scale = 1 + rng.normal(0, 0.005)
        steps = {p: draw_steps(rng, p, scale=scale) for p in POINTS}
        out.append(write_run(tmp_path / f"2026120{i + 1}T030000Z", steps, run_id=f"2026120{i + 1}T030000Z",
                             started=f"2026-12-0{i + 1}T03:00:00Z", commit=f"{i:x}" * 40, scale=scale))
    return out


@pytest.fixture
def baseline(tmp_path):
    """One recorded run and its steps."""
    rng = np.random.default_rng(0)
    steps = {p: draw_steps(rng, p) for p in POINTS}
    return write_run(tmp_path / "base", steps, run_id="20261201T030000Z", started="2026-12-01T03:00:00Z"), steps


def candidate(tmp_path, steps, rows=None, name="cand", slow: dict | None = None, seed=7) -> Path:
    """The baseline's steps resampled (A/A), points of `slow` multiplied by their factor."""
    steps = resampled(steps, np.random.default_rng(seed))
    steps = {p: s * (slow or {}).get(p, 1.0) for p, s in steps.items()}
    return write_run(tmp_path / name, steps, run_id="20261208T030000Z", started="2026-12-08T03:00:00Z", rows=rows,
                     commit="b" * 40)


def verdicts(baselines, cand, path=None, **kw):
    t = thresholds.load(path)
    return regression.compare([regression.read_run(b) for b in baselines], regression.read_run(cand), t, **kw)


def by(vs, verdict=None, metric=None, point=None):
    return [v for v in vs if (verdict is None or v.verdict == verdict) and (metric is None or v.metric == metric)
            and (point is None or v.point_id == pid(point))]


# ---- verdicts -------------------------------------------------------------------------------------

def test_planted_slowdown_is_the_only_regression(tmp_path, baseline):
    base, steps = baseline
    vs = verdicts([base], candidate(tmp_path, steps, slow={SLOW: 1.05}))
    flagged = by(vs, "regression")
    assert {v.point_id for v in flagged} == {pid(SLOW)}
    assert {v.metric for v in flagged} == {"tpot_ms", "decode_tok_s"}
    tpot = by(vs, metric="tpot_ms", point=SLOW)[0]
    assert tpot.ci_low > 1 and tpot.ci_low <= 1.05 <= tpot.ci_high and tpot.baseline_runs == 1
    assert not by(vs, "failed") and not by(vs, "improvement")
    assert vs[0].verdict == "regression"  # regressions first


def test_planted_slowdown_against_a_history(tmp_path):
    runs = history(tmp_path, 5)
    rng = np.random.default_rng(99)
    steps = {p: draw_steps(rng, p, scale=1.05 if p == SLOW else 1.0) for p in POINTS}
    cand = write_run(tmp_path / "cand", steps, run_id="20261208T030000Z", started="2026-12-08T03:00:00Z")
    vs = verdicts(runs, cand)
    assert {v.point_id for v in by(vs, "regression")} == {pid(SLOW)}
    assert by(vs, "regression", "tpot_ms")[0].baseline_runs == 5
    # the rolling baseline: only each point's last N runs count
    assert {v.baseline_runs for v in verdicts(runs, cand, last=3) if v.metric == "tpot_ms"} == {3}


def test_aa_gives_no_regression(tmp_path, baseline):
    base, steps = baseline
    one = verdicts([base], candidate(tmp_path, steps))
    assert {v.verdict for v in one} == {"unchanged"}
    runs = history(tmp_path / "h", 6)
    assert {v.verdict for v in verdicts(runs[:-1], runs[-1])} == {"unchanged"}


def test_slowdown_within_the_repeat_spread_is_not_a_regression(tmp_path):
    rng = np.random.default_rng(3)
    noisy = {p: draw_steps(rng, p, repeat_sd=0.08 if p == SLOW else 0.005) for p in POINTS}
    base = write_run(tmp_path / "base", noisy, run_id="r1", started="2026-12-01")
    vs = verdicts([base], candidate(tmp_path, noisy, slow={p: 1.04 for p in POINTS}))
    assert by(vs, metric="tpot_ms", point=SLOW)[0].verdict in ("unchanged", "inconclusive")
    # the same slowdown on the quiet points is seen
    assert {v.point_id for v in by(vs, "regression", "tpot_ms")} == {pid(p) for p in POINTS if p != SLOW}


def test_a_metric_measured_once_is_not_a_regression_on_one_pair_of_runs(tmp_path, baseline):
    """TTFT, prefill and energy have one value a run: 8% apart between two single runs is within
    the run-to-run noise such a pair cannot measure (the H200 A/A moved them up to 12%)."""
    base, steps = baseline
    point = (1, 32)
    base_row = pd.read_parquet(base / "points.parquet").set_index("point_id").loc[pid(point)]
    worse = dict(ttft_ms=base_row.ttft_ms * 1.08, prefill_tok_s=base_row.prefill_tok_s / 1.08,
                 energy_j_per_tok=base_row.energy_j_per_tok * 1.08)
    vs = verdicts([base], candidate(tmp_path, steps, rows={point: worse}))
    assert not by(vs, "regression")
    for metric in worse:
        v = by(vs, metric=metric, point=point)[0]
        assert v.verdict == "inconclusive" and "needs a history of >= 3 runs" in v.reason
        assert v.ci_low < 1 < v.ci_high
    # a change far beyond that noise is still called on one pair
    vs = verdicts([base], candidate(tmp_path, steps, name="double", rows={point: dict(ttft_ms=base_row.ttft_ms * 2)}))
    assert [(v.point_id, v.metric) for v in by(vs, "regression")] == [(pid(point), "ttft_ms")]
    # with a history, whose spread is the noise, the same 8% is judged
    runs = history(tmp_path / "h", 4)
    last = pd.read_parquet(runs[-1] / "points.parquet").set_index("point_id").loc[pid(point)]
    rows = {point: dict(ttft_ms=last.ttft_ms * 1.08, prefill_tok_s=last.prefill_tok_s / 1.08,
                        energy_j_per_tok=last.energy_j_per_tok * 1.08)}
    steps = {p: draw_steps(np.random.default_rng(11), p) for p in POINTS}
    cand = write_run(tmp_path / "hc", steps, run_id="hc", started="2026-12-09", rows=rows)
    assert {v.metric for v in by(verdicts(runs, cand), "regression")} == set(worse)


def tight_steps(point, ticks=(0, 1, 1, 2, -1)) -> np.ndarray:
    """[repeats, steps] of a point whose repeats differ by a timer tick or two (1 us) and tie, as
    on a quiet GPU: the H200 A/A's repeats of one run agreed to 0.05%."""
    base = 2.0 + 0.5 * point[0] + point[1] / 512
    return np.round(base + 0.001 * np.array(ticks, float)[:, None] + np.zeros((REPEATS, STEPS)), 3)


def test_planted_slowdown_with_tight_tied_repeats_is_flagged(tmp_path):
    """5 repeats a side with ties among them: the rank test must use its exact p (the normal
    approximation gives 0.012 for 5 repeats wholly apart, never below 0.01)."""
    steps = {p: tight_steps(p) for p in POINTS}
    base = write_run(tmp_path / "base", steps, run_id="b", started="2026-12-01")
    cand = write_run(tmp_path / "cand", {p: s * 1.05 for p, s in steps.items()}, run_id="c", started="2026-12-02")
    vs = verdicts([base], cand)
    assert {(v.point_id, v.metric) for v in by(vs, "regression")} == {
        (pid(p), m) for p in POINTS for m in ("tpot_ms", "decode_tok_s")}
    same = write_run(tmp_path / "same", steps, run_id="s", started="2026-12-02")
    assert by(verdicts([base], same), "regression") == []


def test_throttled_at_the_same_clocks_on_both_sides_is_judged(tmp_path):
    """A GPU at its power cap in every run (the H200 at batch 64) is the point's steady state: a
    slowdown there is a regression; throttled at clocks that differ, it is not decided."""
    steps = {p: tight_steps(p) for p in POINTS}
    capped = {p: dict(throttled=True, throttle_reasons="sw_power_cap", sm_clock_mhz_mean=1950.0) for p in POINTS}
    base = write_run(tmp_path / "base", steps, run_id="b", started="2026-12-01", rows=capped)
    rows = capped | {SLOW: capped[SLOW] | dict(sm_clock_mhz_mean=1850.0)}
    cand = write_run(tmp_path / "cand", {p: s * 1.05 for p, s in steps.items()}, run_id="c", started="2026-12-02",
                     rows=rows)
    vs = verdicts([base], cand)
    assert {v.point_id for v in by(vs, "regression", "tpot_ms")} == {pid(p) for p in POINTS if p != SLOW}
    slow = by(vs, metric="tpot_ms", point=SLOW)[0]
    assert slow.verdict == "inconclusive" and slow.reason == "throttled (SM clock 1950 -> 1850 MHz)"


def test_ok_to_error_is_failed_and_error_to_ok_is_fixed(tmp_path, baseline):
    base, steps = baseline
    broken = (1, 32)
    cand = candidate(tmp_path, steps, rows={broken: dict(status="error", error="CUDA error: illegal address")})
    vs = verdicts([base], cand)
    failed = by(vs, "failed")
    assert [(v.point_id, v.metric) for v in failed] == [(pid(broken), "status")]
    assert "illegal address" in failed[0].reason
    assert by(verdicts([cand], base), "fixed")[0].point_id == pid(broken)
    regression.write_verdicts(vs, cand / regression.VERDICTS_FILE)
    assert regression.flagged_point_ids(cand) == [pid(broken)]


def test_flagged_point_ids_without_verdicts_says_what_to_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="gptoss-compare"):
        regression.flagged_point_ids(tmp_path)


def test_agreement_drop_is_caught(tmp_path, baseline):
    base, steps = baseline
    vs = verdicts([base], candidate(tmp_path, steps, rows={(4, 32): dict(agreement=0.95), (1, 128): dict(agreement=0.99)}))
    assert [v.point_id for v in by(vs, "regression", "agreement")] == [pid((4, 32))]  # 0.01 is within the 0.02 allowed


def test_throttled_and_invalid_power_are_inconclusive_with_their_reason(tmp_path, baseline):
    base, steps = baseline
    cand = candidate(tmp_path, steps, slow={SLOW: 1.08, (1, 32): 1.08},
                     rows={SLOW: dict(throttled=True, throttle_reasons="hw_power_brake"), (1, 512): dict(power_valid=False)})
    vs = verdicts([base], cand)
    tpot = by(vs, metric="tpot_ms", point=SLOW)[0]
    assert (tpot.verdict, tpot.reason) == ("inconclusive", "throttled (candidate)")
    assert by(vs, metric="tpot_ms", point=(1, 32))[0].verdict == "regression"  # the same slowdown, not throttled
    energy = by(vs, metric="energy_j_per_tok", point=(1, 512))[0]
    assert (energy.verdict, energy.reason) == ("inconclusive", "power readings invalid")


def test_new_and_missing_points(tmp_path, baseline):
    base, steps = baseline
    rng = np.random.default_rng(5)
    cand_steps = {p: s for p, s in steps.items() if p != (1, 32)} | {(8, 32): draw_steps(rng, (8, 32))}
    cand = write_run(tmp_path / "cand", cand_steps, run_id="c", started="2026-12-09")
    vs = verdicts([base], cand)
    assert [v.point_id for v in by(vs, "new")] == [pid((8, 32))]
    assert [v.point_id for v in by(vs, "missing")] == [pid((1, 32))]


def test_thresholds_per_metric_and_per_point(tmp_path, baseline):
    base, steps = baseline
    cand = candidate(tmp_path, steps, slow={SLOW: 1.05, (1, 32): 1.05})
    path = tmp_path / "t.yaml"
    path.write_text("metrics:\n  decode_tok_s: {min_effect: 0.2}\n"
                    "points:\n  - match: {batch_size: 4, context_len: 128}\n    metrics: {tpot_ms: {min_effect: 0.1}}\n")
    vs = verdicts([base], cand, path)
    assert [v.point_id for v in by(vs, "regression")] == [pid((1, 32))]
    assert by(vs, "regression")[0].metric == "tpot_ms"


@pytest.mark.parametrize("text, key", [
    ("metrics:\n  tpot_ms: {min_efect: 0.03}\n", "metrics.tpot_ms.min_efect"),
    ("metrics:\n  tpot: {min_effect: 0.03}\n", "metrics.tpot"),
    ("confidence: high\n", "confidence"),
    ("points:\n  - match: {gpu: a}\n    metrics: {}\n", "points[0].match.gpu"),
    ("metrics: [1, 2\n", "not valid yaml"),
])
def test_a_bad_thresholds_file_is_one_line_naming_the_key(tmp_path, baseline, capsys, text, key):
    base, steps = baseline
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(SystemExit) as e:
        main([str(base), str(candidate(tmp_path, steps)), "--thresholds", str(path)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and key in err and str(path) in err and len(err.strip().splitlines()) == 1


def test_change_points_find_a_step_and_not_noise():
    rng = np.random.default_rng(0)
    t = thresholds.load().metrics["tpot_ms"]
    flat = 2.0 * (1 + rng.normal(0, 0.005, 12))
    assert regression.change_points(flat, "tpot_ms", t) == []
    stepped = flat * np.r_[np.ones(7), np.full(5, 1.06)]
    assert regression.change_points(stepped, "tpot_ms", t) == [7]


# ---- the command ----------------------------------------------------------------------------------

def run_cli(argv) -> int:
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in argv])
    return e.value.code


def test_cli_outputs_and_exit_codes(tmp_path, baseline, capsys):
    base, steps = baseline
    slow = candidate(tmp_path, steps, slow={SLOW: 1.05})
    same = candidate(tmp_path, steps, name="same")
    out = tmp_path / "out"
    assert run_cli([base, same]) == 0
    assert "0 regression" not in capsys.readouterr().out
    assert run_cli([base, slow, "--json", out / "v.json", "--junit", out / "v.xml", "--markdown", out / "v.md",
                    "--html", out / "v.html", "--history", tmp_path / "*"]) == 1
    term = capsys.readouterr().out
    assert term.index("regression") < term.index("unchanged")  # listed first, then the counts

    records = json.loads((out / "v.json").read_text())
    fields = {"backend", "model", "quant", "batch_size", "context_len", "new_tokens", "hardware", "metric", "verdict",
              "ratio", "ci_low", "ci_high", "baseline_runs", "reason"}
    assert all(fields <= r.keys() for r in records)
    assert {(r["batch_size"], r["context_len"]) for r in records if r["verdict"] == "regression"} == {SLOW}
    assert json.loads((slow / "verdicts.json").read_text()) == records  # always beside the candidate
    assert regression.flagged_point_ids(slow) == [pid(SLOW)]

    xml = junitparser.JUnitXml.fromfile(str(out / "v.xml"))
    cases = [c for suite in xml for c in suite]
    assert len(cases) == len(records)
    failing = [c for c in cases if any(isinstance(r, junitparser.Failure) for r in c.result)]
    assert {c.name for c in failing} == {"tpot_ms", "decode_tok_s"} and len(failing) == 2

    md = (out / "v.md").read_text()
    assert "| **regression** |" in md and "batch 4 · context 128" in md
    page = (out / "v.html").read_text()
    assert 'id="fig-ratio-tpot_ms"' in page and 'id="fig-trend-tpot_ms"' in page and "Plotly" in page


def test_cli_exit_2_says_which(tmp_path, baseline, capsys):
    base, steps = baseline
    other = write_run(tmp_path / "other", steps, run_id="o", started="2026-12-09", hardware="A100-test")
    assert run_cli([base, other]) == 2
    assert "nothing comparable" in capsys.readouterr().err
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "points.parquet").write_text("not parquet")
    assert run_cli([base, broken]) == 2
    err = capsys.readouterr().err
    assert "unreadable run" in err and str(broken) in err and len(err.strip().splitlines()) == 1
    assert run_cli([tmp_path / "nowhere", base]) == 2
    assert run_cli([base]) == 2


# ---- the A/A experiment script (run on the GPU by benchmarks/aa_experiment.py) -------------------------

def test_aa_experiment_on_recorded_runs(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("aa_experiment", Path(__file__).parents[1] / "benchmarks" / "aa_experiment.py")
    aa = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(aa)
    runs = history(tmp_path, 3)
    assert aa.main([str(r) for r in runs] + ["--shifts", "0.1"]) == 0
    out = capsys.readouterr().out
    assert "| cv |" in out and "0% (A/A: false alarms) | 0/" in out
    rows = {line.split("|")[1].strip(): line for line in out.splitlines() if line.startswith("| +")}
    assert set(rows) == {"+10%"}
    assert f"{6 * len(POINTS)}/{6 * len(POINTS)}" in rows["+10%"]  # every point of every pair flags a 10% slowdown
    assert "smallest slowdown flagged in ≥ 95% of point-comparisons: +10%" in out
