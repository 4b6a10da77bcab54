"""Compare two folders of chapter records (``python -m icl run ... --out DIR``): the same numbers, or how far apart.

    python bench/compare_records.py BEFORE AFTER [--rtol 0]

For every chapter JSON in both folders, compares the config, every claim check (measured, expected, tolerance,
passed) and every key array, number by number, and prints one line per chapter: identical, or the largest
relative difference and where it is. Run statistics (times, versions, peak memory, the record's schema) are not
compared. Exit status 0 when every
number agrees within ``--rtol`` (default 0: bit for bit), 1 otherwise. A refactor that promises the same numbers is
checked by running every chapter at the same preset and seed on the commit before and the commit after.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

IGNORED = {
    "run",
    "versions",
    "elapsed_seconds",
    "parameters",
    "schema",
    "schema_version",
    "created",
    "source",
}  # not results


def leaves(value: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """Every scalar of a JSON value with its path (``arrays.loss[2][0]``); checks are keyed by name, not position."""
    if isinstance(value, dict):
        for key, item in value.items():
            if key not in IGNORED:  # at any depth: a result's own elapsed_seconds is a run statistic too
                yield from leaves(item, f"{path}.{key}" if path else key)
    elif isinstance(value, list):
        if path.endswith("claim_checks"):
            for check in value:
                yield from leaves({k: v for k, v in check.items() if k != "name"}, f"{path}[{check['name']}]")
        else:
            for index, item in enumerate(value):
                yield from leaves(item, f"{path}[{index}]")
    else:
        yield path, value


def difference(a: Any, b: Any) -> float:
    """0 for equal values, the relative difference of two numbers, inf for anything else that differs."""
    if a == b or (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b)):
        return 0.0
    numbers = (int, float)
    if isinstance(a, numbers) and isinstance(b, numbers) and not isinstance(a, bool) and not isinstance(b, bool):
        return abs(a - b) / max(abs(a), abs(b))
    return math.inf


def compare(before: dict[str, Any], after: dict[str, Any]) -> tuple[float, str, int]:
    """The largest relative difference, where it is, and how many values differ at all."""
    old, new = dict(leaves(before)), dict(leaves(after))
    worst, where, differing = 0.0, "", 0
    for path in sorted(old.keys() | new.keys()):
        gap = difference(old[path], new[path]) if path in old and path in new else math.inf
        differing += gap > 0
        if gap > worst:
            worst, where = gap, path
    return worst, where, differing


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    parser.add_argument("--rtol", type=float, default=0.0)
    args = parser.parse_args()
    names = sorted({p.name for p in args.before.glob("*.json")} | {p.name for p in args.after.glob("*.json")})
    agree = True
    for name in names:
        if not (args.before / name).exists() or not (args.after / name).exists():
            print(f"{name}: only in {'after' if (args.after / name).exists() else 'before'}")
            agree = False
            continue
        before, after = (json.loads((folder / name).read_text()) for folder in (args.before, args.after))
        worst, where, differing = compare(before, after)
        if worst == 0:
            print(f"{name}: identical")
        else:
            print(f"{name}: {differing} values differ, largest relative difference {worst:.3g} at {where}")
        agree &= worst <= args.rtol
    return 0 if agree else 1


if __name__ == "__main__":
    sys.exit(main())
