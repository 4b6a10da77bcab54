"""The built site in a real browser: every page loads with its title and body, every image loads, every figure
has a caption numbered within its chapter ("Fig. 5.2"), math is rendered (no raw TeX), no error output or failed
claim check is shown, every internal link and anchor resolves, the launch and edit buttons point at the page's own
file on branch main, each chapter offers its numbers as a download, and the console shows no error outside a short
allow-list.

It needs a built site (``make book``; ``$ICL_SITE`` points elsewhere) and Debian's Chromium at
``/usr/bin/chromium`` (``$ICL_CHROMIUM``), driven by Playwright; a browser is never downloaded. Without
either, the tests are skipped, unless ``$ICL_SITE_TEST=required`` (``.ci/run`` sets it), where that fails.
Requests that leave the machine are blocked, so the result is the same online and offline. A full-page
screenshot of every page goes to ``_build/screenshots/``.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest

ROOT = Path(__file__).resolve().parents[1]
SITE = Path(os.environ.get("ICL_SITE", ROOT / "_build" / "html"))
SCREENSHOTS = SITE.parent / "screenshots"
CHROMIUM = os.environ.get("ICL_CHROMIUM", "/usr/bin/chromium")
REQUIRED = os.environ.get("ICL_SITE_TEST") == "required"
BROWSER_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]
SKIPPED_FOLDERS = {"_static", "_sources", "_images", "_downloads", "jupyter_execute", "reports"}  # not pages

# Console errors that are not the site's fault: the theme reads a stored mode that a file:// page cannot keep.
CONSOLE_ALLOWED = ("Got invalid theme mode",)
# Text that must never be on a page: a traceback, a failed claim check's exception or a failed chapter on the status
# page (a failed check's verdict in its table is found by its class, icl-fail).
ERROR_TEXT = re.compile(r"Traceback \(most recent call last\)|ClaimCheckFailed|FAIL \(\d+ of \d+ failed\)")
# The least white space, in CSS pixels, between the text of two neighbouring table cells: below it, numbers read
# as one ("2.381 | 0.5639.438").
CELL_GAP = 6
# TeX that MathJax would have replaced: delimiters, a control word or a braced super- or subscript outside code.
RAW_TEX = re.compile(
    r"\\\(|\\\)|\\\[|\\\]|\$\$|\\(?:frac|begin|end|mathbb|mathrm|operatorname|sum|top|langle|tfrac)\b|[\^_]\{"
)

CHAPTER_PAGES = sorted(p.stem for p in (ROOT / "book").glob("[0-9][0-9]_*.md"))


def _site_pages() -> list[str]:
    if not SITE.is_dir():
        return []
    pages = [p.relative_to(SITE) for p in SITE.rglob("*.html")]
    return sorted(str(p) for p in pages if not (set(p.parts[:-1]) & SKIPPED_FOLDERS))


PAGES = _site_pages()


def _unavailable() -> str | None:
    if not PAGES:
        return f"no built site at {SITE} (run `make book`)"
    if not Path(CHROMIUM).exists():
        return f"no Chromium at {CHROMIUM} (apt-get install chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "Playwright is not installed (pip install -e '.[test]')"
    return None


UNAVAILABLE = _unavailable()
if UNAVAILABLE and REQUIRED:
    raise RuntimeError(f"ICL_SITE_TEST=required, but {UNAVAILABLE}")
pytestmark = pytest.mark.skipif(UNAVAILABLE is not None, reason=UNAVAILABLE or "")

# What the browser sees on a page, gathered by one script after the page (and MathJax) has finished.
SURVEY_JS = r"""
async (cellGap) => {
  const article = document.querySelector("article") || document.body;
  for (const img of document.images) img.loading = "eager";
  await Promise.all(Array.from(document.images).map(img => img.decode().catch(() => null)));
  if (window.MathJax && MathJax.startup && MathJax.startup.promise) await MathJax.startup.promise;
  const text = node => (node ? node.innerText : "").trim();
  const clone = article.cloneNode(true);
  clone.querySelectorAll("pre, code, mjx-container, script, style, .highlight").forEach(n => n.remove());
  return {
    title: document.title,
    heading: text(article.querySelector("h1")),
    bodyText: text(article).length,
    brokenImages: Array.from(document.images).filter(i => !i.complete || i.naturalWidth === 0).map(i => i.src),
    uncaptionedFigures: Array.from(article.querySelectorAll("figure"))
      .filter(f => !text(f.querySelector("figcaption"))).map(f => f.id || f.innerHTML.slice(0, 80)),
    looseImages: Array.from(article.querySelectorAll("img"))
      .filter(i => !i.closest("figure") && !i.closest("table")).map(i => i.src.slice(0, 120)),
    errorOutputs: Array.from(article.querySelectorAll(".output.stderr, .output.traceback, .output.error"))
      .map(n => text(n).slice(0, 200)),
    visibleText: text(article),
    proseText: clone.innerText,
    unrenderedMath: Array.from(article.querySelectorAll(".math"))
      .filter(n => !n.querySelector("mjx-container")).map(n => text(n).slice(0, 80)),
    mathCount: article.querySelectorAll("mjx-container").length,
    links: Array.from(document.querySelectorAll("a[href]")).map(a => a.href),
    downloads: Array.from(article.querySelectorAll(".icl-download a[download]"))
      .map(a => ({name: a.getAttribute("download"), href: a.href})),
    buttons: Array.from(document.querySelectorAll(".article-header-buttons a, .header-article-items a"))
      .map(a => a.href),
    thebe: document.querySelectorAll(".btn-launch-thebe").length,
    figureNumbers: Array.from(article.querySelectorAll("figcaption .caption-number")).map(n => text(n)),
    failedChecks: Array.from(article.querySelectorAll(".icl-fail")).map(n => text(n.closest("tr") || n).slice(0, 120)),
    // Neighbouring cells in a row whose text is closer than cellGap px.
    crowdedCells: Array.from(article.querySelectorAll("tr")).flatMap(row => {
      const cells = Array.from(row.cells), found = [];
      const extent = cell => {
        const range = document.createRange();
        range.selectNodeContents(cell);
        return range.getBoundingClientRect();
      };
      for (let i = 0; i + 1 < cells.length; i++) {
        const [a, b] = [extent(cells[i]), extent(cells[i + 1])];
        if (a.width && b.width && b.left - a.right < cellGap)
          found.push(`${text(cells[i]).slice(0, 30)} | ${text(cells[i + 1]).slice(0, 30)}`
            + ` (${Math.round(b.left - a.right)} px)`);
      }
      return found;
    }),
    // Code, a table or an equation the reader sees only by scrolling sideways (folded cells are not visible).
    scrolledSideways: Array.from(article.querySelectorAll(
      "pre, table, .cell_output, .output, .pst-scrollable-table-container, mjx-container"))
      .filter(n => n.checkVisibility() && n.scrollWidth > n.clientWidth + 1
        && ["auto", "scroll"].includes(getComputedStyle(n).overflowX))
      .map(n => `${n.tagName.toLowerCase()} +${n.scrollWidth - n.clientWidth} px: `
        + n.innerText.split("\n").reduce((a, b) => (b.length > a.length ? b : a), "").slice(0, 100)),
  };
}
"""


@dataclass
class Visit:
    """One page as the browser saw it."""

    survey: dict[str, Any]
    console_errors: list[str] = field(default_factory=list)
    failed_local_requests: list[str] = field(default_factory=list)


def _visit(context: Any, site: Path, name: str, screenshots: Path) -> Visit:
    """Load one page in ``context`` (a Playwright browser context), survey it and save a full-page screenshot."""
    page = context.new_page()
    visit = Visit(survey={})

    def on_console(message: Any) -> None:
        if message.type == "error" and not message.location.get("url", "").startswith("http"):
            visit.console_errors.append(message.text)

    page.on("console", on_console)
    page.on("pageerror", lambda error: visit.console_errors.append(f"uncaught: {error}"))
    page.on(
        "requestfailed",
        lambda request: visit.failed_local_requests.append(request.url) if request.url.startswith("file:") else None,
    )
    start = (site / name).as_uri()
    page.goto(start, wait_until="load")
    if 'http-equiv="refresh"' in (site / name).read_text().lower():  # index.html redirects to the intro
        page.wait_for_url(lambda url: url != start)
        page.wait_for_load_state("load")
    visit.survey = page.evaluate(SURVEY_JS, CELL_GAP)
    page.screenshot(path=str(screenshots / (name.replace("/", "__").removesuffix(".html") + ".png")), full_page=True)
    page.close()
    return visit


def _browse(site: Path, names: list[str], screenshots: Path) -> dict[str, Visit]:
    """Visit ``names`` (paths under ``site``) in Chromium with every request off the machine blocked."""
    from playwright.sync_api import sync_playwright

    shutil.rmtree(screenshots, ignore_errors=True)
    screenshots.mkdir(parents=True)
    with sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        context.route(re.compile(r"^(https?|wss?)://"), lambda route: route.abort())
        visits = {name: _visit(context, site, name, screenshots) for name in names}
        browser.close()
    return visits


@pytest.fixture(scope="module")
def visits() -> dict[str, Visit]:
    """Every page of the built site, loaded once."""
    return _browse(SITE, PAGES, SCREENSHOTS)


def _problems(name: str, visit: Visit) -> list[str]:
    """Everything wrong with one visited page, one line each."""
    survey = visit.survey
    problems = []
    if not survey["title"].strip():
        problems.append("no <title>")
    if name.startswith("book/"):  # the site's own pages (not index.html's redirect, genindex or search)
        if not survey["heading"]:
            problems.append("no h1 title")
        if survey["bodyText"] < 200:
            problems.append(f"an almost empty body ({survey['bodyText']} characters)")
    problems += [f"image did not load: {src}" for src in survey["brokenImages"]]
    problems += [f"figure without a caption: {f}" for f in survey["uncaptionedFigures"]]
    problems += [f"image outside a captioned figure: {src}" for src in survey["looseImages"]]
    problems += [f"error output: {text}" for text in survey["errorOutputs"]]
    problems += [f"error text on the page: {m.group(0)!r}" for m in ERROR_TEXT.finditer(survey["visibleText"])]
    problems += [f"math not rendered: {text}" for text in survey["unrenderedMath"]]
    problems += [f"failed claim check: {row}" for row in survey["failedChecks"]]
    problems += [f"table cells run together: {pair}" for pair in survey["crowdedCells"]]
    problems += [f"scrolls sideways: {what}" for what in survey["scrolledSideways"]]
    prose = survey["proseText"]
    problems += [
        f"raw TeX in the text: {m.group(0)!r} in {prose[max(m.start() - 30, 0) : m.end() + 30]!r}"
        for m in RAW_TEX.finditer(prose)
    ]
    chapter = re.match(r"book/(\d\d)_", name)
    if chapter:  # figures are numbered within their chapter: "Fig. 5.2" on chapter 05's page
        expected = re.compile(rf"Fig\. {int(chapter.group(1))}\.\d+\b")
        problems += [
            f"figure number without its chapter's: {n!r}" for n in survey["figureNumbers"] if not expected.match(n)
        ]
    allowed = [e for e in visit.console_errors if not any(a in e for a in CONSOLE_ALLOWED)]
    problems += [f"console error: {e}" for e in allowed]
    problems += [f"local file failed to load: {url}" for url in visit.failed_local_requests]
    return problems


@pytest.mark.parametrize("name", PAGES)
def test_page_renders_without_errors(name: str, visits: dict[str, Visit]) -> None:
    problems = _problems(name, visits[name])
    assert not problems, f"{name}:\n  " + "\n  ".join(problems)


def test_every_chapter_was_built_with_figures_and_math(visits: dict[str, Visit]) -> None:
    """The pages the test visits include every chapter, each with figures, and the math renders somewhere."""
    built = {Path(n).stem for n in visits if n.startswith("book/")}
    assert set(CHAPTER_PAGES) <= built, f"chapters missing from the site: {set(CHAPTER_PAGES) - built}"
    for stem in CHAPTER_PAGES[1:]:  # chapter 01 is notation; every later chapter draws figures
        survey = visits[f"book/{stem}.html"].survey
        assert "<figure" in (SITE / "book" / f"{stem}.html").read_text(), f"{stem}: no figure"
        assert not survey["brokenImages"]
    # MathJax ran: the intro's formulas were typeset (the per-page test finds any math left untypeset).
    assert visits["book/intro.html"].survey["mathCount"] >= 3


class _Anchors(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.anchors: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for key, value in attrs:
            if key in ("id", "name") and value:
                self.anchors.add(value)


def _anchors(path: Path, cache: dict[Path, set[str]]) -> set[str]:
    if path not in cache:
        parser = _Anchors()
        parser.feed(path.read_text(errors="replace"))
        cache[path] = parser.anchors
    return cache[path]


def _broken_links(visits: dict[str, Visit]) -> set[str]:
    cache: dict[Path, set[str]] = {}
    broken = set()
    for name, visit in visits.items():
        for link in visit.survey["links"]:
            parts = urlsplit(link)
            if parts.scheme != "file":
                continue
            target = Path(unquote(parts.path))
            if target.is_dir():
                target = target / "index.html"
            if not target.is_file():
                broken.add(f"{name} -> {link} (no such file)")
            elif parts.fragment and target.suffix == ".html" and unquote(parts.fragment) not in _anchors(target, cache):
                broken.add(f"{name} -> {link} (no such anchor)")
    return broken


def test_internal_links_and_anchors_resolve(visits: dict[str, Visit]) -> None:
    broken = _broken_links(visits)
    assert not broken, "broken internal links:\n  " + "\n  ".join(sorted(broken))


DOCTORED = {  # what is done to a copy of a chapter page -> the words its problem line must contain
    "traceback": (
        "</article>",
        '<div class="output traceback"><pre>Traceback (most recent call last):\n'
        "ClaimCheckFailed: 1 of 9 claim checks failed</pre></div></article>",
    ),
    "figure": ("</article>", "<figure><p>a figure with no caption</p></figure></article>"),
    "tex": ("</article>", "<p>left as $$x^2$$ by a broken math extension</p></article>"),
    "links": ("</article>", '<a href="no-such-page.html">x</a><a href="#no-such-anchor">y</a></article>'),
    "console": ("</body>", "<script>console.error('boom')</script></body>"),
    "table": ("</article>", "<table><tr><td>0.563</td><td>9.438</td></tr></table></article>"),
    "wide code": ("</article>", f"<div class='highlight'><pre>{'x = 1; ' * 40}</pre></div></article>"),
    "failed check": (
        "</article>",
        "<table><tr><td>a check</td><td><span class='icl-fail'>FAIL</span></td></tr></table></article>",
    ),
    "failed chapter": ("</article>", "<p>a chapter: <strong>FAIL</strong> (1 of 2 failed)</p></article>"),
}


def test_the_checks_catch_a_doctored_page(tmp_path: Path) -> None:
    """Each check can fail: a copy of a chapter page with one of each defect, and MathJax and an image missing."""
    name = "book/02_one_step_pgd.html"
    site = tmp_path / "html"
    shutil.copytree(SITE, site, ignore=shutil.ignore_patterns("_sources", "jupyter_execute", "reports"))
    text = (site / name).read_text()
    for target, replacement in DOCTORED.values():
        assert target in text
        text = text.replace(target, replacement, 1)
    mathjax = re.search(r'src="([^"]*tex-mml-chtml\.js[^"]*)"', text)
    image = re.search(r'<img[^>]*src="(\.\./_images/[^"]+)"', text)
    assert mathjax and image and 'class="math' in text, "the page to doctor has no math or image"
    text = text.replace(mathjax.group(1), "../_static/mathjax/missing.js").replace(image.group(1), "missing.png")
    (site / name).write_text(text)

    visits = _browse(site, [name], tmp_path / "screenshots")
    found = "\n".join(_problems(name, visits[name]) + sorted(_broken_links(visits)))
    for words in [
        "error output: Traceback",
        "error text on the page: 'ClaimCheckFailed'",
        "figure without a caption",
        "raw TeX in the text: '$$'",
        "math not rendered",
        "image did not load",
        "local file failed to load",
        "console error: boom",
        "table cells run together: 0.563 | 9.438",
        "scrolls sideways: pre",
        "failed claim check: a check",
        "error text on the page: 'FAIL (1 of 2 failed)'",
        "no-such-page.html (no such file)",
        "#no-such-anchor (no such anchor)",
    ]:
        assert words in found, f"the doctored page's {words!r} went unnoticed; found:\n{found}"


def _repository() -> str:
    match = re.search(r"^repository:\s*\n\s+url:\s*(\S+)", (ROOT / "_config.yml").read_text(), re.M)
    assert match, "_config.yml names no repository url"
    return match.group(1).rstrip("/")


@pytest.mark.parametrize("stem", CHAPTER_PAGES)
def test_chapter_launch_buttons_and_download(stem: str, visits: dict[str, Visit]) -> None:
    survey = visits[f"book/{stem}.html"].survey
    repository = _repository()
    owner_name = urlsplit(repository).path.strip("/")
    links = set(survey["links"]) | set(survey["buttons"])
    expected = {
        "Binder (JupyterLab, this chapter's file on main)": (
            f"https://mybinder.org/v2/gh/{owner_name}/main?urlpath=lab/tree/book/{stem}.md"
        ),
        "edit button": f"{repository}/edit/main/book/{stem}.md",
        "repository button": repository,
    }
    missing = [f"{what}: {url}" for what, url in expected.items() if url not in links]
    assert not missing, f"{stem}: missing links\n  " + "\n  ".join(missing)
    assert any(link.startswith(f"{repository}/issues/new") for link in links), f"{stem}: no issue button"
    assert survey["thebe"] >= 1, f"{stem}: no Live Code (Thebe) button"

    assert len(survey["downloads"]) == 1, f"{stem}: expected one download link of the chapter's numbers"
    download = survey["downloads"][0]
    assert download["name"] == f"{stem}.json"
    prefix = "data:application/json;base64,"
    assert download["href"].startswith(prefix)
    record = json.loads(base64.b64decode(download["href"][len(prefix) :]))
    assert record["chapter"] == stem and record["passed"] and record["claim_checks"]
