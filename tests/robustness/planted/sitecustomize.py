"""A bug planted in the members, to show the robustness checks catch it end to end.

Members started with this directory on ``PYTHONPATH`` import it at start-up; with
``ROBUSTNESS_PLANT=stale-reads`` their linearizable reads skip the ReadIndex round and read
local state at once (as serializable reads do), so a leader cut off from the others keeps
answering reads with what it last knew.
"""

from __future__ import annotations

import os

if os.environ.get("ROBUSTNESS_PLANT") == "stale-reads":
    from cluster.server import member

    async def _no_barrier(self: member.Member) -> None:
        return None

    member.Member.linearizable_barrier = _no_barrier  # type: ignore[method-assign]
