"""Does every locked package have a wheel for each Python that pyproject.toml admits? (run by .ci/run)

`make test` runs everything on one Python (3.11, CI's). For every other minor version that ``requires-python``
admits, this resolves constraints.txt for CPython on x86-64 Linux with ``pip install --dry-run`` (metadata only,
nothing installed) and fails if any locked version has no wheel there. torch is left out: its wheels are 500 MB
each, and PyPI lists torch 2.13.0 for CPython 3.10 to 3.14. A resolution, not a run: the README says so.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PLATFORMS = [f"manylinux_2_{minor}_x86_64" for minor in (5, 12, 17, 24, 27, 28, 31, 34)] + [
    "manylinux1_x86_64",
    "manylinux2010_x86_64",
    "manylinux2014_x86_64",
]


def admitted_minors(requires_python: str, tested: int) -> list[int]:
    """The minor versions of Python 3 that ``>=3.A,<3.B`` admits, but ``tested``."""
    low = int(re.search(r">=\s*3\.(\d+)", requires_python)[1])
    high = int(re.search(r"<\s*3\.(\d+)", requires_python)[1])
    return [minor for minor in range(low, high) if minor != tested]


def main() -> int:
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    lock = [line for line in (ROOT / "constraints.txt").read_text().splitlines() if line and not line.startswith("#")]
    with tempfile.TemporaryDirectory() as scratch:
        requirements = Path(scratch) / "requirements.txt"
        requirements.write_text("\n".join(line for line in lock if not line.startswith("torch==")))
        failed = []
        for minor in admitted_minors(requires, tested=sys.version_info.minor):
            command = [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--ignore-installed"]
            command += ["--only-binary=:all:", "--implementation", "cp", "--python-version", f"3.{minor}"]
            command += [arg for platform in PLATFORMS for arg in ("--platform", platform)]
            command += ["--target", str(Path(scratch) / f"3.{minor}"), "-r", str(requirements)]
            done = subprocess.run(command, capture_output=True, text=True)
            errors = [line for line in done.stderr.splitlines() if line.startswith("ERROR")]
            print(f"Python 3.{minor}: {'every locked package resolves' if done.returncode == 0 else errors[-1:]}")
            if done.returncode != 0:
                failed.append(minor)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
