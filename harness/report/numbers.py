"""How the report writes a number, so the points table and the findings' sentences agree."""

from __future__ import annotations

import math


def number(value: float) -> str:
    """Three significant digits, never an exponent: 0.0412, 7.97, 1,234."""
    decimals = max(0, 2 - math.floor(math.log10(abs(value)))) if value else 0
    return f"{value:,.{decimals}f}"


def percent(share: float) -> str:
    return f"{share:.1%}"


def ratio(value: float) -> str:
    return f"{value:.2f}×"


def integer(value: int) -> str:
    return f"{int(value):,}"
