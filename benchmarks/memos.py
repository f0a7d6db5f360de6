"""Making axess's per-process memos miss, for the "cold" variant.

axess memoizes pure computations on the request path (cookie verification,
opened envelopes, fingerprints, CSRF token checks, peer-address parsing).
A *cold* request comes from a client the process has not seen recently, so
every per-client memo misses. To measure that without paying for a
``clear()`` inside the timed loop, every :class:`~axess._cache.Memo` (and
bounded dict) reachable from the middleware stack is replaced by one holding
a single entry, and the benchmark alternates between two clients (different session
cookie, User-Agent and /24): each lookup misses and each insert evicts the
other client's entry, exactly the work a real miss does. Memos keyed by
something both clients share (e.g. the tenant pepper) still hit, as they
would in production.

``Axess(memo_size=)`` sizes the session, binding and CSRF memos, but not
the peer-address memo of ``TrustedProxies`` or the rate limiter's, hence
the object walk, which reaches every memo.
"""

from __future__ import annotations

from typing import Any

from axess._cache import BoundedDict, Memo

_CONTAINERS = (list, tuple)


def _is_axess(obj: object) -> bool:
    return type(obj).__module__.split(".", 1)[0] == "axess"


def _attributes(obj: object) -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    if hasattr(obj, "__dict__"):
        out.extend(vars(obj).items())
    for cls in type(obj).__mro__:
        slots = cls.__dict__.get("__slots__", ())
        for name in (slots,) if isinstance(slots, str) else slots:
            if name not in ("__dict__", "__weakref__") and hasattr(obj, name):
                out.append((name, getattr(obj, name)))
    return out


def starve_memos(stack: Any) -> list[str]:
    """Replace every memo reachable from an ASGI middleware chain (following
    ``.app``) by a one-entry memo. Returns the dotted paths replaced."""
    replaced: list[str] = []
    seen: set[int] = set()

    def visit(obj: object, path: str) -> None:
        if id(obj) in seen:
            return
        seen.add(id(obj))
        for name, value in _attributes(obj):
            if name == "app":
                continue  # the next layer: visited by the chain walk below
            where = f"{path}.{name}"
            if isinstance(value, BoundedDict):
                starved: BoundedDict[Any, Any] = (
                    Memo(value.compute, 1, max_key_bytes=value.max_key_bytes)
                    if isinstance(value, Memo)
                    else BoundedDict(1, max_key_bytes=value.max_key_bytes)
                )
                object.__setattr__(obj, name, starved)
                replaced.append(where)
            elif _is_axess(value):
                visit(value, where)
            elif isinstance(value, _CONTAINERS):
                for i, item in enumerate(value):
                    if _is_axess(item):
                        visit(item, f"{where}[{i}:{type(item).__name__}]")

    layer = stack
    while layer is not None:
        if _is_axess(layer):
            visit(layer, type(layer).__name__)
        layer = getattr(layer, "app", None)
    return replaced


def axess_layers(stack: Any) -> list[str]:
    """Names of the axess middleware in a built stack, outermost first."""
    names: list[str] = []
    layer = stack
    while layer is not None:
        if _is_axess(layer):
            # ``Axess.install`` adds one Stack that runs the stages in one frame.
            stages = getattr(layer, "stages", None)
            if isinstance(stages, tuple | list):
                names.extend(type(s).__name__ for s in stages)
            else:
                names.append(type(layer).__name__)
        layer = getattr(layer, "app", None)
    return names
