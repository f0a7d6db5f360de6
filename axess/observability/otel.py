"""``OTelMetrics``: :class:`~axess.observability.metrics.AuthnMetrics` on the
OpenTelemetry metrics API (the ``otel`` extra).

Only ``opentelemetry-api`` is needed: the application configures a
``MeterProvider`` (the SDK, its readers and exporters) and passes it in, or
sets the global one. Instruments are named ``axess.<method>``: the counters
``axess.auth_attempt`` …, the histogram ``axess.store_latency`` (unit ``s``)
and the gauge ``axess.audit_buffer_depth``. OpenTelemetry's Prometheus
exporter turns them into the same ``axess_*_total`` /
``axess_store_latency_seconds`` names as
:class:`~axess.observability.prometheus.PrometheusMetrics`. The book's
"Health and metrics" chapter lists them all.

Importing this module does not need OpenTelemetry; building an
:class:`OTelMetrics` does (a :class:`ConfigurationError` names the extra).
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from axess.errors import ConfigurationError
from axess.observability._cells import (
    COUNTERS,
    LABELLED_COUNTERS,
    LATENCY_BUCKETS,
    MAX_LABEL_VALUES,
    OTHER,
    Count,
    CountingMetrics,
    Labelled,
)

if TYPE_CHECKING:
    from opentelemetry.metrics import MeterProvider

logger = logging.getLogger(__name__)

__all__ = ["LATENCY_BUCKETS", "MAX_LABEL_VALUES", "OTelMetrics"]


def _otel_metrics() -> Any:
    try:
        from opentelemetry import metrics
    except ImportError as exc:
        raise ConfigurationError(
            "OTelMetrics needs opentelemetry-api: install axess with the 'otel' extra "
            "(pip install '/path/to/axess[otel]') or pip install opentelemetry-api"
        ) from exc
    return metrics


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("axess")
    except Exception:  # not installed as a distribution (a source checkout)
        return ""


class _Attributes:
    """Label values -> a reusable attribute mapping: :data:`MAX_LABEL_VALUES`
    entries, and one ``"other"`` entry that every later key shares."""

    __slots__ = ("_lock", "_names", "cache")

    def __init__(self, *names: str) -> None:
        self._names = names
        self._lock = threading.Lock()
        self.cache: dict[tuple[str, ...], Mapping[str, str]] = {}

    def add(self, key: tuple[str, ...]) -> Mapping[str, str]:
        with self._lock:
            attributes = self.cache.get(key)
            if attributes is None:
                if len(self.cache) >= MAX_LABEL_VALUES:
                    # Full: every new key is "other", and is not remembered
                    # (the cache would grow with every new key otherwise).
                    key = (OTHER,) * len(key)
                    attributes = self.cache.get(key)
                    if attributes is not None:
                        return attributes
                attributes = dict(zip(self._names, key, strict=True))
                self.cache[key] = attributes
            return attributes


class _State:
    """The cells of one meter provider and the instruments reading them."""

    def __init__(self, meter: Any, api: Any) -> None:
        self.meter = meter
        self.counters = {name: Count() for name, _ in COUNTERS}
        self.labelled = {
            name: Labelled(Count, "inc", known) for name, _, _, known in LABELLED_COUNTERS
        }
        self.depth = 0
        self.attributes: dict[str, Mapping[str, str]] = {}
        for name, doc in COUNTERS:
            meter.create_observable_counter(
                f"axess.{name}", callbacks=[self._plain(api, name)], description=doc
            )
        for name, doc, label, _ in LABELLED_COUNTERS:
            meter.create_observable_counter(
                f"axess.{name}", callbacks=[self._labelled(api, name, label)], description=doc
            )
        meter.create_observable_gauge(
            "axess.audit_buffer_depth",
            callbacks=[lambda _options: [api.Observation(self.depth)]],
            description="Events waiting in the fullest audit sink buffer",
        )
        self.latency: Callable[..., None] = meter.create_histogram(
            "axess.store_latency",
            unit="s",
            description="Duration of store operations, retries and failures included",
            explicit_bucket_boundaries_advisory=LATENCY_BUCKETS,
        ).record
        self.latency_attributes = _Attributes("substore", "operation")

    def _plain(self, api: Any, name: str) -> Callable[[Any], list[Any]]:
        count = self.counters[name]
        return lambda _options: [api.Observation(count.value)]

    def _labelled(self, api: Any, name: str, label: str) -> Callable[[Any], list[Any]]:
        family = self.labelled[name]
        return lambda _options: [
            api.Observation(cell.value, {label: values[0]}) for values, cell in family.items()
        ]


# meter provider -> its state: a second OTelMetrics on the same provider
# shares the instruments (and their callbacks) instead of registering twice.
_STATES: weakref.WeakKeyDictionary[Any, _State] = weakref.WeakKeyDictionary()
_STATES_LOCK = threading.Lock()


class OTelMetrics(CountingMetrics):
    """:class:`~axess.observability.metrics.AuthnMetrics` on the OpenTelemetry API.

    ``meter_provider``: where the instruments are created; default the global
    provider (``opentelemetry.metrics.get_meter_provider()``, a no-op until
    the application sets one). A second instance on the same provider shares
    the first one's instruments and values.

    Counters and the gauge are asynchronous instruments: axess counts in its
    own cells (an atomic increment, no OpenTelemetry call on the request
    path) and the provider's readers collect the totals. ``store_latency`` is
    a synchronous histogram, recorded once per store operation. Attributes
    are bounded like the Prometheus labels: ``lever``, ``policy``,
    ``substore``, ``operation``, ``use``.
    """

    def __init__(self, meter_provider: MeterProvider | None = None) -> None:
        api = _otel_metrics()
        provider = api.get_meter_provider() if meter_provider is None else meter_provider
        with _STATES_LOCK:
            state = _STATES.get(provider)
            if state is None:
                state = _State(provider.get_meter("axess", _version() or None), api)
                _STATES[provider] = state
        self._state = state
        self.meter = state.meter
        self._bind(state.counters, state.labelled)
        self._latency = state.latency
        self._latency_attributes = state.latency_attributes

    def __repr__(self) -> str:
        return f"OTelMetrics(meter={self.meter!r})"

    # -- AuthnMetrics ----------------------------------------------------------------
    def audit_buffer_depth(self, depth: int) -> None:
        self._state.depth = depth

    def store_latency(self, substore: str, operation: str, seconds: float) -> None:
        key = (substore, operation)
        attributes = self._latency_attributes.cache.get(key)
        if attributes is None:
            attributes = self._latency_attributes.add(key)
        self._latency(seconds, attributes)
