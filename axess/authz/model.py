"""The entity model axess hands to Cedar. Pure: no I/O, no clock reads, no cedarpy.

Everything here builds Cedar's JSON forms *structurally*: an entity uid is
always ``{"type": ..., "id": ...}``, never text pasted into Cedar syntax, so a
user id such as ``alice" || true || "`` stays an id. When a uid must be shown
as Cedar text (logs, errors, template-link values) :meth:`EntityUid.cedar`
escapes it. The book's Authorization chapter, "The entity model axess
builds", describes the result.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

#: One segment of a Cedar type name (``App``, ``User``).
_IDENT: Final = re.compile(r"[_A-Za-z][_A-Za-z0-9]*")
#: Cedar's reserved words may not name a type segment.
_RESERVED: Final = frozenset(
    {"true", "false", "if", "then", "else", "in", "is", "like", "has", "__cedar"}
)
_I64_MIN: Final = -(2**63)
_I64_MAX: Final = 2**63 - 1
_ESCAPES: Final = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t", "\0": "\\0"}
#: Context keys axess fills; an app's extra context may not replace them.
CONTEXT_KEYS: Final = frozenset({"ip", "method", "path", "mfa", "session_age"})


def check_type_name(name: str) -> str:
    """``name`` if it is a valid Cedar entity type (``App::User``), else ValueError."""
    if not isinstance(name, str) or not name:
        raise ValueError("a Cedar type name must be a non-empty string")
    for part in name.split("::"):
        if not _IDENT.fullmatch(part) or part in _RESERVED:
            raise ValueError(f"{name!r} is not a valid Cedar type name")
    return name


def qualify(namespace: str | None, name: str) -> str:
    """``Namespace::name`` (``name`` alone without a namespace); both checked."""
    return check_type_name(f"{namespace}::{name}" if namespace else name)


def escape_cedar_string(value: str) -> str:
    """``value`` as the body of a Cedar string literal: backslash, quote and
    control characters escaped, so it can never end the literal early."""
    out = []
    for ch in value:
        esc = _ESCAPES.get(ch)
        if esc is not None:
            out.append(esc)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{{{ord(ch):x}}}")
        else:
            out.append(ch)
    return "".join(out)


@dataclass(frozen=True, slots=True)
class EntityUid:
    """A Cedar entity uid: a checked type name and any string id."""

    type: str
    id: str

    def __post_init__(self) -> None:
        check_type_name(self.type)
        if not isinstance(self.id, str):
            raise TypeError("an entity id must be a string")

    def json(self) -> dict[str, str]:
        """Cedar's structural JSON form (``{"type": ..., "id": ...}``)."""
        return {"type": self.type, "id": self.id}

    def cedar(self) -> str:
        """Cedar text ``Type::"id"`` with the id escaped (safe to paste into a policy)."""
        return f'{self.type}::"{escape_cedar_string(self.id)}"'

    def __str__(self) -> str:
        return self.cedar()


_UID_TEXT: Final = re.compile(r'\s*((?:[_A-Za-z][_A-Za-z0-9]*::)+)"((?:[^"\\]|\\.)*)"\s*', re.S)
_UNESCAPES: Final = {"\\": "\\", '"': '"', "'": "'", "n": "\n", "r": "\r", "t": "\t", "0": "\0"}


def parse_uid(text: str) -> EntityUid:
    """Parse Cedar uid text (``Action::"view"``, ``App::Doc::"a\\"b"``).

    Raises ValueError for anything else; no other Cedar syntax is accepted.
    """
    m = _UID_TEXT.fullmatch(text) if isinstance(text, str) else None
    if m is None:
        raise ValueError(f'{text!r} is not a Cedar entity uid like Action::"view"')
    raw, out, i = m.group(2), [], 0
    while i < len(raw):
        ch = raw[i]
        if ch != "\\":
            out.append(ch)
            i += 1
            continue
        nxt = raw[i + 1]
        if nxt in _UNESCAPES:
            out.append(_UNESCAPES[nxt])
            i += 2
        elif nxt == "u" and raw[i + 2 : i + 3] == "{" and "}" in raw[i + 3 :]:
            end = raw.index("}", i + 3)
            try:
                out.append(chr(int(raw[i + 3 : end], 16)))
            except ValueError:
                raise ValueError(f"bad escape in {text!r}") from None
            i = end + 1
        else:
            raise ValueError(f"bad escape in {text!r}")
    return EntityUid(m.group(1)[:-2], "".join(out))


