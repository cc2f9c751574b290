"""The gptoss-bench sweeper (hydra/sweeper=gptoss): one run folder per sweep, one job per worker
group. Hydra finds plugins only under hydra_plugins; the work is done in harness.runner.sweeper."""

from __future__ import annotations

from typing import Any

from hydra.plugins.sweeper import Sweeper


class GptossSweeper(Sweeper):
    def __init__(self, params: dict | None = None):
        self.params = dict(params or {})

    def setup(self, *, hydra_context, task_function, config) -> None:
        self.hydra_context, self.task_function, self.config = hydra_context, task_function, config

    def sweep(self, arguments: list[str]) -> Any:
        from harness.runner.sweeper import sweep
        return sweep(self, arguments)
