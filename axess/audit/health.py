"""Health of the audit pipeline, per sink and overall (book: Audit, "Delivery").

A sink is unhealthy while its worker is not running, while its full buffer
holds logins back, and while it fails, its write has been in flight for
``stall_after`` seconds or more (hung), or its pipeline is not started yet
if it is regulatory (degraded for an analytics sink); degraded while it
overflows, and once its events go to the recovery log until restart. The
pipeline is as bad as its worst sink.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from axess.audit.worker import SinkWorker
from axess.observability.health import HealthStatus


def sink_status(worker: SinkWorker, *, closed: bool, gated: bool) -> HealthStatus:
    """The status of one sink; ``gated``: its buffer holds logins back."""
    name = worker.name
    if closed:
        return HealthStatus.unhealthy(f"audit sink {name}: pipeline stopped")
    if worker.task is None:
        # Nothing is delivered before start(): as bad as a failing sink, even
        # though no attempt failed yet (a forgotten lifespan never fails one).
        reason = f"audit sink {name}: pipeline not started ({worker.depth} events waiting)"
        return (
            HealthStatus.unhealthy(reason) if worker.regulatory else HealthStatus.degraded(reason)
        )
    if worker.task.done():
        return HealthStatus.unhealthy(f"audit sink {name}: worker not running")
    if gated:
        return HealthStatus.unhealthy(
            f"audit sink {name}: buffer full, logins paused ({worker.depth} events)"
        )
    stalled = worker.stalled_for()
    if stalled is not None:
        # A write that never returns fails nothing: without this the sink
        # looked healthy until its buffer was full (book: Audit, "Delivery").
        reason = (
            f"audit sink {name}: write not returned after {stalled:.0f}s "
            f"({worker.depth} events waiting)"
        )
        return (
            HealthStatus.unhealthy(reason) if worker.regulatory else HealthStatus.degraded(reason)
        )
    if worker.streak:
        reason = f"audit sink {name}: failing ({worker.streak} attempts, {worker.last_error})"
        return (
            HealthStatus.unhealthy(reason) if worker.regulatory else HealthStatus.degraded(reason)
        )
    if worker.buffer.overflowing:
        return HealthStatus.degraded(f"audit sink {name}: buffer full")
    if worker.buffer.spilling:
        # Safe on disk, but not delivered before the next start.
        return HealthStatus.degraded(
            f"audit sink {name}: events go to the recovery log until restart"
        )
    return HealthStatus.healthy()


def worst_status(statuses: Iterable[HealthStatus]) -> HealthStatus:
    """The first status that is not ok, else the first with a reason, else healthy."""
    worst = HealthStatus.healthy()
    for status in statuses:
        if not status.ok:
            return status
        if worst.ok and worst.reason is None and status.reason is not None:
            worst = status
    return worst


class SinkHealth:
    """A :class:`~axess.observability.health.HealthCheck` for one sink."""

    def __init__(self, status: Callable[[], HealthStatus]) -> None:
        self._status = status

    async def check_health(self) -> HealthStatus:
        return self._status()
