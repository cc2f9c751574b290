"""The sweep as a whole: what the Hydra sweeper plugin (hydra_plugins/gptoss_bench_sweeper) runs.

Hydra's own sweeper would start one job per point, each with its own output folder. Here the
whole sweep is expanded and validated first, one run folder holds every point, and each worker
group (backend, model, quant) loads its engine once for all of its points: run here one after
the other, or, with a launcher of another kind (submitit: SLURM or local processes), one
launcher job per group. At the end: a summary table, the HTML report, a last line saying where
both are, and an exit code a nightly job can act on.

Faults of the sweep itself (Ctrl-C, a stop signal, a full disk, a read-only folder, a second sweep
on the same run) end in one line that says what happened, what was kept and how to go on.
"""

from __future__ import annotations

import errno
import logging
import signal
import sys
from pathlib import Path

from hydra._internal.core_plugins.basic_launcher import BasicLauncher
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.plugins import Plugins
from hydra.core.utils import JobStatus
from omegaconf import open_dict

from harness.report import write_report
from harness.results import load
from harness.runner.group import run_group
from harness.runner.run_folder import RunFolder, RunFolderError
from harness.runner.sweep import SweepError, combinations, expand, plain, point_problems
from harness.runner.terminal import SweepProgress, console, summary

log = logging.getLogger(__name__)
RESUME_KEYS = {"resume", "run_id", "results_dir", "reports_dir"}  # what a resume may say besides the stored sweep
RERUN_KEYS = RESUME_KEYS | {"rerun", "only"}
# What a CI job's timeout (`timeout`, a runner's cancel) and a closed terminal send. Python's default
# for them ends the process at once, and the workers, each in a session of its own, would live on
# holding the GPU (seen on the H200: the next engine found 17 GB taken); as an exception they unwind
# like Ctrl-C, which kills the worker and keeps what was measured.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


class Stopped(Exception):
    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_stopped(signum, frame):
    raise Stopped(signum)


def sweep(sweeper, arguments: list[str]) -> None:
    """validate -> groups -> workers -> rows -> report -> exit code."""
    cfg = sweeper.config
    run = None
    for sig in STOP_SIGNALS:
        signal.signal(sig, _raise_stopped)
    try:
        run, points = _run_folder(cfg, sweeper.hydra_context.config_loader, sweeper.params, arguments)
        with run.exclusive():
            _run_groups(sweeper, run, [p for p in points if p.point_id not in run.ok_point_ids()])
    except (SweepError, RunFolderError) as e:
        _stop(str(e), 2)  # the message is the whole story: no traceback
    except KeyboardInterrupt:
        _stop(f"interrupted; {_kept(run)}", 130)
    except Stopped as e:
        _stop(f"stopped by {e}; {_kept(run)}", 128 + e.signum)
    except OSError as e:
        _stop(f"{_os_error(e)}; {_kept(run)}", 1)
    for sig in STOP_SIGNALS:  # every worker is gone: the summary and the report need no unwinding
        signal.signal(sig, signal.SIG_DFL)
    rows = load(run.path)
    rows = rows[rows.point_id.isin([p.point_id for p in points])]
    for part in summary(rows, points[0].config.agreement.reference.name):
        console.print(part, soft_wrap=isinstance(part, str))
    report = Path(cfg.reports_dir).expanduser() / f"{run.run_id}.html"
    try:
        write_report([run.path], report)
    except OSError as e:
        console.print(f"results: {run.path}   report: not written", soft_wrap=True)
        _stop(f"the report could not be written ({_os_error(e, report)}); the results are whole: "
              f"`gptoss-report {run.path}` writes it", 1)
    console.print(f"results: {run.path}   report: {report}", soft_wrap=True)
    failed = rows[rows.status != "ok"]
    if len(failed) and not cfg.allow_failed_points:
        _stop(f"{len(failed)} of {len(rows)} points are not ok ({', '.join(sorted(set(failed.status)))}); "
              "allow_failed_points=true makes that exit 0", 1)


def _stop(message: str, code: int) -> None:
    print(f"gptoss-bench: {message}", file=sys.stderr)
    sys.exit(code)


def _kept(run: RunFolder | None) -> str:
    if run is None:
        return "nothing was run"
    n = len(run.ok_point_ids()) if (run.path / "points.parquet").is_file() else 0
    return f"{n} ok points are kept in {run.path}; `gptoss-bench resume={run.path}` runs the rest"


def _os_error(e: OSError, path: Path | None = None) -> str:
    what = {errno.ENOSPC: "the disk is full", errno.EROFS: "the file system is read-only",
            errno.EACCES: "permission denied", errno.EFBIG: "a file grew past the size allowed",
            errno.EDQUOT: "the disk quota is used up"}.get(e.errno, e.strerror or str(e))
    path = e.filename or path
    return f"{what} writing {path}" if path else what