def to_uid(value: EntityUid | str, default_type: str) -> EntityUid:
    """An :class:`EntityUid` from a uid, uid text (``Role::"admin"``) or a bare
    id (``"admin"``, typed ``default_type``)."""
    if isinstance(value, EntityUid):
        return value
    if not isinstance(value, str):
        raise TypeError(f"expected an EntityUid or a string, got {type(value).__name__}")
    if "::" in value and value.rstrip().endswith('"'):
        return parse_uid(value)
    return EntityUid(default_type, value)


def entity_reference(value: Mapping[str, Any]) -> EntityUid | None:
    """The uid a mapping names in Cedar's JSON entity-reference forms, else ``None``.

    ``{"__entity": {"type": ..., "id": ...}}`` must be exactly that (no other
    key at either level, string type and id): anything else carrying
    ``__entity`` raises ValueError, because Cedar reads such mappings
    leniently (it ignores extra keys) and a reading that differs from Cedar's
    could hide a tenant from the tenancy rail. A mapping with string ``type``
    and ``id`` keys (other keys allowed: Cedar ignores them) is the bare form
    Cedar reads as a reference where the schema expects an entity.
    """
    if "__entity" in value:
        return _escaped_uid(value)
    kind, ident = value.get("type"), value.get("id")
    if isinstance(kind, str) and isinstance(ident, str):
        return EntityUid(kind, ident)
    return None


def _escaped_uid(value: Mapping[str, Any]) -> EntityUid:
    """The uid of ``{"__entity": {"type": ..., "id": ...}}``; ValueError unless exact."""
    inner = value["__entity"]
    if (
        len(value) != 1
        or not isinstance(inner, Mapping)
        or set(inner) != {"type", "id"}
        or not isinstance(inner["type"], str)
        or not isinstance(inner["id"], str)
    ):
        raise ValueError(
            'a malformed entity reference: {"__entity": {"type": ..., "id": ...}} '
            "with nothing else; pass an EntityUid"
        )
    return EntityUid(inner["type"], inner["id"])


def as_uid(value: EntityUid | str | Mapping[str, Any]) -> EntityUid:
    """An :class:`EntityUid` from a uid, uid text (``Docs::Folder::"f1"``) or a
    Cedar JSON entity reference (see :func:`entity_reference`). TypeError or
    ValueError for anything else (a bare id has no type here)."""
    if isinstance(value, EntityUid):
        return value
    if isinstance(value, str):
        return parse_uid(value)
    if isinstance(value, Mapping):
        uid = entity_reference(value)
        if uid is not None:
            return uid
        raise ValueError(f"{sorted(map(str, value))} is not an entity reference")
    raise TypeError(f"expected an EntityUid or uid text, got {type(value).__name__}")


def _uids(values: Any, what: str) -> tuple[EntityUid, ...]:
    """``values`` (an iterable of uids, uid text or references) as a tuple of uids."""
    if isinstance(values, str | bytes | Mapping) or not isinstance(values, Iterable):
        raise TypeError(f"{what} must be a sequence of entity uids, got {type(values).__name__}")
    if type(values) is tuple and all(type(v) is EntityUid for v in values):
        return values  # the usual case, built by axess itself: nothing to convert
    return tuple(as_uid(v) for v in values)


