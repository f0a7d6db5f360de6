"""Loading, validating and compiling Cedar policy sets.

Policies and the schema are parsed once into cedarpy's ``PolicySet`` and
``Schema`` handles and validated with ``cedarpy.validate_policies``; any
error is a :class:`~axess.errors.ConfigurationError` that lists every
problem with its policy id, ``@id`` annotation and source position
(``file:line:column``). cedarpy reports policy ids (``policy0``, ``policy1``…,
numbered in source order) but no positions, so positions come from a small
scanner here that splits the text at top-level semicolons (book:
Authorization, "Startup validation").
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import cedarpy

from axess.authz.model import Entity, EntityUid
from axess.errors import ConfigurationError

logger = logging.getLogger(__name__)

#: Annotation marking a permit policy allowed to grant access across tenants.
CROSS_TENANT: Final = "cross_tenant"

#: How deeply parentheses, brackets and braces may nest in policy or schema
#: text, and how many ``if`` one policy may hold. cedarpy's parser recurses
#: on the native stack: around 700 nested parentheses (or a few thousand
#: nested ``if``) crash the whole process with a segmentation fault, which
#: no exception handler can turn into an error message.
MAX_NESTING: Final = 200
_NESTING_TOKENS: Final = re.compile(r'"(?:\\.|[^"\\])*"?|//[^\n]*|[()\[\]{};]|\bif\b')

PolicyInput = str | os.PathLike[str] | Sequence[os.PathLike[str]]
SchemaInput = str | os.PathLike[str] | Mapping[str, Any]
EntitiesInput = str | os.PathLike[str] | Sequence[Entity | Mapping[str, Any]]


@dataclass(frozen=True, slots=True)
class TemplateLink:
    """Link template ``template`` (its ``@id`` or Cedar id) as policy ``id``,
    filling ``?principal`` and/or ``?resource``."""

    template: str
    id: str
    principal: EntityUid | None = None
    resource: EntityUid | None = None

    def values(self) -> dict[str, dict[str, str]]:
        out = {}
        if self.principal is not None:
            out["?principal"] = self.principal.json()
        if self.resource is not None:
            out["?resource"] = self.resource.json()
        return out


@dataclass(frozen=True, slots=True)
class Source:
    """Policy text and where it came from (a file name or ``<policies>``)."""

    name: str
    text: str


@dataclass(frozen=True, slots=True)
class Chunk:
    """One policy or template in the concatenated text: where it starts and
    its annotations as written."""

    start: int
    end: int
    annotations: Mapping[str, str]


def read_policy_sources(policies: PolicyInput) -> list[Source]:
    """Policy text: a ``str`` is Cedar text, a path (or a sequence of paths)
    is read as UTF-8. Raises ConfigurationError when a file cannot be read."""
    if isinstance(policies, str):
        return [Source("<policies>", policies)]
    paths = [policies] if isinstance(policies, os.PathLike) else list(policies)
    if not paths:
        raise ConfigurationError("no policy files given")
    out = []
    for p in paths:
        if isinstance(p, str):
            p = Path(p)
        try:
            out.append(Source(os.fspath(p), Path(p).read_text(encoding="utf-8")))
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigurationError(f"cannot read policy file {os.fspath(p)}: {exc}") from None
    return out


def load_schema(schema: SchemaInput) -> tuple[cedarpy.Schema, str]:
    """A parsed schema and a name for messages. JSON when given a mapping, a
    ``.json`` file or text starting with ``{``; Cedar schema syntax otherwise."""
    if isinstance(schema, Mapping):
        name, text, is_json = "<schema>", json.dumps(schema), True
    elif isinstance(schema, os.PathLike):
        name = os.fspath(schema)
        try:
            text = Path(schema).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigurationError(f"cannot read schema file {name}: {exc}") from None
        is_json = name.endswith(".json") or text.lstrip().startswith("{")
    elif isinstance(schema, str):
        name, text = "<schema>", schema
        is_json = text.lstrip().startswith("{")
    else:
        raise ConfigurationError("schema must be Cedar or JSON schema text, a mapping or a path")
    if not is_json:
        check_nesting(text, f"Cedar schema {name}")
    try:
        parsed = cedarpy.Schema.from_json_str(text) if is_json else cedarpy.Schema.from_str(text)
    except ValueError as exc:
        kind = "JSON" if is_json else "Cedar"
        raise ConfigurationError(f"invalid {kind} schema {name}: {exc}") from None
    return parsed, name


def load_entities(
    entities: EntitiesInput | None, schema: cedarpy.Schema, principal_type: str
) -> tuple[cedarpy.Entities | None, frozenset[tuple[str, str]]]:
    """Static entities (a tenant/role hierarchy…) parsed once and validated
    against the schema, and the set of their uids as ``(type, id)``. They may
    not include ``principal_type``: axess builds the principal per request."""
    if entities is None:
        return None, frozenset()
    if isinstance(entities, os.PathLike):
        try:
            text = Path(entities).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigurationError(f"cannot read entities file {entities}: {exc}") from None
    elif isinstance(entities, str):
        text = entities
    else:
        text = json.dumps([e.json() if isinstance(e, Entity) else dict(e) for e in entities])
    try:
        raw = json.loads(text)
        uids = frozenset((e["uid"]["type"], e["uid"]["id"]) for e in raw)
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigurationError(f"invalid static entities: {exc}") from None
    if any(t == principal_type for t, _ in uids):
        raise ConfigurationError(
            f"static entities may not include {principal_type} entities: axess builds "
            "the principal from the session on every request"
        )
    try:
        handle = cedarpy.Entities.from_json_str(text, schema)
    except ValueError as exc:
        raise ConfigurationError(f"invalid static entities: {exc}") from None
    return handle, uids


# -- scanning: policy boundaries, positions and annotations -----------------------
def check_nesting(text: str, what: str, where: Callable[[int], str] | None = None) -> None:
    """Refuse ``text`` (Cedar policies or schema) nested deeper than
    :data:`MAX_NESTING`, before cedarpy parses it. ``where`` maps an offset
    to a position for the message (default: ``line:column``)."""
    depth = ifs = 0
    problem = ""
    for m in _NESTING_TOKENS.finditer(text):
        tok = m.group()
        if tok in ("(", "[", "{"):
            depth += 1
            if depth > MAX_NESTING:
                problem = f"more than {MAX_NESTING} nested parentheses, brackets or braces"
        elif tok in (")", "]", "}"):
            depth = max(0, depth - 1)
        elif tok == ";" and depth == 0:
            ifs = 0  # the next policy
        elif tok == "if":
            ifs += 1
            if ifs > MAX_NESTING:
                problem = f"more than {MAX_NESTING} `if` in one policy"
        if problem:
            at = where(m.start()) if where is not None else _line_column(text, m.start())
            raise ConfigurationError(
                f"{what} at {at}: {problem} (the limit keeps cedarpy's parser from "
                "overflowing its stack, which would crash the process)"
            )


def _line_column(text: str, offset: int) -> str:
    line = text.count("\n", 0, offset) + 1
    return f"{line}:{offset - (text.rfind(chr(10), 0, offset) + 1) + 1}"


def _skip_trivia(text: str, i: int) -> int:
    """Index of the next character that is not whitespace or a ``//`` comment."""
    n = len(text)
    while i < n:
        if text[i].isspace():
            i += 1
        elif text.startswith("//", i):
            nl = text.find("\n", i)
            i = n if nl < 0 else nl + 1
        else:
            break
    return i


def _skip_string(text: str, i: int) -> int:
    """Index just after the string literal starting at ``text[i] == '"'``."""
    i += 1
    n = len(text)
    while i < n:
        if text[i] == "\\":
            i += 2
        elif text[i] == '"':
            return i + 1
        else:
            i += 1
    return n


def _read_annotations(text: str, i: int, end: int) -> dict[str, str]:
    out: dict[str, str] = {}
    while True:
        i = _skip_trivia(text, i)
        if i >= end or text[i] != "@":
            return out
        j = i + 1
        while j < end and (text[j].isalnum() or text[j] == "_"):
            j += 1
        name, value = text[i + 1 : j], ""
        k = _skip_trivia(text, j)
        if k < end and text[k] == "(":
            s = _skip_trivia(text, k + 1)
            if s < end and text[s] == '"':
                e = _skip_string(text, s)
                value = text[s + 1 : e - 1]
                k = _skip_trivia(text, e)
            if k < end and text[k] == ")":
                j = k + 1
        out[name] = value
        i = j


def split_policies(text: str) -> list[Chunk]:
    """The policies and templates of ``text`` in source order (Cedar numbers
    them ``policy0``, ``policy1``… in this order), split at top-level ``;``."""
    chunks = []
    i, n = _skip_trivia(text, 0), len(text)
    while i < n:
        start, j = i, i
        while j < n and text[j] != ";":
            if text[j] == '"':
                j = _skip_string(text, j)
            elif text.startswith("//", j):
                nl = text.find("\n", j)
                j = n if nl < 0 else nl
            else:
                j += 1
        end = min(j + 1, n)
        chunks.append(Chunk(start, end, _read_annotations(text, start, end)))
        i = _skip_trivia(text, end)
    return chunks


class _Positions:
    """Maps offsets in the concatenated text back to ``source:line:column``."""

    def __init__(self, sources: Sequence[Source]) -> None:
        self.sources = sources
        self.starts = []
        offset = 0
        for s in sources:
            self.starts.append(offset)
            offset += len(s.text) + 1  # the joining newline

    def __call__(self, offset: int) -> str:
        idx = 0
        for k, start in enumerate(self.starts):
            if start <= offset:
                idx = k
        src = self.sources[idx]
        local = offset - self.starts[idx]
        line = src.text.count("\n", 0, local) + 1
        col = local - (src.text.rfind("\n", 0, local) + 1) + 1
        return f"{src.name}:{line}:{col}"


# -- compiling ---------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class CompiledPolicies:
    """A validated policy set, immutable: a reload swaps the whole object."""

    policy_set: cedarpy.PolicySet
    schema: cedarpy.Schema
    sources: tuple[Source, ...]
    links: tuple[TemplateLink, ...]
    #: Cedar policy id → the name logs and audit events use (its ``@id``, else the id).
    names: Mapping[str, str]
    #: Cedar ids of permit policies (and template links) marked ``@cross_tenant``.
    cross_tenant: frozenset[str]
    #: Short hash of the policy text and links (logged on load and reload).
    digest: str

    def name(self, policy_id: str) -> str:
        return self.names.get(policy_id, policy_id)


def _describe(policy_id: str, chunks: Sequence[Chunk], where: _Positions) -> str:
    if policy_id.startswith("policy") and policy_id[6:].isdigit():
        k = int(policy_id[6:])
        if k < len(chunks):
            annotated = chunks[k].annotations.get("id")
            label = f'{policy_id} (@id("{annotated}"))' if annotated is not None else policy_id
            return f"{label} at {where(chunks[k].start)}"
    return policy_id or "policy set"


def _parse_error(text: str, chunks: Sequence[Chunk], where: _Positions, exc: Exception) -> str:
    """Find the policy that fails to parse on its own and say where it is."""
    for k, chunk in enumerate(chunks):
        try:
            cedarpy.PolicySet.from_str(text[chunk.start : chunk.end])
        except ValueError as inner:
            return f"  policy{k} at {where(chunk.start)}: parse error: {inner}"
    return f"  parse error: {exc}"


def compile_policies(
    sources: Sequence[Source],
    schema: cedarpy.Schema,
    schema_name: str,
    links: Sequence[TemplateLink] = (),
) -> CompiledPolicies:
    """Parse, validate and link. Raises ConfigurationError listing every error."""
    text = "\n".join(s.text for s in sources)
    chunks = split_policies(text)
    where = _Positions(sources)
    check_nesting(text, "Cedar policies", where)
    try:
        base = cedarpy.PolicySet.from_str(text)
    except ValueError as exc:
        raise ConfigurationError(
            "Cedar policies do not parse:\n" + _parse_error(text, chunks, where, exc)
        ) from None
    result = cedarpy.validate_policies(text, schema)
    if not result.validation_passed:
        lines = [
            f"  {_describe(e.policy_id, chunks, where)}: {e.error}" for e in result.errors
        ] or ["  (cedarpy gave no details)"]
        raise ConfigurationError(
            f"Cedar policies do not validate against the schema {schema_name} "
            f"({len(result.errors)} error(s)):\n" + "\n".join(lines)
        )
    annotations, effects, templates = _annotations(base, text, chunks)
    seen: dict[str, str] = {}
    for pid, ann in annotations.items():
        if "id" in ann:
            if ann["id"] in seen:
                raise ConfigurationError(
                    f'@id("{ann["id"]}") names two policies: {seen[ann["id"]]} and {pid}'
                )
            seen[ann["id"]] = pid
    names = {pid: ann.get("id") or pid for pid, ann in annotations.items()}
    cross = {pid for pid, ann in annotations.items() if CROSS_TENANT in ann}
    for pid in cross:
        if effects.get(pid) == "forbid":
            raise ConfigurationError(
                f"@{CROSS_TENANT} on the forbid policy {names[pid]}: only permits can carry it"
            )
    policy_set = base
    if links:
        for link in links:
            if link.id in names or link.id in seen:
                raise ConfigurationError(f"template link id {link.id!r} is already a policy id")
        try:
            policy_set = base.with_linked_batch(
                [{"template_id": k.template, "new_id": k.id, "values": k.values()} for k in links]
            )
        except (ValueError, KeyError) as exc:
            raise ConfigurationError(f"cannot link templates: {exc}") from None
        refs = {t: t for t in templates}
        refs.update({a: pid for a, pid in seen.items() if pid in templates})
        for link in links:
            names[link.id] = link.id
            if refs.get(link.template) in cross:
                cross.add(link.id)
    digest = hashlib.sha256(
        (text + json.dumps([[k.template, k.id, k.values()] for k in links])).encode()
    ).hexdigest()[:12]
    return CompiledPolicies(
        policy_set, schema, tuple(sources), tuple(links), names, frozenset(cross), digest
    )


def _annotations(
    ps: cedarpy.PolicySet, text: str, chunks: Sequence[Chunk]
) -> tuple[dict[str, dict[str, str]], dict[str, str], set[str]]:
    """Annotations and effect (``permit``/``forbid``) of every policy and
    template by Cedar id, and the template ids. From cedarpy's typed nodes;
    from the scanner when cedarpy cannot represent the set as nodes (syntax
    newer than its node types)."""
    try:
        pst = ps.to_pst()
    except ValueError:
        logger.info("cedarpy cannot render this policy set as nodes; reading annotations as text")
        annotations, effects = {}, {}
        for k, c in enumerate(chunks):
            pid = f"policy{k}"
            annotations[pid] = dict(c.annotations)
            body = text[c.start : c.end]
            forbid, permit = body.find("forbid"), body.find("permit")
            effects[pid] = "forbid" if 0 <= forbid and (permit < 0 or forbid < permit) else "permit"
        return annotations, effects, {t["id"] for t in ps.templates()}
    nodes = {**pst.templates, **pst.static_policies}
    return (
        {pid: dict(node.annotations) for pid, node in nodes.items()},
        {pid: str(node.effect) for pid, node in nodes.items()},
        set(pst.templates),
    )
