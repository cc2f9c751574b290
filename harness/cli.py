"""`gptoss-bench`: the Hydra application. Configuration lives in conf/ at the repository root.

    gptoss-bench                                     # the default job (README)
    gptoss-bench -m workload.batch_size=1,8,64 backend=triton_mxfp4 model=gpt-oss-20b
    gptoss-bench resume=results/<run_id>             # rerun the points without an ok row

Hydra calls `main` once per worker group, from the gptoss sweeper (harness.runner.sweeper).
"""

from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig

from harness.runner.group import run_group
from harness.runner.run_folder import RunFolder


# An absolute path: relative ones are resolved as Python packages when run as `python -m harness`.
CONF = str(Path(__file__).resolve().parents[1] / "conf")


@hydra.main(version_base="1.3", config_path=CONF, config_name="config")
def main(cfg: DictConfig) -> None:
    if cfg.get("group") is None:
        raise SystemExit("gptoss-bench runs sweeps (hydra.mode=MULTIRUN, its default); "
                         "a single point is `gptoss-bench sweep=none`")
    run_group(RunFolder(Path(cfg.results_dir) / cfg.run_id), cfg.group)


if __name__ == "__main__":
    main()
