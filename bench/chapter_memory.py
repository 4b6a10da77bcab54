"""Peak memory and run time of every chapter at a preset, against Binder's memory.

Each chapter runs through ``python -m icl run`` (papermill, a fresh kernel per chapter) with an empty result
store, so its models are trained, not loaded. The chapter's record (``icl.record.write``) holds the peak
resident memory of its kernel (``getrusage``'s ``ru_maxrss``) and the seconds from its first import of ``icl``
to its claim checks; the script prints one JSON line per chapter and a summary line with the largest peak
against ``--limit-mib`` (Binder offers 1–2 GB; 2048 by default).

    python bench/chapter_memory.py                      # every chapter at quick, on the CPU
    python bench/chapter_memory.py --chapters 02_one_step_pgd 06_looped_transformers --preset quick
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from icl.chapters import CHAPTERS  # noqa: E402


def measure(slug: str, preset: str, device: str, scratch: Path) -> dict[str, object]:
    """Run one chapter in a fresh kernel with an empty store; its record's run statistics."""
    out, store = scratch / slug / "out", scratch / slug / "store"
    environment = {**os.environ, "ICL_STORE": str(store)}
    command = [sys.executable, "-m", "icl", "run", f"book/{slug}.md", "--preset", preset, "--device", device]
    start = time.perf_counter()
    process = subprocess.run([*command, "--out", str(out)], cwd=ROOT, env=environment, capture_output=True, text=True)
    wall = time.perf_counter() - start
    record_path = out / f"{slug}.json"
    if not record_path.is_file():
        raise RuntimeError(f"{slug} wrote no record (exit {process.returncode}):\n{process.stderr[-2000:]}")
    record = json.loads(record_path.read_text())
    return {
        "chapter": slug,
        "preset": preset,
        "device": device,
        "passed": record["passed"],
        "peak_memory_mib": round(record["run"]["peak_memory_mib"], 1),
        "chapter_seconds": record["run"]["seconds"],
        "wall_seconds_with_kernel": round(wall, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--chapters", nargs="*", default=list(CHAPTERS), help="chapter slugs (default: all)")
    parser.add_argument("--preset", default="quick")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--limit-mib", type=float, default=2048.0, help="the memory to compare with (Binder: 2048)")
    args = parser.parse_args()
    unknown = [c for c in args.chapters if c not in CHAPTERS]
    if unknown:
        parser.error(f"unknown chapters {unknown}; choose from {list(CHAPTERS)}")

    rows = []
    with tempfile.TemporaryDirectory(prefix="icl-bench-memory-") as scratch:
        for slug in args.chapters:
            rows.append(measure(slug, args.preset, args.device, Path(scratch)))
            print(json.dumps(rows[-1]), flush=True)
    peak = max(rows, key=lambda row: row["peak_memory_mib"])
    summary = {
        "largest_peak_mib": peak["peak_memory_mib"],
        "chapter": peak["chapter"],
        "limit_mib": args.limit_mib,
        "fraction_of_limit": round(peak["peak_memory_mib"] / args.limit_mib, 3),
        "all_passed": all(row["passed"] for row in rows),
        "machine": platform.platform(),
        "cpus": os.cpu_count(),
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