@dataclass(frozen=True, slots=True)
class Entity:
    """An entity handed to Cedar: uid, attributes, parent uids.

    Attribute values are converted by :func:`cedar_value`: ``str``, ``bool``,
    ``int`` (64-bit), lists/sets/tuples (Cedar sets), mappings (records),
    :class:`EntityUid` (entity references) and :mod:`ipaddress` objects
    (Cedar ``ip`` values). ``uid`` and ``parents`` are held as uids (a tuple
    of them for ``parents``); uid text and Cedar JSON references
    (:func:`entity_reference`) are converted. ``attrs=None`` is no
    attributes. Anything else raises TypeError or ValueError here, where the
    app built it, rather than later inside a decision.
    """

    uid: EntityUid
    attrs: Mapping[str, Any] = field(default_factory=dict)
    parents: Sequence[EntityUid] = ()

    def __post_init__(self) -> None:
        uid: Any = self.uid  # (typed Any: apps pass what the annotations do not say)
        if not isinstance(uid, EntityUid):
            object.__setattr__(self, "uid", as_uid(uid))
        attrs: Any = self.attrs
        if attrs is None:
            object.__setattr__(self, "attrs", {})
        elif not isinstance(attrs, Mapping):
            raise TypeError(f"attrs must be a mapping, got {type(attrs).__name__}")
        # Parents decide the tenancy rail as much as Cedar's ``in``: they are
        # held as uids, so both read the same thing whatever the app passed.
        object.__setattr__(self, "parents", _uids(self.parents, "parents"))

    def json(self) -> dict[str, Any]:
        """Cedar's JSON entity form."""
        return {
            "uid": self.uid.json(),
            "attrs": {str(k): cedar_value(v) for k, v in self.attrs.items()},
            "parents": [p.json() for p in self.parents],
        }


@dataclass(frozen=True, slots=True)
class Resource:
    """What a resource callback returns when policies need more than the
    resource itself: ``related`` entities (a folder, a project) that the
    resource's ``parents`` or attributes point at and policies read.

    Held as an :class:`Entity` and a tuple of them; a uid or uid text in
    either place is an entity without attributes. TypeError or ValueError
    for anything else.
    """

    entity: Entity
    related: Sequence[Entity] = ()

    def __post_init__(self) -> None:
        entity: Any = self.entity  # (typed Any: apps pass what the annotations do not say)
        if not isinstance(entity, Entity):
            object.__setattr__(self, "entity", _entity(entity))
        related: Any = self.related
        if isinstance(related, str | bytes | Mapping) or not isinstance(related, Iterable):
            raise TypeError(f"related must be a sequence of entities, got {type(related).__name__}")
        if type(related) is not tuple or not all(type(e) is Entity for e in related):
            object.__setattr__(self, "related", tuple(_entity(e) for e in related))


def _entity(value: Any) -> Entity:
    """An :class:`Entity`, or one without attributes for a uid or uid text."""
    return value if isinstance(value, Entity) else Entity(as_uid(value))


def as_resource(value: Resource | Entity | EntityUid | str) -> Resource:
    """Normalize a resource callback's answer (uid text names an entity
    without attributes, like an :class:`EntityUid`)."""
    if isinstance(value, Resource):
        return value
    if isinstance(value, Entity):
        return Resource(value)
    if isinstance(value, EntityUid | str):
        return Resource(Entity(as_uid(value)))
    raise TypeError(
        f"a resource must be an EntityUid, uid text, Entity or Resource, got {type(value).__name__}"
    )


#: How deeply records and sets may nest in an attribute or context value.
#: Cedar refuses far shallower input itself; the limit keeps a deep (or
#: self-containing) value from the app's callbacks from exhausting Python's
#: recursion limit, which would answer a 500 instead of a denial.
MAX_VALUE_DEPTH: Final = 64


