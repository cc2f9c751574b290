"""Imports go one way: backends import the harness, never the reverse."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_harness_never_imports_backends():
    bad = [f"{p.relative_to(ROOT)}: {m}" for p in sorted((ROOT / "harness").rglob("*.py"))
           for m in _imports(p) if m == "backends" or m.startswith("backends.")]
    assert not bad, "harness/ imports backends/:\n" + "\n".join(bad)

