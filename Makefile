# The README's two commands: `make book` and `make test`. The first run of either creates .venv/.
PYTHON ?= python3
BIN := .venv/bin
export ICL_PRESET ?= quick

# The PyTorch build, chosen here and nowhere else: `cpu` (the default: PyTorch's CPU wheel, about 200 MB), a CUDA
# build from PyTorch's own index (`cu126`, `cu128`, ...: `make book TORCH=cu128`), or `pypi`: what PyPI serves for
# the pinned version (on Linux its CUDA build with several GB of CUDA libraries; on macOS and Windows the CPU build).
# Changing TORCH reinstalls torch alone. The version is constraints.txt's.
TORCH ?= cpu
TORCH_PIN := $(shell grep '^torch==' constraints.txt)
TORCH_INDEX := $(if $(filter pypi,$(TORCH)),,--index-url https://download.pytorch.org/whl/$(TORCH))
INSTALLED := .venv/.installed-torch-$(TORCH)

# Sphinx re-reads only edited pages and jupyter-cache keys on code cells alone, so a change in icl/ or
# of $ICL_PRESET would leave stale outputs: start from a clean _build then (the result store keeps it cheap).
CACHE_KEY := $(ICL_PRESET)-$(shell find icl -name '*.py' -print0 | sort -z | xargs -0 cat | sha256sum | cut -c1-16)

# MathJax served from the site itself (book/_ext/icl_site.py uses it when present), so that math renders
# offline and the browser test (tests/test_site.py) can check it. Without npm the site uses the CDN.
MATHJAX := book/_static/mathjax

.PHONY: book test clean lock

# Chapters write their records (claim checks, run time, peak memory, thumbnail) to _build/records/,
# which the intro and status pages read.
book: $(INSTALLED) $(MATHJAX)/tex-mml-chtml.js
	@if [ "$$(cat _build/.cache-key 2>/dev/null)" != "$(CACHE_KEY)" ]; then \
		rm -rf _build && mkdir _build && echo "$(CACHE_KEY)" > _build/.cache-key; fi
	ICL_RECORD_DIR=$(CURDIR)/_build/records $(BIN)/jupyter-book build -W --keep-going .

test: $(INSTALLED)
	$(BIN)/python -m pytest

# torch first, alone (--no-deps: its dependencies come from PyPI in the second step, at the lock's versions).
$(INSTALLED): pyproject.toml constraints.txt
	$(PYTHON) -m venv .venv
	$(BIN)/pip install --no-deps --force-reinstall $(TORCH_INDEX) '$(TORCH_PIN)'
	$(BIN)/pip install -c constraints.txt -e '.[book,test]'
	rm -f .venv/.installed-torch-* && touch $@

# Rewrite constraints.txt from a fresh environment (run after changing a pin in pyproject.toml; review the diff).
lock:
	rm -rf .venv-lock && $(PYTHON) -m venv .venv-lock
	.venv-lock/bin/pip install --no-deps $(TORCH_INDEX) '$(TORCH_PIN)'
	.venv-lock/bin/pip install -e '.[book,test]'
	{ sed -n '/^#/p' constraints.txt; .venv-lock/bin/pip freeze --exclude-editable | sed 's/^torch==\([^+]*\)+.*/torch==\1/'; } \
		> constraints.txt.new && mv constraints.txt.new constraints.txt && rm -rf .venv-lock

$(MATHJAX)/tex-mml-chtml.js:
	@if command -v npm >/dev/null 2>&1; then \
		tmp=$$(mktemp -d) && (cd $$tmp && npm pack --silent mathjax@3.2.2 >/dev/null && tar xzf mathjax-3.2.2.tgz) \
		&& mkdir -p $(MATHJAX)/output/chtml/fonts \
		&& cp -r $$tmp/package/es5/output/chtml/fonts/woff-v2 $(MATHJAX)/output/chtml/fonts/ \
		&& cp $$tmp/package/es5/tex-mml-chtml.js $(MATHJAX)/ && rm -rf $$tmp; \
	else echo "npm not found: the site will load MathJax from its CDN (offline, math shows as raw TeX)"; fi

clean:
	rm -rf _build
