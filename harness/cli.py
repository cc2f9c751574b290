"""`gptoss-bench`: the Hydra application. Its configuration ships inside the package (harness/conf),
so an installed harness runs with no checkout around it.

    gptoss-bench                                     # the default job (README)
    gptoss-bench -m workload.batch_size=1,8,64 backend=triton_mxfp4 model=gpt-oss-20b
    gptoss-bench resume=results/<run_id>             # rerun the points without an ok row

The sweeper (harness.runner.sweeper) runs the whole sweep; Hydra calls `job` only for a launcher
job of one worker group (submitit: a SLURM job, a local process).
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig

from harness.config import SweepConfig
from harness.runner.group import run_group
from harness.runner.run_folder import RunFolder

# An absolute path: relative ones are resolved as Python packages when run as `python -m harness`.
CONF = str(Path(__file__).resolve().parent / "conf")
ConfigStore.instance().store(name="gptoss_schema", node=SweepConfig)  # conf/config.yaml's first default
# Hydra's flags that take no value: argparse wants them before the overrides, users type them anywhere.
BARE_FLAGS = {"-m", "--multirun", "-r", "--run", "--resolve", "-h", "--help", "--hydra-help", "--version"}


@hydra.main(version_base="1.3", config_path=CONF, config_name="config")
def job(cfg: DictConfig) -> None:
    if cfg.get("group") is None:
        raise SystemExit("gptoss-bench runs sweeps (hydra.mode=MULTIRUN, its default); "
                         "a single point is `gptoss-bench sweep=none`")
    run_group(RunFolder(Path(cfg.results_dir) / cfg.run_id), cfg.group)


def main() -> None:
    args = sys.argv[1:]
    sys.argv = [sys.argv[0], *[a for a in args if a in BARE_FLAGS], *[a for a in args if a not in BARE_FLAGS]]
    job()


if __name__ == "__main__":
    main()
