"""Shared fixtures: no test reads or writes the real result store."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def isolated_store(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point ``$ICL_STORE`` at a fresh folder for every test; returns it."""
    root = tmp_path_factory.mktemp("store")
    monkeypatch.setenv("ICL_STORE", str(root))
    return root
