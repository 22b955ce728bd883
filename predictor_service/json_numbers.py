"""Figures written as JSON that every parser reads: a NaN or infinity becomes null.

Python's json writes bare `NaN` / `Infinity`, which are not JSON (JavaScript's JSON.parse, jq and most
other readers refuse the file). An undefined figure is common in reports on small data: the AUROC of a
model whose labels are all 0, the gap recovered of a one-model pool.
"""

from __future__ import annotations

import math


def finite_json(value):
    """`value` with every non-finite float, at any depth of dicts, lists and tuples, replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_json(v) for v in value]
    return value