def cedar_value(value: Any, _depth: int = 0) -> Any:
    """A Python value in Cedar's JSON value form. Raises TypeError/ValueError
    for what Cedar cannot hold (floats, ``None``, integers beyond 64 bits,
    records and sets nested more than :data:`MAX_VALUE_DEPTH` levels) and for
    a mapping with an ``__entity`` key that is not exactly a reference
    (:func:`entity_reference`); an exact one is passed on as it is."""
    if _depth > MAX_VALUE_DEPTH:
        raise ValueError(f"a value nested more than {MAX_VALUE_DEPTH} levels deep")
    if isinstance(value, bool | str):
        return value
    if isinstance(value, int):
        if not _I64_MIN <= value <= _I64_MAX:
            raise ValueError("Cedar integers are 64-bit")
        return value
    if isinstance(value, EntityUid):
        return {"__entity": value.json()}
    if isinstance(value, ipaddress.IPv4Address | ipaddress.IPv6Address):
        return {"__extn": {"fn": "ip", "arg": str(value)}}
    if isinstance(value, ipaddress.IPv4Network | ipaddress.IPv6Network):
        return {"__extn": {"fn": "ip", "arg": value.with_prefixlen}}
    if isinstance(value, Mapping):
        if "__entity" in value:  # Cedar's escape: exactly a reference, or refused
            return {"__entity": _escaped_uid(value).json()}
        return {str(k): cedar_value(v, _depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        items = [cedar_value(v, _depth + 1) for v in value]
        return sorted(items, key=repr) if isinstance(value, set | frozenset) else items
    if isinstance(value, float) and math.isfinite(value):
        raise TypeError("Cedar has no floats; pass an int or a decimal string")
    raise TypeError(f"{type(value).__name__} is not a Cedar value")


def cedar_ip(text: str) -> dict[str, Any]:
    """A Cedar ``ip`` extension value; an unparsable address becomes ``0.0.0.0``
    (what axess records for a client without a usable address)."""
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        addr = ipaddress.IPv4Address(0)
    return {"__extn": {"fn": "ip", "arg": str(addr)}}


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is asking, as the session knows it (see :func:`principal_entity`)."""

    user: str
    tenant: str
    factors: tuple[str, ...]
    authn_time: float
    parents: tuple[EntityUid, ...] = ()


@dataclass(frozen=True, slots=True)
class Types:
    """The entity types axess uses, namespaced: ``User``, ``Tenant``, ``Action``
    and the default type of bare role names (``Role``)."""

    user: str
    tenant: str
    action: str
    role: str

    @classmethod
    def build(
        cls,
        namespace: str | None,
        *,
        user: str = "User",
        tenant: str = "Tenant",
        action: str = "Action",
        role: str = "Role",
    ) -> Types:
        return cls(
            qualify(namespace, user),
            qualify(namespace, tenant),
            qualify(namespace, action),
            qualify(namespace, role),
        )


def principal_entity(p: Principal, types: Types) -> Entity:
    """The principal entity: ``User::"<user id>"`` with attributes ``tenant``
    (a ``Tenant`` entity), ``factors`` (set of strings) and ``authn_time``
    (epoch seconds, an integer); its parents are the app's roles/groups."""
    return Entity(
        EntityUid(types.user, p.user),
        {
            "tenant": EntityUid(types.tenant, p.tenant),
            "factors": sorted(set(p.factors)),
            "authn_time": int(p.authn_time),
        },
        p.parents,
    )


def is_mfa(factors: Iterable[str]) -> bool:
    """At least two distinct factors were proven (password + TOTP, password +
    recovery code…)."""
    return len(set(factors)) >= 2


def context_record(
    p: Principal,
    *,
    ip: str,
    method: str,
    path: str,
    now: float,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The Cedar context: ``ip`` (Cedar ``ip``), ``method``, ``path``, ``mfa``
    (bool) and ``session_age`` (whole seconds since the login, never negative),
    plus the app's ``extra`` attributes, which may not reuse those names."""
    ctx: dict[str, Any] = {
        "ip": cedar_ip(ip),
        "method": method,
        "path": path,
        "mfa": is_mfa(p.factors),
        "session_age": max(0, int(now - p.authn_time)),
    }
    if extra:
        clash = CONTEXT_KEYS.intersection(extra)
        if clash:
            raise ValueError(f"extra context may not replace {sorted(clash)}")
        for k, v in extra.items():
            ctx[str(k)] = cedar_value(v)
    return ctx


def tenant_of(entity: Entity, tenant_type: str) -> str | None:
    """The tenant a resource belongs to: its ``tenant`` attribute or else its
    first ``Tenant`` parent; ``None`` when it is not tenant-scoped. Drives the
    tenancy rail.

    The attribute counts in every form it can reach Cedar in: an
    :class:`EntityUid` or a Cedar JSON reference (:func:`entity_reference`)
    of the tenant type, or text (a bare tenant id, or uid text of the tenant
    type). Raises ValueError for a malformed reference or uid text.
    """
    attr = entity.attrs.get("tenant")
    uid: EntityUid | None = None
    if isinstance(attr, EntityUid):
        uid = attr
    elif isinstance(attr, Mapping):
        uid = entity_reference(attr)
    elif isinstance(attr, str):
        # Only a decision without the schema lets a String tenant reach the
        # policies; the rail still reads it as the tenant it names, so a
        # cross-tenant permit cannot slip through on a type mismatch.
        uid = to_uid(attr, tenant_type)
    if uid is not None and uid.type == tenant_type:
        return uid.id
    for parent in entity.parents:
        if parent.type == tenant_type:
            return parent.id
    return None
