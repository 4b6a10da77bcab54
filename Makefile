# The README's two commands: `make book` and `make test`. The first run of either creates .venv/.
PYTHON ?= python3
BIN := .venv/bin
export ICL_PRESET ?= quick

# Sphinx re-reads only edited pages and jupyter-cache keys on code cells alone, so a change in icl/ or
# of $ICL_PRESET would leave stale outputs: start from a clean _build then (the result store keeps it cheap).
CACHE_KEY := $(ICL_PRESET)-$(shell find icl -name '*.py' -print0 | sort -z | xargs -0 cat | sha256sum | cut -c1-16)

.PHONY: book test clean

book: .venv/.installed
	@if [ "$$(cat _build/.cache-key 2>/dev/null)" != "$(CACHE_KEY)" ]; then \
		rm -rf _build && mkdir _build && echo "$(CACHE_KEY)" > _build/.cache-key; fi
	$(BIN)/jupyter-book build -W --keep-going .

test: .venv/.installed
	$(BIN)/python -m pytest

.venv/.installed: pyproject.toml
	$(PYTHON) -m venv .venv
	$(BIN)/pip install -e '.[book,test]'
	touch $@

clean:
	rm -rf _build