# ---- validate -------------------------------------------------------------------------------------
def _name_run(cfg, run: RunFolder) -> None:
    """Point the sweep's config at the run folder: Hydra's job folders (hydra.sweep.dir) and every
    job's config follow from run_id and results_dir."""
    with open_dict(cfg):
        cfg.run_id, cfg.results_dir = run.run_id, str(run.path.parent)


def _extra(config_loader, arguments: list[str], allowed: set[str]) -> list[str]:
    return [o.input_line for o in OverridesParser.create(config_loader=config_loader).parse_overrides(arguments)
            if o.key_or_group not in allowed]


def _run_folder(cfg, config_loader, params: dict, arguments: list[str]) -> tuple[RunFolder, list]:
    """The run folder and its points: a new, validated sweep; the one stored in a run to resume;
    or the points of an earlier run to measure again."""
    results_dir = Path(cfg.results_dir).expanduser().resolve()
    if cfg.resume:
        if cfg.resume is True:
            if not cfg.run_id:
                raise SweepError("resume=true needs run_id=<the run to complete> (or resume=<run folder>)")
            path = results_dir / cfg.run_id
        else:
            path = Path(str(cfg.resume)).expanduser().resolve()
        extra = _extra(config_loader, arguments, RESUME_KEYS)
        if extra:
            raise SweepError(f"resume runs the sweep stored in {path}/config.yaml; drop {extra} (or start a new sweep)")
        run = RunFolder.existing(path)
        _name_run(cfg, run)
        return run, run.points()
    if cfg.rerun:
        extra = _extra(config_loader, arguments, RERUN_KEYS)
        if extra:
            raise SweepError(f"rerun measures points stored in {cfg.rerun}/config.yaml again; drop {extra}")
        return _rerun(cfg, results_dir)
    overrides = [f"{k}={v}" for k, v in (params or {}).items()] + list(arguments)
    points = expand(lambda combo: config_loader.load_sweep_config(cfg, combo),
                    combinations(config_loader, overrides, list(cfg.arms)))
    run = RunFolder.create(results_dir, cfg.run_id)
    _name_run(cfg, run)
    resolved = plain(cfg, [k for k in cfg if k != "hydra"])
    resolved["cache_dir"] = str(Path(resolved["cache_dir"]).expanduser())
    run.write_config(resolved, overrides, points)
    return run, points


def _rerun(cfg, results_dir: Path) -> tuple[RunFolder, list]:
    """A new run of the points of cfg.rerun that `only` selects: regressed (flagged by the
    verdicts gptoss-compare wrote there), failed (no ok row) or all."""
    from harness.analysis.regression import flagged_point_ids
    source = RunFolder.existing(Path(cfg.rerun).expanduser().resolve())
    points = source.points()
    if cfg.only == "regressed":
        if not (source.path / "verdicts.json").is_file():
            raise SweepError(f"rerun={source.path} only=regressed: no verdicts.json there; run "
                             f"`gptoss-compare BASELINE... {source.path}` first (or only=failed, only=all)")
        chosen = set(flagged_point_ids(source.path))
    elif cfg.only == "failed":
        chosen = {p.point_id for p in points} - source.ok_point_ids()
    elif cfg.only == "all":
        chosen = {p.point_id for p in points}
    else:
        raise SweepError(f"only={cfg.only}: expected regressed, failed or all")
    points = [p for p in points if p.point_id in chosen]
    if not points:
        raise SweepError(f"rerun={source.path} only={cfg.only}: no point to measure again")
    problems = [f"  {p.point_id}: {problem}" for p in points for problem in point_problems(p.config)]
    if problems:
        raise SweepError("\n".join([f"rerun={source.path}: these points cannot run here, nothing was run:", *problems]))
    run = RunFolder.create(results_dir, cfg.run_id)
    _name_run(cfg, run)
    stored = source.config()
    stored.pop("sweep")
    run.write_config({**stored, "rerun": str(source.path), "only": cfg.only}, [], points)
    return run, points


# ---- groups and their workers ---------------------------------------------------------------------
def _run_groups(sweeper, run: RunFolder, todo: list) -> None:
    """Every group with points to run: here, one after the other, under one progress bar; or one
    job each through the configured Hydra launcher (SLURM, local processes)."""
    groups = list(dict.fromkeys(p.group for p in todo))
    log.info("run %s: %d points in %d groups", run.path, len(todo), len(groups))
    if not groups:
        return
    ctx, cfg = sweeper.hydra_context, sweeper.config
    launcher = Plugins.instance().instantiate_launcher(hydra_context=ctx, task_function=sweeper.task_function,
                                                       config=cfg)
    if isinstance(launcher, BasicLauncher):
        with SweepProgress(len(todo)):
            for group in groups:
                run_group(run, group)
        return
    jobs = [[f"+group={g}", f"run_id={run.run_id}", f"results_dir={run.path.parent}"] for g in groups]
    failed = [r for r in launcher.launch(jobs, initial_job_idx=0) if r.status == JobStatus.FAILED]
    if failed:
        failed[0].return_value  # raises the job's exception: a harness bug, not a failed point
