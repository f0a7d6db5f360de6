"""Rate-limited WARNINGs for failures that repeat on every request."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable


class ThrottledWarning:
    """Logs a WARNING at most once per ``interval`` seconds per key.

    During an outage every request fails the same way; one line per request
    would flood the logs. The first failure is logged at once; later ones
    within the interval are counted and the count is reported with the next
    line (``(N similar suppressed)``).
    """

    def __init__(
        self,
        logger: logging.Logger,
        interval: float = 10.0,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self._interval = interval
        self._clock = clock
        # key -> (last logged at, suppressed since)
        self._seen: dict[str, tuple[float, int]] = {}

    def warning(self, key: str, msg: str, *args: object) -> bool:
        """Log ``msg % args`` unless ``key`` was logged within the interval;
        True when it was logged."""
        now = self._clock()
        last = self._seen.get(key)
        if last is not None and now - last[0] < self._interval:
            self._seen[key] = (last[0], last[1] + 1)
            return False
        if len(self._seen) > 256:  # keys are few (operations); never grow unbounded
            self._seen.clear()
        suppressed = last[1] if last is not None else 0
        self._seen[key] = (now, 0)
        if suppressed:
            self._logger.warning(msg + " (%d similar suppressed)", *args, suppressed)
        else:
            self._logger.warning(msg, *args)
        return True
