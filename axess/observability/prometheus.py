"""``PrometheusMetrics``: :class:`~axess.observability.metrics.AuthnMetrics`
for Prometheus (the ``prometheus`` extra).

Every counter is ``axess_<method>_total``; ``store_latency`` is the histogram
``axess_store_latency_seconds`` and ``audit_buffer_depth`` the gauge
``axess_audit_buffer_depth``. The book's "Health and metrics" chapter lists
every name with its labels.

The values live in axess's own cells (an increment is one atomic ``next()``
on an :func:`itertools.count`, no lock, well under a microsecond); a
collector registered on a ``prometheus_client`` registry turns them into
metric families when the registry is scraped.

Importing this module does not need ``prometheus_client``; building a
:class:`PrometheusMetrics` does (a :class:`ConfigurationError` names the extra).
"""

from __future__ import annotations

import itertools
import logging
import math
import threading
import weakref
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response

from axess.errors import ConfigurationError
from axess.observability._cells import (
    COUNTERS,
    LABELLED_COUNTERS,
    LATENCY_BUCKETS,
    MAX_LABEL_VALUES,
    Count,
    CountingMetrics,
    Histogram,
    Labelled,
)

if TYPE_CHECKING:
    from prometheus_client.registry import CollectorRegistry

logger = logging.getLogger(__name__)

__all__ = ["LATENCY_BUCKETS", "MAX_LABEL_VALUES", "PrometheusMetrics"]


def _prometheus() -> Any:
    try:
        import prometheus_client
        import prometheus_client.core
        import prometheus_client.exposition
    except ImportError as exc:
        raise ConfigurationError(
            "PrometheusMetrics needs prometheus-client: install axess with the 'prometheus' "
            "extra (pip install '/path/to/axess[prometheus]') or pip install prometheus-client"
        ) from exc
    return prometheus_client


class _State:
    """Every value of one registry, and the collector that exposes them."""

    def __init__(self, prom: Any, buckets: tuple[float, ...]) -> None:
        self._core = prom.core
        self.buckets = buckets
        self.counters = {name: Count() for name, _ in COUNTERS}
        self.labelled = {
            name: Labelled(Count, "inc", known) for name, _, _, known in LABELLED_COUNTERS
        }
        self.latency = Labelled(lambda: Histogram(buckets), "observe")
        self.depth = 0.0

    def describe(self) -> Iterator[Any]:
        return self._families(values=False)

    def collect(self) -> Iterator[Any]:
        return self._families(values=True)

    def _families(self, *, values: bool) -> Iterator[Any]:
        core = self._core
        for name, doc in COUNTERS:
            family = core.CounterMetricFamily(f"axess_{name}", doc)
            if values:
                family.add_metric([], self.counters[name].value)
            yield family
        for name, doc, label, _ in LABELLED_COUNTERS:
            family = core.CounterMetricFamily(f"axess_{name}", doc, labels=[label])
            if values:
                for labels, cell in self.labelled[name].items():
                    family.add_metric(labels, cell.value)
            yield family
        gauge = core.GaugeMetricFamily(
            "axess_audit_buffer_depth", "Events waiting in the fullest audit sink buffer"
        )
        if values:
            gauge.add_metric([], self.depth)
        yield gauge
        hist = core.HistogramMetricFamily(
            "axess_store_latency_seconds",
            "Duration of store operations, retries and failures included",
            labels=["substore", "operation"],
        )
        if values:
            bounds = [*(_le(b) for b in self.buckets), "+Inf"]
            for labels, cell in self.latency.items():
                counts, total = cell.snapshot()
                cumulative = list(itertools.accumulate(counts))
                hist.add_metric(labels, list(zip(bounds, cumulative, strict=True)), total)
        yield hist


def _le(bound: float) -> str:
    return "+Inf" if math.isinf(bound) else repr(float(bound))


# registry -> its state, so a second PrometheusMetrics on the same registry
# shares the values instead of failing on duplicate names.
_STATES: weakref.WeakKeyDictionary[Any, _State] = weakref.WeakKeyDictionary()
_STATES_LOCK = threading.Lock()


class PrometheusMetrics(CountingMetrics):
    """:class:`~axess.observability.metrics.AuthnMetrics` for Prometheus.

    ``registry``: the ``prometheus_client`` registry to expose the values on;
    default the global ``prometheus_client.REGISTRY``. A second instance on
    the same registry shares the values of the first (no duplicate-name
    error); instances on separate registries are independent. ``buckets``:
    the upper bounds (seconds) of the store latency histogram.

    :attr:`endpoint` is a Starlette endpoint serving the registry:
    ``app.add_route("/metrics", metrics.endpoint)`` (``/metrics`` is never
    rate limited by default).

    Every method is cheap (an atomic increment; the histogram takes a lock)
    and never raises into the request path.
    """

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        buckets: Sequence[float] = LATENCY_BUCKETS,
    ) -> None:
        prom = _prometheus()
        self._prom = prom
        self.registry: CollectorRegistry = prom.REGISTRY if registry is None else registry
        bounds = tuple(sorted(float(b) for b in buckets if not math.isinf(b)))
        if not bounds:
            raise ConfigurationError("PrometheusMetrics needs at least one finite bucket")
        with _STATES_LOCK:
            state = _STATES.get(self.registry)
            if state is None:
                state = _State(prom, bounds)
                try:
                    self.registry.register(state)
                except ValueError as exc:
                    raise ConfigurationError(
                        f"PrometheusMetrics: the registry already has axess_* metrics ({exc})"
                    ) from exc
                _STATES[self.registry] = state
            elif bounds != state.buckets:
                logger.warning(
                    "PrometheusMetrics: the registry already has axess metrics with other "
                    "latency buckets; keeping those"
                )
        self._state = state
        self._bind(state.counters, state.labelled)
        self._store_latency = state.latency

    def __repr__(self) -> str:
        return f"PrometheusMetrics(registry={self.registry!r})"

    @property
    def endpoint(self) -> Callable[[Request], Awaitable[Response]]:
        """A Starlette endpoint answering with the registry's exposition (the
        text format, or OpenMetrics when the scraper asks for it)."""
        return self._endpoint

    async def _endpoint(self, request: Request) -> Response:
        encoder, content_type = self._prom.exposition.choose_encoder(
            request.headers.get("accept", "")
        )
        return Response(
            encoder(self.registry),
            headers={"Content-Type": content_type, "Cache-Control": "no-store"},
        )

    # -- AuthnMetrics ----------------------------------------------------------------
    def audit_buffer_depth(self, depth: int) -> None:
        self._state.depth = float(depth)

    def store_latency(self, substore: str, operation: str, seconds: float) -> None:
        key = (substore, operation)
        (self._store_latency.fast.get(key) or self._store_latency.add(key))(seconds)
