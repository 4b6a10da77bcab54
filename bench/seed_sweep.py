"""Run chapters at one preset for several seeds and print every claim check's worst value and margin.

    python bench/seed_sweep.py 05_full_form_gd_plus_plus [MORE CHAPTERS | all] --seeds 0-4
                               [--preset quick] [--device cpu] [--out runs/seed-sweep] [--reuse]

Each (chapter, seed) runs as ``python -m icl run CHAPTER --preset P --seed S --out OUT/seed-S`` in its own process,
so a record is written only when the chapter reached its checks (a failed check still writes one; a crash does not).
Trained fits are cached in the store as usual, so a second sweep retrains nothing that the code has not changed.
``--reuse`` takes a record already in ``OUT/seed-S`` instead of rerunning that chapter (records carry no source hash:
use it only for records of the code you are measuring).

Per check, the table gives the measured value at each seed, the bar, and the smallest **margin** over the seeds:
the distance from the measured value to the bar as a fraction of the bar's scale, ``(bar − measured) / |bar|`` for
``≤``, ``(measured − bar) / |bar|`` for ``≥`` and ``(tolerance − |measured − expected|) / tolerance`` for ``±``
(a bar of 0 counts as scale 1). A negative margin is a failed check. Exit status 0 when every check passed at every
seed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

BOOK = Path(__file__).resolve().parent.parent / "book"


def margin(check: dict[str, Any]) -> float:
    """A claim check record's margin (see the module's docstring): > 0 passed with room, < 0 failed."""
    measured, expected, relation = check["measured"], check["expected"], check["relation"]
    if relation == "close":
        return (check["tolerance"] - abs(measured - expected)) / check["tolerance"]
    scale = abs(expected) or 1.0
    return (expected - measured) / scale if relation == "at_most" else (measured - expected) / scale


def parse_seeds(text: str) -> list[int]:
    """``"0-4"`` → [0, 1, 2, 3, 4]; ``"1,3"`` → [1, 3]."""
    seeds: list[int] = []
    for part in text.split(","):
        first, _, last = part.partition("-")
        try:
            low, high = int(first), int(last or first)
        except ValueError:
            raise SystemExit(f"--seeds expects e.g. 0-4 or 1,3, got {text!r}") from None
        if low < 0 or high < low:
            raise SystemExit(f"--seeds expects non-negative ranges low-high, got {text!r}")
        seeds.extend(range(low, high + 1))
    return sorted(set(seeds))


def chapter_names(names: list[str]) -> list[str]:
    """The chapters' bare names; ``all`` means every chapter of the book."""
    every = sorted(p.stem for p in BOOK.glob("[0-9][0-9]_*.md"))
    if names == ["all"]:
        return every
    unknown = [n for n in names if n not in every]
    if unknown:
        raise SystemExit(f"unknown chapter(s) {unknown}; choose from {every} or 'all'")
    return names


def run_one(chapter: str, seed: int, args: argparse.Namespace) -> dict[str, Any] | None:
    """The chapter's record at ``seed`` (run now, or reused), or None when the run crashed before its checks."""
    out = Path(args.out) / f"seed-{seed}"
    path = out / f"{chapter}.json"
    if args.reuse and path.exists():
        print(f"{chapter} seed {seed}: reused {path}", flush=True)
        return json.loads(path.read_text())
    path.unlink(missing_ok=True)  # a stale record must not stand in for a crashed run
    command = [sys.executable, "-m", "icl", "run", chapter, "--preset", args.preset, "--device", args.device]
    command += ["--seed", str(seed), "--out", str(out)]
    began = time.perf_counter()
    status = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=os.environ)
    seconds = time.perf_counter() - began
    if not path.exists():
        print(f"{chapter} seed {seed}: crashed after {seconds:.0f} s\n{status.stderr[-2000:]}", flush=True)
        return None
    record = json.loads(path.read_text())
    verdict = "all checks pass" if record["passed"] else "a check FAILED"
    print(f"{chapter} seed {seed}: {verdict} ({seconds:.0f} s)", flush=True)
    return record


def check_key(name: str) -> str:
    """A check's name without the standard error some names quote (it differs from seed to seed)."""
    return re.sub(r"\s*\([^()]*s\.e\.[^()]*\)", "", name)


def table(chapter: str, records: dict[int, dict[str, Any]]) -> tuple[str, bool]:
    """One chapter's checks over the seeds as text, and whether every check passed at every seed."""
    seeds = sorted(records)
    for record in records.values():
        for check in record["claim_checks"]:
            check["name"] = check_key(check["name"])
    names = list(dict.fromkeys(c["name"] for r in records.values() for c in r["claim_checks"]))
    lines = [f"\n## {chapter} (seeds {', '.join(map(str, seeds))})", ""]
    header = " | ".join(f"seed {s}" for s in seeds)
    lines += [f"| check | {header} | bar | smallest margin |", "|---" * (len(seeds) + 3) + "|"]
    ok = True
    for name in names:
        by_seed = {s: next((c for c in records[s]["claim_checks"] if c["name"] == name), None) for s in seeds}
        present = [c for c in by_seed.values() if c is not None]
        cells = [f"{c['measured']:.4g}" if c else "—" for c in by_seed.values()]
        first = present[0]
        sign = {"at_most": "≤", "at_least": "≥", "close": ""}[first["relation"]]
        bar = f"{first['expected']:.4g} ± {first['tolerance']:.2g}" if sign == "" else f"{sign} {first['expected']:.4g}"
        worst = min(margin(c) for c in present)
        ok &= all(c["passed"] for c in present) and len(present) == len(seeds)
        flag = "" if worst >= 0 else " FAIL"
        lines.append(f"| {name} | {' | '.join(cells)} | {bar} | {worst:+.3f}{flag} |")
    return "\n".join(lines), ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("chapters", nargs="+", help="bare chapter names (05_full_form_gd_plus_plus) or 'all'")
    parser.add_argument("--seeds", default="0-4", help="e.g. 0-4 (default) or 1,3")
    parser.add_argument("--preset", default="quick")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default="runs/seed-sweep", help="records go to OUT/seed-S/ (default runs/seed-sweep)")
    parser.add_argument("--reuse", action="store_true", help="take records already in OUT instead of rerunning")
    args = parser.parse_args(argv)
    chapters, seeds = chapter_names(args.chapters), parse_seeds(args.seeds)
    everything_passed = True
    for chapter in chapters:
        records = {s: r for s in seeds if (r := run_one(chapter, s, args)) is not None}
        if len(records) < len(seeds):
            everything_passed = False
        if records:
            text, ok = table(chapter, records)
            everything_passed &= ok
            print(text, flush=True)
    print("\n# every check passed at every seed" if everything_passed else "\n# NOT every check passed at every seed")
    return 0 if everything_passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
