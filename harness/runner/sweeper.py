"""The sweep as a whole: what the Hydra sweeper plugin (hydra_plugins/gptoss_bench_sweeper) runs.

Hydra's own sweeper would start one job per point, each with its own output folder. Here the
whole sweep is expanded and validated first, one run folder holds every point, and the
configured Hydra launcher gets one job per worker group (backend, model, quant): the basic
launcher runs them one after the other in this process, submitit runs each as a SLURM job (or a
local process), and each job loads its engine once for all of its points. At the end: a summary
table, the HTML report, and a last line saying where both are.
"""

from __future__ import annotations

import logging
from pathlib import Path

from hydra._internal.core_plugins.basic_launcher import BasicLauncher
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.plugins import Plugins
from hydra.core.utils import JobStatus
from omegaconf import open_dict

from harness.report import write_report
from harness.results import load
from harness.runner.run_folder import RunFolder
from harness.runner.sweep import SweepError, combinations, expand, plain
from harness.runner.terminal import SweepProgress, console, summary

log = logging.getLogger(__name__)
RESUME_KEYS = {"resume", "run_id", "results_dir", "reports_dir"}  # what a resume may say besides the stored sweep


def _name_run(cfg, run: RunFolder) -> None:
    """Point the sweep's config at the run folder: Hydra's job folders (hydra.sweep.dir) and every
    job's config follow from run_id and results_dir."""
    with open_dict(cfg):
        cfg.run_id, cfg.results_dir = run.run_id, str(run.path.parent)


def _run_folder(cfg, config_loader, params: dict, arguments: list[str]) -> tuple[RunFolder, list]:
    """The run folder and its points: a new, validated sweep, or the one stored in a run to resume."""
    results_dir = Path(cfg.results_dir).expanduser().resolve()
    if cfg.resume:
        if cfg.resume is True:
            if not cfg.run_id:
                raise SweepError("resume=true needs run_id=<the run to complete> (or resume=<run folder>)")
            path = results_dir / cfg.run_id
        else:
            path = Path(str(cfg.resume)).expanduser().resolve()
        extra = [o.input_line for o in OverridesParser.create(config_loader=config_loader).parse_overrides(arguments)
                 if o.key_or_group not in RESUME_KEYS]
        if extra:
            raise SweepError(f"resume runs the sweep stored in {path}/config.yaml; drop {extra} "
                             "(or start a new sweep)")
        try:
            run = RunFolder.existing(path)
        except FileNotFoundError as e:
            raise SweepError(str(e)) from None
        _name_run(cfg, run)
        return run, run.points()
    overrides = [f"{k}={v}" for k, v in (params or {}).items()] + list(arguments)
    points = expand(lambda combo: config_loader.load_sweep_config(cfg, combo), combinations(config_loader, overrides))
    try:
        run = RunFolder.create(results_dir, cfg.run_id)
    except FileExistsError as e:
        raise SweepError(str(e)) from None
    _name_run(cfg, run)
    resolved = plain(cfg, [k for k in cfg if k != "hydra"])
    resolved["cache_dir"] = str(Path(resolved["cache_dir"]).expanduser())
    run.write_config(resolved, overrides, points)
    return run, points


def sweep(sweeper, arguments: list[str]) -> list:
    cfg, ctx = sweeper.config, sweeper.hydra_context
    try:
        run, points = _run_folder(cfg, ctx.config_loader, sweeper.params, arguments)
    except SweepError as e:
        raise SystemExit(str(e)) from None  # the message is the whole story: no traceback
    done = run.ok_point_ids()
    todo = [p for p in points if p.point_id not in done]
    groups = list(dict.fromkeys(p.group for p in todo))
    log.info("run %s: %d points in %d groups (%d already ok)", run.path, len(todo), len(groups), len(points) - len(todo))
    returns = []
    if groups:
        launcher = Plugins.instance().instantiate_launcher(hydra_context=ctx, task_function=sweeper.task_function,
                                                           config=cfg)
        jobs = [[f"+group={g}", f"run_id={run.run_id}", f"results_dir={run.path.parent}"] for g in groups]
        if isinstance(launcher, BasicLauncher):  # jobs run here, one after the other: one bar for all
            with SweepProgress(len(todo)):
                returns = launcher.launch(jobs, initial_job_idx=0)
        else:  # jobs elsewhere (SLURM, local processes) show their progress in their own logs
            returns = launcher.launch(jobs, initial_job_idx=0)
    rows = load(run.path)
    for part in summary(rows[rows.point_id.isin([p.point_id for p in points])]):
        console.print(part, soft_wrap=isinstance(part, str))
    report = write_report([run.path], Path(cfg.reports_dir).expanduser() / f"{run.run_id}.html")
    console.print(f"results: {run.path}   report: {report}", soft_wrap=True)
    failed = [r for r in returns if r.status == JobStatus.FAILED]
    if failed:
        failed[0].return_value  # raises the job's exception: a harness bug, not a failed point
    return returns
