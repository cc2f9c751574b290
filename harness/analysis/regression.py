"""Regression verdicts: a candidate run against its baseline run(s), point by point and metric by
metric, with statistics that know the noise (issue 13; gptoss-compare is the command).

Points are matched on their identity (IDENTITY: backend and its set-up, model, quant, batch size,
context, new tokens, router skew, hardware label, GPU name); engine version, commit and driver are
shown for each side, never matched, since a change in them is what a nightly comparison looks for.

The unit of evidence is the repeat or the run, never the decode step: steps of one generate call
share its clocks, cache state and neighbours, so thousands of steps are not thousands of
independent measurements, and a test on steps would call every hair's change significant.

- With `min_history` (3) or more baseline runs of a point (its last `last` runs: the rolling
  baseline), the noise comes from the history: the median and the MAD of the runs' values, and
  the candidate's value as a lookback z-score against them, (value - median) / (1.4826 MAD ·
  sqrt(1 + pi / 2n)) (the second factor: the history median's own error), compared with
  Student's t at n - 1 degrees of freedom, which is wide where a handful of runs say little of
  their own spread. The scale is at least the metric's noise floor (thresholds.yaml): a history
  that happened to agree understates the next run's noise.
- With fewer, against the latest baseline run: for decode step time and decode tok/s, from the
  spread of the per-repeat values (median step of each repeat; tokens over the repeat's mean
  step): a percentile bootstrap interval of the ratio of medians (scipy.stats.bootstrap), at least
  the metric's noise floor wide (thresholds.yaml: repeats of one run understate the next run's
  noise), and an exact Mann-Whitney U test of the two sets of repeats (asv's test), both
  required. U's smallest two-sided p is 2 / C(n + m, m): at 99% it needs 5 repeats a side, every
  candidate repeat beyond every baseline one (p = 0.0079); with fewer it cannot decide, and the
  medians are compared as single values (next). The exact p matters: with a tie among the
  repeats scipy's default is the normal approximation, p = 0.012 for 5 repeats wholly apart, and
  a 5% slowdown on a point whose repeats agree to 0.05% went unflagged in 4 of 18 comparisons.
- One value a side, against one baseline run: TTFT, prefill, memory and energy are measured once
  per point, so a pair of numbers carries no estimate of its own noise and the repeats' floor
  does not apply. Such a metric is judged only when the change exceeds its
  single_value_noise (thresholds.yaml), the run-to-run noise the A/A experiment measured, times
  z sqrt(2) (two runs): 22% for TTFT and prefill (sd 6%), 18% for energy per token (sd 5%), 1.8%
  for peak memory. Within it, past the minimum effect, the verdict is `inconclusive`, reason
  `measured once a run: within its run-to-run noise (±22%); needs a history of >= 3 runs`. The
  evidence: three identical runs on an H200 (triton_mxfp4, gpt-oss-20b, batch 1/8/64 x context
  128/2048) differed by up to 12% in TTFT and prefill (batch 1 context 128: a ~3 ms prefill; cv
  5.8%) and up to 9% in energy per token (batch 1, cv 4.5%), while decode step time moved at most
  0.2%; the floor-only interval used before (±1.8%) made 13 false regressions of these in the 6
  pairwise comparisons.
- Times and energy of a throttled point are `inconclusive` when throttling could explain the
  change: one side throttled and the other not, or both throttled at mean SM clocks more than
  CLOCK_TOLERANCE (1%) apart. Both sides throttled at the same clocks is the machine's steady
  state under that load, not a run held back: an H200 at 600+ W sits at its software power cap
  at batch 8 context 2048 and at batch 64 in every run (clocks within 0.3% run to run), and
  calling those points inconclusive hid half the sweep from every comparison (a planted 10%
  slowdown was flagged in at most 18 of 36 point-comparisons).

A verdict needs both: a change beyond the metric's minimum effect (3% for times, 5% for memory
and energy: for rates the change is measured as a time, 1/ratio - 1) and beyond the noise at the
chosen confidence. Beyond the effect but within the noise is `inconclusive` (too noisy, or the
single-value reason above), and so is any energy figure whose power readings were invalid.
Agreement with the reference is compared by its absolute drop, without a noise test: with fixed
weights and prompts it moves only when the arithmetic does.

Change points on a point's history (for the trend page) come from ruptures' PELT on the series
in units of its noise (robust scale of the first differences, so a step does not inflate it),
penalty 4 ln n; a detected step smaller than the metric's minimum effect is dropped. On pure
normal noise PELT alone finds a false step in 4% (n = 30) to 19% (n = 8) of series; the effect
filter removes those that matter less than a verdict would.
"""

