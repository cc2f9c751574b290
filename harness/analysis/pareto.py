"""The Pareto front of throughput against interactivity: what procurement interpolates and the
report draws."""

from __future__ import annotations

import numpy as np
import pandas as pd


def pareto_front(df: pd.DataFrame, x: str, y: str) -> pd.DataFrame:
    """Rows no other row beats on both x and y (both maximised), sorted by x."""
    s = df.sort_values([x, y], ascending=False)
    best_before = s[y].astype(float).cummax().shift(fill_value=-np.inf)
    return s[s[y] > best_before].sort_values(x)
