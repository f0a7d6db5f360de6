"""Rate-limit buckets in Valkey, shared by every app instance (book: Rate
limiting). The protocol it implements, and the in-process store, are in
:mod:`axess.ratelimit.stores`."""

from __future__ import annotations

from collections.abc import Sequence
from importlib import resources
from typing import Any

from axess._cache import Memo
from axess.errors import ConfigurationError, StoreError
from axess.observability.health import HealthStatus
from axess.ratelimit import gcra
from axess.ratelimit.stores import RATELIMIT, Bucket, BucketSpec, CheckResult
from axess.stores.valkey import ValkeyStore, _Script


def _load_gcra_script() -> _Script:
    body = resources.files("axess.stores").joinpath("lua", "gcra.lua").read_bytes()
    return _Script("gcra", body)


def _encode_params(params: tuple[tuple[int, int, int], ...]) -> tuple[bytes, ...]:
    return tuple(str(v).encode("ascii") for triple in params for v in triple)


class ValkeyBucketStore:
    """Buckets in Valkey, shared by every app instance.

    ``ValkeyBucketStore(valkey_store)`` shares the connection pool of an
    existing :class:`~axess.stores.ValkeyStore` (same server, prefix, TLS
    and AUTH checks); it neither opens nor closes more than that store's
    own ``open``/``close`` would. ``ValkeyBucketStore(url, ...)`` builds its
    own store with the same safety floor (``allow_insecure`` and the other
    keyword arguments of ``ValkeyStore``) and owns it.

    Layout: ``<prefix>rl:{<policy>:<key>}:<count>/<period>`` holds the TAT
    (decimal microseconds of the server clock) with a TTL ending when the
    bucket is full again (never longer than the period, or than the refill
    time when the burst exceeds the count). The braces keep one rule's keys
    in one cluster slot.

    The script is loaded once on :meth:`open` (done lazily by the first
    check when nobody called it) and re-loaded after ``NOSCRIPT``.
    """

    local = False

    def __init__(
        self,
        store: ValkeyStore | str,
        *,
        prefix: str = "axess:",
        allow_insecure: bool = False,
        **store_kwargs: Any,
    ) -> None:
        if isinstance(store, str):
            self._store = ValkeyStore(
                store, prefix=prefix, allow_insecure=allow_insecure, **store_kwargs
            )
            self._owns = True
        elif isinstance(store, ValkeyStore):
            if store_kwargs:
                raise ConfigurationError(
                    "pass connection settings to the ValkeyStore, not to ValkeyBucketStore"
                )
            self._store = store
            self._owns = False
        else:
            raise ConfigurationError("ValkeyBucketStore needs a ValkeyStore or a Valkey URL")
        self._script = _load_gcra_script()
        self._ready = False
        # A rule's parameters as script arguments. Keyed by the rules'
        # (emission, tolerance, cost) triples, which come from configuration,
        # not from clients: few entries, no key bound.
        self._args_of: Memo[tuple[tuple[int, int, int], ...], tuple[bytes, ...]] = Memo(
            _encode_params, 1024, max_key_bytes=None
        )

    def __repr__(self) -> str:
        return f"ValkeyBucketStore(prefix={self._store.prefix!r})"

    @property
    def store(self) -> ValkeyStore:
        return self._store

    async def open(self) -> None:
        """Open the connection (if this store owns it) and load the script."""
        if not self._store.is_open:
            await self._store.open()
        await self._store.load_script(self._script, substore=RATELIMIT)
        self._ready = True

    async def close(self) -> None:
        self._ready = False
        if self._owns:
            await self._store.close()

    async def check_health(self) -> HealthStatus:
        return await self._store.check_health()

    def keys_for(self, buckets: Sequence[Bucket]) -> list[str]:
        """The Valkey keys of ``buckets`` (in check order)."""
        base = self._store.prefix + "rl:{"
        return [base + key + "}:" + sig for key, spec in buckets for sig in spec.signatures]

    def _args(self, spec: BucketSpec) -> tuple[bytes, ...]:
        return self._args_of[spec.params]

    async def check(self, buckets: Sequence[Bucket]) -> CheckResult:
        if not self._ready:
            await self.open()
        keys = self.keys_for(buckets)
        params: Sequence[tuple[int, int, int]]
        if len(buckets) == 1:
            spec = buckets[0][1]
            args, params = self._args(spec), spec.params
        else:
            args = tuple(a for _, spec in buckets for a in self._args(spec))
            params = [p for _, spec in buckets for p in spec.params]
        try:
            reply = await self._store.run_script(self._script, keys, args, substore=RATELIMIT)
        except RuntimeError as exc:  # the connection was closed under us (shutdown)
            self._ready = False  # the next check opens it again
            raise StoreError(
                f"valkey ratelimit: {exc}", backend="valkey", substore=RATELIMIT
            ) from None
        try:
            if isinstance(reply, int):  # one limit: the sign says admitted or refused
                allowed, aheads = reply >= 0, [reply if reply >= 0 else -1 - reply]
            else:
                flag, *aheads = (int(v) for v in reply.split())
                allowed = flag == 1
            if len(aheads) != len(keys):
                raise ValueError("length")
        except (AttributeError, TypeError, ValueError):
            raise StoreError(
                "valkey ratelimit: unexpected reply", backend="valkey", substore=RATELIMIT
            ) from None
        return allowed, gcra.states_from(allowed, aheads, params)