from __future__ import annotations

import functools
import json
import math
import warnings
from dataclasses import dataclass, field, fields
from functools import cached_property
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import ruptures
from scipy import stats

from harness.analysis.thresholds import IDENTITY, MetricThreshold, Thresholds
from harness.results import POINT_COLUMNS, engine_label, read_parquet, write_text_atomic

FAILED = frozenset({"oom", "error", "timeout"})
# severity order: the terminal table and the reports list verdicts in this order
VERDICTS = ("regression", "failed", "inconclusive", "improvement", "fixed", "new", "missing", "unchanged")
FLAGGED = ("regression", "failed")  # what fails a CI job, and what a confirmation rerun re-measures
VERDICTS_FILE = "verdicts.json"
BOOTSTRAP_RESAMPLES = 999
CHANGE_POINT_PENALTY = 4.0  # times ln(n), on the series in units of its noise
# Both sides power-capped at mean SM clocks this close: the same steady state, not a throttled run.
# A/A on the H200: sw_power_cap at batch 8 context 2048 and batch 64 in every run, clocks within 0.3%.
CLOCK_TOLERANCE = 0.01


@dataclass(frozen=True)
class Metric:
    name: str
    lower_is_better: bool
    kind: str  # time, memory, energy or agreement: which conditions make a change inconclusive
    from_repeats: bool  # per-repeat values from samples.parquet


METRICS = (
    Metric("tpot_ms", True, "time", True),  # decode step time: the median step of each repeat
    Metric("decode_tok_s", False, "time", True),
    Metric("ttft_ms", True, "time", False),
    Metric("prefill_tok_s", False, "time", False),
    Metric("peak_mem_gib", True, "memory", False),
    Metric("energy_j_per_tok", True, "energy", False),
    Metric("agreement", False, "agreement", False),
)


class UnreadableRun(Exception):
    """One line: the run folder and what is wrong with it."""


# ---- runs -----------------------------------------------------------------------------------------

def point_key(points: pd.DataFrame) -> pd.Series:
    """The identity of each point as one string: equal across runs exactly when IDENTITY is."""
    def text(v) -> str:
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return ""
        return f"{v:g}" if isinstance(v, float) else str(v)
    return pd.Series(["\x1f".join(map(text, row)) for row in points[list(IDENTITY)].itertuples(index=False)],
                     index=points.index, dtype=object)


def point_label(row) -> str:
    """A point as a reader names it: `triton_mxfp4 mxfp4 · gpt-oss-20b · batch 8 · context 2048 · 128 new · H100`."""
    skew = row.get("router_skew")
    parts = [f"{engine_label(row['backend'], row.get('setup'))} {row['quant']}", str(row["model"]),
             f"batch {row['batch_size']}", f"context {row['context_len']}", f"{row['new_tokens']} new",
             *([f"skew {skew:g}"] if skew and not pd.isna(skew) else []), str(row["hardware"])]
    return " · ".join(parts)


def per_repeat(samples: pd.DataFrame, points: pd.DataFrame) -> pd.DataFrame:
    """One row per (point_id, repeat): tpot_ms, the repeat's median decode step, and decode_tok_s,
    the batch's tokens over its mean step (the definition of the points column, per repeat)."""
    if samples.empty:
        return pd.DataFrame(columns=["point_id", "repeat", "tpot_ms", "decode_tok_s"])
    r = samples.groupby(["point_id", "repeat"], observed=True, sort=False)["tpot_ms"].agg(["median", "mean"]).reset_index()
    batch = r["point_id"].astype(object).map(points.drop_duplicates("point_id").set_index("point_id")["batch_size"])
    return pd.DataFrame({"point_id": r["point_id"].astype(object), "repeat": r["repeat"], "tpot_ms": r["median"],
                         "decode_tok_s": batch.astype(float) * 1e3 / r["mean"]})


