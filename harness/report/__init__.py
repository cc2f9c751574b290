"""HTML reports of run folders: `write_report(run_dirs, out)`, or `gptoss-report RUN_DIR ... [-o FILE]`."""

from harness.report.page import write_report

__all__ = ["write_report"]
