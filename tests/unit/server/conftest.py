"""The in-process member shared by the server tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.unit.server.live import LiveMember, start_member


@pytest.fixture
async def live(tmp_path: Path) -> AsyncIterator[LiveMember]:
    lm = await start_member(tmp_path / "m0")
    try:
        await lm.wait_leader()
        yield lm
    finally:
        await lm.stop()