@dataclass
class Run:
    path: Path
    run_id: str
    started: str  # sorts runs in time: the earliest started_at of its points, else the run id
    env: dict
    points: pd.DataFrame  # POINT_COLUMNS, skipped points left out, plus `key`
    repeats: pd.DataFrame  # per_repeat() of its samples

    @property
    def commit(self) -> str | None:
        return self.env.get("git_commit")

    @property
    def driver(self) -> str | None:
        return self.env.get("driver_version")

    @cached_property
    def _repeats_by_point(self) -> dict[str, pd.DataFrame]:
        return dict(tuple(self.repeats.groupby("point_id", sort=False)))

    def repeat_values(self, point_id: str, metric: str) -> np.ndarray:
        g = self._repeats_by_point.get(point_id)
        return np.empty(0) if g is None else g[metric].to_numpy(float)

    @cached_property
    def rows(self) -> pd.DataFrame:
        """One row per point: its key, point_id, status, error, the value of each metric (null
        unless ok), throttled, power_invalid, sm_clock (mean SM clock, MHz), backend_version, and the
        run's id, folder, time, commit and driver."""
        p = self.points
        values = {m.name: p[m.name].astype(float) for m in METRICS if not m.from_repeats and m.name != "peak_mem_gib"}
        values["peak_mem_gib"] = p["peak_mem_gib"].astype(float).fillna(p["torch_peak_gib"].astype(float))
        # per-repeat metrics: the median over repeats; the points column where a run has no samples
        medians = self.repeats.groupby("point_id", sort=False)[["tpot_ms", "decode_tok_s"]].median()
        for m, column in (("tpot_ms", "tpot_ms_p50"), ("decode_tok_s", "decode_tok_s")):
            values[m] = p["point_id"].map(medians[m]).astype(float).fillna(p[column].astype(float))
        out = p[["key", "point_id", "status", "backend_version", *IDENTITY]].copy()
        out["error"] = p["error"].fillna("").astype(str)
        # null is unknown (no NVML), neither throttled nor invalid
        out["throttled"] = p["throttled"].eq(True).fillna(False).astype(bool)
        out["power_invalid"] = p["power_valid"].eq(False).fillna(False).astype(bool)
        out["sm_clock"] = p["sm_clock_mhz_mean"].astype(float)
        for m in METRICS:
            out[m.name] = values[m.name].where(p["status"] == "ok")
        return out.assign(run_id=self.run_id, run_path=str(self.path), started=self.started, commit=self.commit,
                          driver=self.driver)


def read_run(path: Path | str) -> Run:
    """A run folder's points, per-repeat decode values and env.json; raises UnreadableRun."""
    path = Path(path)
    try:
        points = read_parquet(path / "points.parquet")
    except (OSError, pa.ArrowException) as e:
        raise UnreadableRun(f"{path}: points.parquet unreadable ({e})") from None
    missing = [c for c in ("point_id", "status", "backend", "model", "quant", "batch_size") if c not in points]
    if missing:
        raise UnreadableRun(f"{path}: points.parquet lacks the column(s) {', '.join(missing)}")
    for c in POINT_COLUMNS:  # older runs lack newer columns: null, as the results' rule has it
        if c not in points:
            points[c] = None
    points = points[points["status"] != "skipped"].reset_index(drop=True)
    points["key"] = point_key(points)
    try:
        env = json.loads((path / "env.json").read_text()) if (path / "env.json").is_file() else {}
    except (OSError, ValueError) as e:
        raise UnreadableRun(f"{path}: env.json unreadable ({e})") from None
    samples_file = path / "samples.parquet"
    try:
        # point_id read as a dictionary: a million repeated strings group in a fraction of the time
        samples = (read_parquet(samples_file, columns=["point_id", "repeat", "tpot_ms"], read_dictionary=["point_id"])
                   if samples_file.is_file() else pd.DataFrame(columns=["point_id", "repeat", "tpot_ms"]))
    except (OSError, pa.ArrowException, KeyError) as e:
        raise UnreadableRun(f"{path}: samples.parquet unreadable ({e})") from None
    run_id = str(points["run_id"].dropna().iloc[0]) if points["run_id"].notna().any() else path.name
    started = str(points["started_at"].dropna().min()) if points["started_at"].notna().any() else run_id
    return Run(path, run_id, started, env, points, per_repeat(samples, points))


