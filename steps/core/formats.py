"""How numbers read in the documents people look at: evaluate's HTML report and register's model card show the same
measurements, so they format them by one set of rules."""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

NOT_MEASURED = "not measured"


def fmt(value: Any, digits: int = 3, missing: str = NOT_MEASURED) -> str:
    """A number as shown: None is `missing`, NaN "n/a", ints with thousands separators."""
    if value is None:
        return missing
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    return f"{value:,}" if isinstance(value, int) else "n/a" if math.isnan(value) else f"{value:.{digits}f}"


def pct(rate: Any) -> str:
    return NOT_MEASURED if rate is None else f"{float(rate):.1%}"


def signed_delta(value: Any, other: Any) -> str:
    """value - other, signed; empty when either is missing (a delta against nothing is not a number)."""
    numbers = isinstance(value, int | float) and isinstance(other, int | float)
    return f"{value - other:+.3f}" if numbers else ""


def pass_rates(groups: Mapping[str, Any] | None) -> dict[str, float | None]:
    """`{name: {cases, passed, pass_rate}}` (evaluate's behaviour section) or `{name: rate}` -> `{name: rate}`."""
    return {k: v.get("pass_rate") if isinstance(v, Mapping) else v for k, v in (groups or {}).items()}
