"""The ``robustness`` marker: the long runs, only when asked for with ``-m robustness``."""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "robustness: long fault-injection runs (`make robustness`; not in make test)"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if "robustness" in (config.getoption("markexpr", "") or ""):
        return
    skip = pytest.mark.skip(reason="long robustness runs: select them with -m robustness")
    for item in items:
        if item.get_closest_marker("robustness") is not None:
            item.add_marker(skip)