# ---- statistics -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Evidence:
    baseline: float  # the baseline's value: the history median, or the latest run's value
    ratio: float  # candidate / baseline
    ci_low: float | None
    ci_high: float | None
    significant: bool  # beyond the noise at the chosen confidence


def _z(confidence: float) -> float:
    return float(stats.norm.ppf((1 + confidence) / 2))


def robust_sd(x: np.ndarray) -> float:
    """1.4826 MAD: the standard deviation of normal data, unmoved by a few outliers. It is
    scipy.stats.median_abs_deviation(x, scale="normal") written out: scipy's argument handling costs
    2 ms a call, seconds over the thousands of (point, metric) pairs of a large sweep."""
    return 1.4826 * float(np.median(np.abs(x - np.median(x))))


@functools.lru_cache(maxsize=None)
def _t(confidence: float, n: int) -> float:
    """Student's t quantile of a two-sided interval at `confidence`, n - 1 degrees of freedom."""
    return float(stats.t.ppf((1 + confidence) / 2, df=n - 1))


def history_evidence(history: np.ndarray, candidate: float, t: MetricThreshold, confidence: float) -> Evidence:
    """The candidate's run value against the values of the point's baseline runs (lookback z-score
    with a robust scale; see the module docstring)."""
    n = len(history)
    med = float(np.median(history))
    scale = max(robust_sd(history), t.noise_floor * abs(med))
    half = _t(confidence, n) * scale * math.sqrt(1 + math.pi / (2 * n)) / med
    ratio = candidate / med
    return Evidence(med, ratio, ratio - half, ratio + half, abs(ratio - 1) > half)


def rank_test_can_decide(n_baseline: int, n_candidate: int, confidence: float) -> bool:
    """Whether a two-sided Mann-Whitney U test of so many repeats can reach `confidence` at all:
    its smallest p, every candidate repeat beyond every baseline one, is 2 / C(n + m, m) (5 a side:
    0.0079, so 99% needs 5 repeats a side and all of them apart; 4 a side: 0.029, never)."""
    return 2 / math.comb(n_baseline + n_candidate, n_candidate) < 1 - confidence


def repeats_evidence(baseline: np.ndarray, candidate: np.ndarray, t: MetricThreshold, confidence: float) -> Evidence:
    """Per-repeat values of one baseline run against the candidate's: bootstrap interval of the
    ratio of medians, widened to the noise floor, and Mann-Whitney U; both must say 'changed'.
    U's p is the exact one: with a tie among a handful of repeats (timer ticks make them common)
    scipy's default falls back to the normal approximation, which puts 5 repeats wholly apart at
    p = 0.012, above 0.01, and so missed real slowdowns."""
    ratio = float(np.median(candidate) / np.median(baseline))
    with warnings.catch_warnings():  # identical repeats: a degenerate bootstrap, the floor decides
        warnings.simplefilter("ignore")
        ci = stats.bootstrap((candidate, baseline), lambda c, b, axis: np.median(c, axis=axis) / np.median(b, axis=axis),
                             n_resamples=BOOTSTRAP_RESAMPLES, confidence_level=confidence, method="percentile",
                             vectorized=True, rng=np.random.default_rng(0)).confidence_interval
        p = stats.mannwhitneyu(candidate, baseline, alternative="two-sided", method="exact").pvalue
    half = _z(confidence) * t.noise_floor * math.sqrt(2) * ratio  # two runs, each at least the floor's noise
    low = min(ci.low, ratio - half) if np.isfinite(ci.low) else ratio - half
    high = max(ci.high, ratio + half) if np.isfinite(ci.high) else ratio + half
    return Evidence(float(np.median(baseline)), ratio, low, high, (low > 1 or high < 1) and p < 1 - confidence)


