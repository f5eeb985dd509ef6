"""Suite-wide rules for tests that need system tools."""

from __future__ import annotations

import os
import shutil

import pytest


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests marked ``etcdctl`` skip when the real etcdctl is missing, except in CI.

    .ci/run installs it (Debian's etcd-client), so under CI=true a missing
    binary is a failure of the test, never a silent skip.
    """
    if shutil.which("etcdctl") is not None or os.environ.get("CI") == "true":
        return
    skip = pytest.mark.skip(reason="etcdctl is not installed (apt-get install etcd-client)")
    for item in items:
        if item.get_closest_marker("etcdctl") is not None:
            item.add_marker(skip)
