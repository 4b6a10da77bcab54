"""The two pages that summarise the book: the intro's table of chapters and the status page.

Both are built from the records the chapters leave in ``$ICL_RECORD_DIR`` during a book build (``make book``
sets it to ``_build/records/``; see :func:`icl.record.write`), so every number on them was measured by the
build that shows it. A chapter with no record (a build without ``make book``, or a chapter that failed before
its claim checks) is listed as such, never with a number from elsewhere.
"""

from __future__ import annotations

import base64
import html
import json
import os
from importlib import metadata
from pathlib import Path
from typing import Any

from icl.chapters import CHAPTERS
from icl.record import RECORD_DIR_VARIABLE, versions

BUILD_PACKAGES = ("jupyter-book", "sphinx", "myst-nb", "sphinx-book-theme", "papermill", "jupytext", "seaborn")


def record_dir() -> Path | None:
    """``$ICL_RECORD_DIR`` as a path, or ``None`` when unset."""
    folder = os.environ.get(RECORD_DIR_VARIABLE)
    return Path(folder) if folder else None


def read_records(folder: Path | None) -> dict[str, dict[str, Any]]:
    """``{slug: record}`` for every chapter of :data:`icl.chapters.CHAPTERS` whose record is in ``folder``."""
    if folder is None:
        return {}
    records = {}
    for slug in CHAPTERS:
        path = Path(folder) / f"{slug}.json"
        if path.is_file():  # written atomically: a file that exists is complete
            records[slug] = json.loads(path.read_text())
    return records


def format_seconds(seconds: float) -> str:
    """``"37 s"`` below two minutes, else ``"4.2 min"``."""
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def _checks_cell(record: dict[str, Any]) -> str:
    checks = record["claim_checks"]
    failed = sum(not c["passed"] for c in checks)
    if record["passed"]:
        return f"{len(checks)} of {len(checks)} passed"
    return f"**FAIL** ({failed} of {len(checks)} failed)"


def chapter_table(folder: Path | None) -> str:
    """The intro's table as HTML: per chapter, its title (linked) and claim, the paper result, its figure as a
    thumbnail (embedded in the page, linked to the chapter) and its run time in this build. Links are relative
    to a page in ``book/``."""
    records = read_records(folder)
    preset = next((r["preset"] for r in records.values()), None)
    time_header = f"run time at <code>{html.escape(preset)}</code>" if preset else "run time"
    rows = []
    for slug, chapter in CHAPTERS.items():
        record = records.get(slug)
        link = f"{slug}.html"
        thumbnail = Path(folder) / f"{slug}.png" if folder is not None else None
        if thumbnail is not None and thumbnail.is_file():
            data = base64.b64encode(thumbnail.read_bytes()).decode()
            figure = (
                f'<a href="{link}"><img class="icl-thumbnail" width="240" src="data:image/png;base64,{data}" '
                f'alt="the main figure of {html.escape(chapter.title)}"></a>'
            )
        else:
            figure = "(no figure)" if record is not None else "—"
        run_time = format_seconds(record["run"]["seconds"]) if record is not None else "not recorded"
        rows.append(
            f'<tr><td><a href="{link}"><strong>{html.escape(chapter.title)}</strong></a>'
            f"<br><small>{html.escape(chapter.claim)}</small></td><td>{html.escape(chapter.paper)}</td>"
            f'<td style="width: 250px">{figure}</td><td>{run_time}</td></tr>'
        )
    head = f"<tr><th>chapter and claim</th><th>paper</th><th>figure</th><th>{time_header}</th></tr>"
    return f'<table class="table icl-chapters"><thead>{head}</thead><tbody>{"".join(rows)}</tbody></table>'


def status_table(folder: Path | None) -> str:
    """The status page's table as MyST Markdown: per chapter, its preset, device, claim checks, run time
    (seconds since ``icl`` was imported in its kernel) and peak resident memory."""
    records = read_records(folder)
    lines = [
        "| chapter | preset | device | claim checks | run time | peak memory |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for slug, chapter in CHAPTERS.items():
        record = records.get(slug)
        if record is None:
            lines.append(f"| [{chapter.title}]({slug}.md) | — | — | not recorded in this build | — | — |")
            continue
        memory = record["run"]["peak_memory_mib"]
        device = record["config"].get("device", "—")
        lines.append(
            f"| [{chapter.title}]({slug}.md) | `{record['preset']}` | {device} | {_checks_cell(record)} "
            f"| {format_seconds(record['run']['seconds'])} | {'—' if memory is None else f'{memory:.0f} MiB'} |"
        )
    return "\n".join(lines)


def versions_table() -> str:
    """The versions of Python, the library's packages and the book's build tools, as MyST Markdown."""
    found = versions()
    platform_name = found.pop("platform")
    for name in BUILD_PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    rows = [f"| {name} | {version} |" for name, version in found.items()]
    return "\n".join(["| package | version |", "| --- | --- |", *rows, f"| platform | {platform_name} |"])