def single_evidence(baseline: float, candidate: float, t: MetricThreshold, confidence: float) -> Evidence:
    """One value a side: no spread to measure, so the interval is the metric's run-to-run noise
    as the A/A experiment measured it (single_value_noise), for each of the two runs."""
    ratio = candidate / baseline
    half = _z(confidence) * t.single_value_noise * math.sqrt(2) * ratio
    return Evidence(baseline, ratio, ratio - half, ratio + half, abs(ratio - 1) > half)


def change_points(values: Sequence[float], metric: str, t: MetricThreshold) -> list[int]:
    """Indices i of `values` (a point's runs in time order) where a new level starts; see the
    module docstring for the method."""
    x = np.asarray(values, dtype=float)
    n = len(x)
    if n < 4:
        return []
    med = float(np.median(x))
    scale = max(robust_sd(np.diff(x)) / math.sqrt(2),
                t.noise_floor * abs(med), 1e-12 * max(abs(med), 1.0))
    ends = ruptures.Pelt(model="l2", min_size=2, jump=1).fit((x - med) / scale).predict(
        pen=CHANGE_POINT_PENALTY * math.log(n))[:-1]
    kept, bounds = [], [0, *ends, n]
    for before, at, after in zip(bounds, bounds[1:], bounds[2:]):
        a, b = float(np.median(x[before:at])), float(np.median(x[at:after]))
        step = abs(b - a) if metric == "agreement" else abs(b / a - 1) if a else math.inf
        if step > t.min_effect:
            kept.append(at)
    return kept


# ---- verdicts -------------------------------------------------------------------------------------

@dataclass
class Verdict:
    backend: str
    setup: str | None  # the backend's set-up where a sweep ran it in several (moe_path=marlin)
    model: str
    quant: str
    batch_size: int
    context_len: int
    new_tokens: int
    router_skew: float | None
    hardware: str
    gpu_name: str | None
    metric: str  # a METRICS name, or `status`
    verdict: str  # one of VERDICTS
    ratio: float | None  # candidate / baseline
    ci_low: float | None
    ci_high: float | None
    baseline_runs: int
    reason: str
    baseline_value: float | None = None
    candidate_value: float | None = None
    point_id: str | None = None  # the candidate's (the latest baseline's for `missing`)
    label: str = ""
    baseline_run: str | None = None  # the latest baseline run of the point
    candidate_run: str | None = None
    baseline_commit: str | None = None
    candidate_commit: str | None = None
    baseline_engine: str | None = None  # backend_version
    candidate_engine: str | None = None
    baseline_driver: str | None = None
    candidate_driver: str | None = None
    key: str = field(default="", repr=False)  # point_key(): how the page finds the point's history; not written

    def record(self) -> dict:
        """The JSON record: every field but `key`, NaN as null."""
        values = ((name, getattr(self, name)) for name in RECORD_FIELDS)
        return {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in values}


RECORD_FIELDS = tuple(f.name for f in fields(Verdict) if f.name != "key")


def _identity(row) -> dict:
    return {k: (None if pd.isna(row[k]) else row[k].item() if hasattr(row[k], "item") else row[k]) for k in IDENTITY}


def _sides(c: dict | None, b: dict | None) -> dict:
    out = {}
    for side, row in (("candidate", c), ("baseline", b)):
        if row is not None:
            out.update({f"{side}_run": row["run_id"], f"{side}_commit": row["commit"],
                        f"{side}_engine": None if pd.isna(row["backend_version"]) else row["backend_version"],
                        f"{side}_driver": row["driver"]})
    return out


def _decide(metric: Metric, t: MetricThreshold, ev: Evidence, candidate: float, noisy: str) -> tuple[str, str]:
    """`noisy`: the reason when the change is beyond the minimum effect but not the noise."""
    if metric.name == "agreement":
        bad = ev.baseline - candidate  # an absolute drop
    elif metric.lower_is_better:
        bad = ev.ratio - 1
    else:
        bad = 1 / ev.ratio - 1  # a rate: its change as a time, so 3% slower reads 3% everywhere
    if abs(bad) <= t.min_effect:
        return "unchanged", ""
    if not ev.significant:
        return "inconclusive", noisy
    return ("regression" if bad > 0 else "improvement"), ""


