"""How a value is written in captions, tables and REPORT.md."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from bar.core.vocabulary import HEAD_LABEL, HEAD_SHORT_LABEL


def fmt(value, decimals: int | None = None) -> str:
    """'n/a' for a missing value; a float with `decimals` places, else 3 significant digits; anything else as str."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, (float, np.floating)):
        return f"{value:.{decimals}f}" if decimals is not None else f"{value:.3g}"
    return str(value)


def head_label(head, short: bool = False) -> str:
    """A head's label (`HEAD_LABEL`; `short`: as tables write it, `HEAD_SHORT_LABEL`): the name itself for a head
    without a label, '?' for a missing one."""
    if head is None or (not isinstance(head, str) and pd.isna(head)):
        return "?"
    return (HEAD_SHORT_LABEL if short else HEAD_LABEL).get(head, str(head))
