"""A sweep file's points as override lists, with Hydra's public override parser only (no torch, no runner: analysis/
expands sweep files with it too).

    expand_points(parser, common, grids, arguments) -> [[override, ...], ...]

Each grid is a Cartesian product, as Hydra's basic sweeper makes it: `key=a,b` gives one point per value, a plain
`key=v` joins every point, and a key given twice keeps its first place and its last value. A command-line argument
for a key that some grids sweep narrows those grids only (`tokenizer.bits=8 tokenizer.channels=2` on a sweep of an
FSQ grid over bits and an autoencoder grid over channels: one point each); any other argument joins every grid."""

from __future__ import annotations

import itertools
from typing import Sequence

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override

from bar import UserError


def expand_points(parser: OverridesParser, common: dict, grids: Sequence[dict],
                  arguments: Sequence[str]) -> list[list[str]]:
    """Override lists, one per point: for each grid, the product of (common params, grid params, command line);
    command-line arguments win over the file's values for the same key. Duplicate points are dropped."""
    points, seen = [], set()
    keys = [parser.parse_overrides([a])[0].get_key_element() for a in arguments]
    swept = {str(k) for grid in grids or [] for k in grid}
    for grid in grids or [{}]:
        merged = {**{str(k): v for k, v in (common or {}).items()}, **{str(k): v for k, v in grid.items()}}
        mine = [a for a, key in zip(arguments, keys) if key in merged or key not in swept]
        overrides = [f"{k}={v}" for k, v in merged.items()] + mine
        for point in cartesian_product(parser.parse_overrides(overrides)):
            key = tuple(sorted(point))
            if key not in seen:
                seen.add(key)
                points.append(point)
    return points


def cartesian_product(overrides: Sequence[Override]) -> list[list[str]]:
    """Every combination of the overrides' values (a discrete sweep `key=a,b` or `key=range(...)` contributes each
    value; any other override its one value), in the order the keys first appear."""
    choices: dict[str, list[str]] = {}
    for override in overrides:
        key = override.get_key_element()
        if not override.is_sweep_override():
            choices[key] = [f"{key}={override.get_value_element_as_str()}"]
        elif override.is_discrete_sweep():
            choices[key] = [f"{key}={value}" for value in override.sweep_string_iterator()]
        else:
            raise UserError(f"{override.input_line}: a sweep takes lists of values (a,b or range(...)), not "
                            "intervals")
    return [list(point) for point in itertools.product(*choices.values())]