def _throttling(c: dict, base: dict[str, np.ndarray], used: np.ndarray) -> str | None:
    """The reason throttling could explain a change of time or energy, or None where it cannot:
    neither side throttled, or every side throttled at the same mean SM clock (within
    CLOCK_TOLERANCE), the machine's steady power cap under this load rather than a run held back."""
    b_throttled = base["throttled"][used]
    if not c["throttled"] and not b_throttled.any():
        return None
    if c["throttled"] and b_throttled.all():
        b_clock = float(np.median(base["sm_clock"][used].astype(float)))  # NaN where any run lacks it
        if abs(c["sm_clock"] / b_clock - 1) <= CLOCK_TOLERANCE:
            return None
        if np.isfinite(c["sm_clock"]) and np.isfinite(b_clock):
            return f"throttled (SM clock {b_clock:.0f} -> {c['sm_clock']:.0f} MHz)"
    return f"throttled ({'candidate' if c['throttled'] else 'baseline'})"


def _metric_verdict(metric: Metric, t: MetricThreshold, confidence: float, min_history: int, c: dict,
                    base: dict[str, np.ndarray], candidate: Run, runs: dict[str, Run]) -> tuple[str, str, Evidence | None]:
    """Verdict, reason and evidence of one metric of a point that ran in the candidate; `base`:
    the point's ok rows of the rolling baseline, oldest first, column -> array."""
    value = c[metric.name]
    values = base[metric.name].astype(float)
    used = ~np.isnan(values)
    history = values[used]
    if pd.isna(value):
        return "inconclusive", "not measured in the candidate", None
    if not len(history):
        return "inconclusive", "not measured in the baseline", None
    if history[-1] == 0 or (metric.name != "agreement" and (history <= 0).any()):
        return "inconclusive", "a zero baseline value", None
    noisy = "too noisy"
    if metric.name == "agreement":
        ev = Evidence(float(np.median(history)), value / float(np.median(history)), None, None, True)
    elif len(history) >= min_history:
        ev = history_evidence(history, value, t, confidence)
    else:
        last = np.flatnonzero(used)[-1]
        b_rep = (runs[base["run_path"][last]].repeat_values(base["point_id"][last], metric.name) if metric.from_repeats
                 else np.empty(0))
        c_rep = candidate.repeat_values(c["point_id"], metric.name) if metric.from_repeats else np.empty(0)
        if rank_test_can_decide(len(b_rep), len(c_rep), confidence):
            ev = repeats_evidence(b_rep, c_rep, t, confidence)
        else:  # one number a side (see the module docstring): only a change beyond the A/A's noise counts
            ev = single_evidence(history[-1], value, t, confidence)
            what = ("measured once a run" if not metric.from_repeats
                    else f"{len(b_rep)} and {len(c_rep)} repeats, too few for a rank test at {confidence:.0%}")
            noisy = (f"{what}: within its run-to-run noise (±{1 - ev.ci_low / ev.ratio:.0%}); "
                     f"needs a history of >= {min_history} runs")
    verdict, reason = _decide(metric, t, ev, value, noisy)
    if metric.kind == "energy" and (c["power_invalid"] or base["power_invalid"][used].any()):
        return "inconclusive", "power readings invalid", ev
    if metric.kind in ("time", "energy") and verdict in ("regression", "improvement"):
        throttling = _throttling(c, base, used)
        if throttling:
            return "inconclusive", throttling, ev
    return verdict, reason, ev


