"""The chapter records, and the intro and status pages built from them (icl.chapters, icl.site, book/_ext)."""

from __future__ import annotations

import base64
import importlib.util
import json
import re
from pathlib import Path
from types import SimpleNamespace
from typing import NamedTuple

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from icl import chapters, record, site  # noqa: E402
from icl.checks import ClaimChecks  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _checks(*, fail: bool = False) -> ClaimChecks:
    checks = ClaimChecks()
    checks.at_most("error", 0.01, 0.05, reason="budget")
    checks.at_least("margin", 1.0 if fail else 9.0, 5.0, reason="tells the answers apart")
    return checks


def _write_record(folder: Path, slug: str, *, fail: bool = False, monkeypatch: pytest.MonkeyPatch) -> dict:
    monkeypatch.setenv(record.RECORD_DIR_VARIABLE, str(folder))
    return record.write(slug, preset="quick", config={"device": "cpu"}, checks=_checks(fail=fail), arrays={})


def test_record_holds_preset_and_run_statistics(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ICL_PRESET", "paper")
    content = _write_record(tmp_path, "02_one_step_pgd", monkeypatch=monkeypatch)
    assert content["preset"] == "quick"  # the chapter's own value wins over $ICL_PRESET
    assert content["run"]["seconds"] > 0 and content["run"]["peak_memory_mib"] > 10
    assert content["run"]["versions"]["torch"]
    assert json.loads((tmp_path / "02_one_step_pgd.json").read_text()) == content
    assert content["schema_version"] == record.SCHEMA_VERSION and "elapsed_seconds" not in content
    assert "versions" not in content and content["run"]["device"] == {"type": "cpu"}
    assert content["source"]["commit"] == "unknown" or re.fullmatch(r"[0-9a-f]{40}", content["source"]["commit"])
    record.validate(content)
    monkeypatch.delenv(record.RECORD_DIR_VARIABLE)
    with pytest.raises(ValueError, match="preset must be one of"):  # the chapter resolves its preset, once
        record.write("x", preset=None, config={}, checks=_checks(), arrays={})


def test_download_link_embeds_the_record() -> None:
    content = record.write("02_one_step_pgd", preset="quick", config={}, checks=_checks(), arrays={"a": [1.5]})
    markup = record.download_link(content)._repr_html_()
    href = re.search(r'href="data:application/json;base64,([^"]+)"', markup)
    assert href and 'download="02_one_step_pgd.json"' in markup
    assert json.loads(base64.b64decode(href.group(1))) == json.loads(json.dumps(content))


def test_thumbnail_written_only_in_a_recorded_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    figure, ax = plt.subplots(figsize=(6.0, 3.0))
    ax.plot([0, 1], [1, 0])
    monkeypatch.delenv(record.RECORD_DIR_VARIABLE, raising=False)
    record.save_thumbnail("02_one_step_pgd", figure)
    assert not list(tmp_path.iterdir())
    monkeypatch.setenv(record.RECORD_DIR_VARIABLE, str(tmp_path))
    record.save_thumbnail("02_one_step_pgd", figure)
    data = (tmp_path / "02_one_step_pgd.png").read_bytes()
    assert data.startswith(b"\x89PNG")
    width = int.from_bytes(data[16:20], "big")
    assert 350 <= width <= 520  # 3.2 inches at 160 dpi (less the trimmed margins), whatever the figure size
    assert tuple(figure.get_size_inches()) == (6.0, 3.0)
    plt.close(figure)


def test_chapter_table_links_each_chapter_with_its_figure_and_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _write_record(tmp_path, "02_one_step_pgd", monkeypatch=monkeypatch)
    (tmp_path / "02_one_step_pgd.png").write_bytes(b"\x89PNG fake")
    table = site.chapter_table(tmp_path)
    assert "run time at <code>quick</code>" in table
    rows = table.split("<tr>")[2:]  # after the header
    assert len(rows) == len(chapters.CHAPTERS)
    row = next(r for r in rows if 'href="02_one_step_pgd.html"' in r)
    assert base64.b64encode(b"\x89PNG fake").decode() in row and re.search(r"<td>[0-9.]+ (s|min)</td>", row)
    missing = next(r for r in rows if 'href="03_multi_step_pgd.html"' in r)
    assert "not recorded" in missing and "<img" not in missing
    assert site.chapter_table(None).count("not recorded") == len(chapters.CHAPTERS)


def test_status_table_marks_a_failed_chapter(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write_record(tmp_path, "02_one_step_pgd", monkeypatch=monkeypatch)
    _write_record(tmp_path, "03_multi_step_pgd", fail=True, monkeypatch=monkeypatch)
    table = site.status_table(tmp_path)
    row = next(line for line in table.splitlines() if "(02_one_step_pgd.md)" in line)
    assert "2 of 2 passed" in row and "MiB" in row and "| cpu |" in row
    assert "**FAIL** (1 of 2 failed)" in table  # the text the browser test refuses on a page
    assert "not recorded in this build" in table  # the chapters without a record


def test_format_seconds_and_versions() -> None:
    assert site.format_seconds(37.4) == "37 s" and site.format_seconds(252.0) == "4.2 min"
    versions = site.versions_table()
    assert "| python |" in versions and "| jupyter-book |" in versions and "| platform |" in versions


def _extension() -> object:
    spec = importlib.util.spec_from_file_location("icl_site", ROOT / "book" / "_ext" / "icl_site.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_extension_includes_each_script_once() -> None:
    from sphinx.builders.html._assets import _JavaScript

    extension = _extension()
    body = 'const THEBE_JS_URL = "x"'
    scripts = [_JavaScript(None, body=body), _JavaScript("a.js"), _JavaScript("", body=body), _JavaScript("a.js")]
    context = {"script_files": scripts}
    extension._drop_duplicate_scripts(None, "page", "page.html", context, None)
    assert [str(s.filename) for s in context["script_files"]] == ["None", "a.js"]


def test_extension_uses_local_mathjax_only_when_present(tmp_path: Path) -> None:
    extension = _extension()
    app = SimpleNamespace(srcdir=str(tmp_path))
    config = SimpleNamespace(mathjax_path="https://cdn/mathjax.js", html_static_path=[])
    extension._use_local_mathjax(app, config)
    assert config.mathjax_path == "https://cdn/mathjax.js" and config.html_static_path == []
    local = tmp_path / extension.LOCAL_MATHJAX
    local.parent.mkdir(parents=True)
    local.write_text("// MathJax")
    extension._use_local_mathjax(app, config)
    assert config.mathjax_path == "mathjax/tex-mml-chtml.js"
    assert config.html_static_path == [str(tmp_path / "book" / "_static")]


class _Result(NamedTuple):
    """A result class as the experiments write them: each field's comment gives its axes and meaning."""

    losses: torch.Tensor  # (S, T) training MSE per seed and step
    optimum: float  # the closed form
    note: str


def test_array_axes_come_from_the_result_fields_comments() -> None:
    assert record.field_descriptions(_Result) == {
        "losses": "(S, T) training MSE per seed and step",
        "optimum": "the closed form",
    }
    arrays = {"losses": torch.zeros(3, 4), "optimum": 0.5, "ragged": [[1.0], [2.0, 3.0]]}
    assert record.array_axes(arrays, record.field_descriptions(_Result)) == {
        "losses": {"shape": [3, 4], "axes": ["S", "T"], "about": "training MSE per seed and step"},
        "optimum": {"shape": [], "axes": [], "about": "the closed form"},
        "ragged": {"shape": None, "axes": [], "about": ""},
    }


def test_validate_names_what_departs_from_the_schema() -> None:
    content = json.loads(
        json.dumps(
            record.write(
                "02_one_step_pgd",
                preset="quick",
                config={},
                checks=_checks(),
                arrays={"losses": torch.zeros(3, 4)},
                described_by=_Result,
            )
        )
    )
    record.validate(content)
    broken = [
        ({"schema_version": 2}, "schema_version should be 3"),
        ({"created": "yesterday"}, "created should be an ISO 8601 time"),
        ({"source": {"commit": "unknown", "hash": "abc"}}, "source.hash should be a SHA-256"),
        ({"passed": "yes"}, "passed should be bool"),
        ({"array_axes": {}}, "array_axes should describe exactly the arrays"),
        ({"arrays": {"losses": [[0.0] * 4] * 2}}, "its values have shape [2, 4]"),
        ({"array_axes": {"losses": {"shape": [3, 4], "axes": ["S"]}}}, "should name each of its 2 axes"),
        ({"claim_checks": [{"name": "x"}]}, "claim_checks[0] has no 'measured'"),
    ]
    for change, message in broken:
        with pytest.raises(ValueError, match=re.escape(message)):
            record.validate({**content, **change})
