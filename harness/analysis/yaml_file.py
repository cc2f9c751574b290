"""A user's yaml file (prices, thresholds) read with one line for what is wrong: a file that cannot
be read or is not yaml names the file (and the line); the caller's exception class carries it."""

from __future__ import annotations

from pathlib import Path

import yaml


def read_yaml(path: Path, error: type[Exception]):
    try:
        return yaml.safe_load(Path(path).read_text())
    except OSError as e:
        raise error(f"{path}: cannot read ({e.strerror})") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark else ""
        raise error(f"{path}:{line} not valid yaml ({getattr(e, 'problem', None) or e})") from None
