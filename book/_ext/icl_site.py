"""Sphinx extension for icl-book's site (registered in _config.yml under ``sphinx: local_extensions``).

- MathJax from a local copy when ``book/_static/mathjax/tex-mml-chtml.js`` exists (``make book`` fetches
  mathjax@3.2.2 from npm there), so that math renders offline and the browser test can see it; else the CDN.
- The intro and status pages summarise every chapter's record of this build, so they are re-read (and, with
  ``execution_mode: force`` in their front matter, re-executed) on every build, not only when their own text
  changes.
- Each script is included once per page: sphinx-thebe adds its configuration script twice under Sphinx 7.4 (once
  through the registry, once through the builder), and the second ``const THEBE_JS_URL`` throws in the browser.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

SUMMARY_PAGES = ("book/intro", "book/status")
LOCAL_MATHJAX = Path("book") / "_static" / "mathjax" / "tex-mml-chtml.js"


def _use_local_mathjax(app: Any, config: Any) -> None:
    if (Path(app.srcdir) / LOCAL_MATHJAX).is_file():
        config.mathjax_path = "mathjax/tex-mml-chtml.js"
        config.html_static_path = [*config.html_static_path, str(Path(app.srcdir) / LOCAL_MATHJAX.parents[1])]


def _summary_pages(app: Any, env: Any, added: set[str], changed: set[str], removed: set[str]) -> list[str]:
    return [page for page in SUMMARY_PAGES if page in env.found_docs]


def _drop_duplicate_scripts(app: Any, pagename: str, templatename: str, context: dict[str, Any], doctree: Any) -> None:
    seen, unique = set(), []
    for script in context.get("script_files", []):
        filename = getattr(script, "filename", script) or ""  # an inline script has None or "", by who added it
        key = (str(filename), repr(sorted(getattr(script, "attributes", {}).items())))
        if key not in seen:
            seen.add(key)
            unique.append(script)
    context["script_files"][:] = unique


def setup(app: Any) -> dict[str, Any]:
    app.connect("config-inited", _use_local_mathjax)
    app.connect("env-get-outdated", _summary_pages)
    # Early: a later handler may return a template name, which ends the event (Sphinx emits it with firstresult).
    app.connect("html-page-context", _drop_duplicate_scripts, priority=100)
    return {"parallel_read_safe": False, "parallel_write_safe": True}
