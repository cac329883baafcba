"""Suites whose every test needs the real default model are marked `model` here, once."""

from __future__ import annotations

from pathlib import Path

import pytest

MODEL_SUITES = tuple(Path(__file__).resolve().parent / name
                     for name in ("integration", "hardening"))


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        parents = item.path.resolve().parents
        if any(suite in parents for suite in MODEL_SUITES):
            item.add_marker(pytest.mark.model)
