"""The memory that requests in process may hold, bounded as a whole.

Each request is charged before its image is decoded: its body's bytes plus
``BYTES_PER_PIXEL`` for every pixel its header declares (the decoded image, the full-size
depth, heatmap and overlay, the encoder's buffers), and pays it back when its answer has
been written. A request that does not fit gets 503 + Retry-After at once; a job image waits
for room (accepted work is never refused for load). So what requests hold is at most
``limit`` bytes however many arrive, whatever sizes they carry: many large photos at once
cost a retry, never the server's memory.
"""

from __future__ import annotations

import asyncio
import contextlib

from .settings import BYTES_PER_PIXEL  # noqa: F401 - where the settings check that one image fits



class WorkBudget:
    """Bytes held by admitted requests, against ``limit``."""

    def __init__(self, limit: int) -> None:
        self.limit, self.held = limit, 0
        self._room: asyncio.Condition | None = None

    def _condition(self) -> asyncio.Condition:
        if self._room is None:  # created on the event loop that uses it
            self._room = asyncio.Condition()
        return self._room

    @contextlib.asynccontextmanager
    async def hold(self, cost: int, wait: bool):
        """Hold ``cost`` bytes for the block. ``wait=False``: ``False`` is yielded at once
        when they do not fit (the caller refuses the request); ``wait=True``: waits for room."""
        room = self._condition()
        fits = lambda: self.held + cost <= self.limit or self.held == 0  # noqa: E731 - one alone always fits
        async with room:
            granted = fits()
            if not granted and wait:
                await room.wait_for(fits)
                granted = True
            if granted:
                self.held += cost
        if not granted:
            yield False
            return
        try:
            yield True
        finally:
            async with room:
                self.held -= cost
                room.notify_all()