def compare(baselines: Sequence[Run], candidate: Run, thresholds: Thresholds, last: int = 7) -> list[Verdict]:
    """Verdicts of every point of the candidate and of the baselines' last `last` runs of each
    point, in VERDICTS order. The candidate itself, if among the baselines, is left out of them."""
    base_runs = sorted((r for r in baselines if r.path.resolve() != candidate.path.resolve()), key=lambda r: r.started)
    runs = {str(r.path): r for r in base_runs}  # by folder: a copied run keeps its run_id
    b = pd.concat([r.rows for r in base_runs], ignore_index=True) if base_runs else candidate.rows.iloc[:0]
    b = b.groupby("key", sort=False).tail(last).reset_index(drop=True)  # the rolling baseline: each point's last runs
    # column arrays sliced per point: pandas indexing per point and metric would cost more than the statistics
    columns = {name: b[name].to_numpy() for name in b.columns}
    positions = b.groupby("key", sort=False).indices  # key -> row positions, oldest first
    cand = candidate.rows.drop_duplicates("key", keep="last")
    out: list[Verdict] = []

    def add(point: tuple[str, dict, str], metric: str, verdict: str, reason: str, n: int, ev: Evidence | None = None,
            value=None, c: dict | None = None, last_b: dict | None = None) -> None:
        key, identity, label = point
        out.append(Verdict(**identity, metric=metric, verdict=verdict,
                           ratio=ev.ratio if ev else None, ci_low=ev.ci_low if ev else None,
                           ci_high=ev.ci_high if ev else None, baseline_runs=n, reason=reason,
                           baseline_value=ev.baseline if ev else None,
                           candidate_value=None if value is None or pd.isna(value) else float(value),
                           point_id=(c or last_b)["point_id"], label=label, **_sides(c, last_b), key=key))

    for c in cand.to_dict("records"):
        identity = _identity(c)
        point = (c["key"], identity, point_label(c))
        if c["key"] not in positions:
            add(point, "status", "new", "", 0, c=c)
            continue
        base = {name: a[positions[c["key"]]] for name, a in columns.items()}
        last_b = {name: a[-1] for name, a in base.items()}
        ok = base["status"] == "ok"
        ok_base = {name: a[ok] for name, a in base.items()}
        n_runs = len(base["status"])
        if c["status"] in FAILED:
            verdict = "failed" if last_b["status"] == "ok" else "unchanged"
            add(point, "status", verdict, f"{c['status']}: {c['error']}".rstrip(": ") if verdict == "failed"
                else f"still {c['status']}", n_runs, c=c, last_b=last_b)
            continue
        add(point, "status", "fixed" if last_b["status"] in FAILED else "unchanged",
            f"was {last_b['status']}" if last_b["status"] in FAILED else "", n_runs, c=c, last_b=last_b)
        for m in METRICS:
            measured = int((~np.isnan(ok_base[m.name].astype(float))).sum())
            if pd.isna(c[m.name]) and not measured:
                continue  # measured on neither side (no NVML, no reference): nothing to say
            verdict, reason, ev = _metric_verdict(m, thresholds.of(m.name, identity), thresholds.confidence,
                                                  thresholds.min_history, c, ok_base, candidate, runs)
            add(point, m.name, verdict, reason, measured, ev, c[m.name], c=c, last_b=last_b)
    for key in positions.keys() - set(cand["key"]):
        last_b = {name: a[positions[key][-1]] for name, a in columns.items()}
        add((key, _identity(last_b), point_label(last_b)), "status", "missing", f"last in {last_b['run_id']}",
            len(positions[key]), last_b=last_b)
    rank = {v: i for i, v in enumerate(VERDICTS)}
    out.sort(key=lambda v: (rank[v.verdict], v.label, v.metric))
    return out


def comparable(verdicts: Sequence[Verdict]) -> bool:
    """Whether any point was in both the candidate and a baseline."""
    return any(v.verdict not in ("new", "missing") for v in verdicts)


def verdicts_json(verdicts: Sequence[Verdict]) -> str:
    """A JSON list of Verdict.record(), one record a line (json's C encoder, and a diff reads per record)."""
    return "[\n" + ",\n".join(json.dumps(v.record(), default=str) for v in verdicts) + "\n]\n"


def write_verdicts(verdicts: Sequence[Verdict], path: Path) -> None:
    write_text_atomic(verdicts_json(verdicts), Path(path))


def flagged_point_ids(run_dir: Path) -> list[str]:
    """The point ids of `run_dir` that its comparison (run_dir/verdicts.json, written by
    gptoss-compare) flagged: a regression or a failed point; what a confirmation rerun re-measures.
    Raises FileNotFoundError when the run has not been compared."""
    path = Path(run_dir) / VERDICTS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no verdicts; run `gptoss-compare BASELINE... {run_dir}` first")
    records = json.loads(path.read_text())
    return list(dict.fromkeys(r["point_id"] for r in records if r["verdict"] in FLAGGED))
