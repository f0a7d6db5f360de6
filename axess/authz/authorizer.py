"""``CedarAuthorizer``: Cedar decisions for requests that carry an axess session.

Contract (book: Authorization):

* Policies and schema are parsed once and validated at construction; an
  invalid set raises :class:`~axess.errors.ConfigurationError` listing every
  error. :meth:`CedarAuthorizer.require` refuses an action the schema does
  not declare. :meth:`CedarAuthorizer.reload` validates a new set first and
  keeps the old one when the new one is invalid or no longer declares an
  action such a guard names.
* A decision never raises into the request: a policy that errors at run
  time, a request the schema rejects, or an app callback that fails is a
  deny, a WARNING log line and ``metrics.authz_error()``.
* The tenancy rail: a principal of tenant A is denied a resource of tenant B
  unless a permit policy annotated ``@cross_tenant`` is among the policies
  that allowed it.
* Every denial of an authenticated request emits ``authz_denied`` (the
  deciding policy ids and errors; never entity attributes) to the audit
  pipeline; every decision counts ``metrics.authz_decision(outcome)`` and
  is logged at DEBUG on ``axess.authz.decision`` with its latency.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import re
import time
import traceback
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import cedarpy
from starlette.exceptions import HTTPException
from starlette.requests import HTTPConnection

from axess.authz import model as m
from axess.authz.policies import (
    CompiledPolicies,
    EntitiesInput,
    PolicyInput,
    SchemaInput,
    Source,
    TemplateLink,
    compile_policies,
    load_entities,
    load_schema,
    read_policy_sources,
)
from axess.clock import Clock, Random, SystemClock, SystemRandom
from axess.errors import ConfigurationError, StoreError
from axess.net import client_ip
from axess.observability.metrics import AuthnMetrics, NoopMetrics
from axess.session import data as d
from axess.session.handle import get_session
from axess.stack import route_path

if TYPE_CHECKING:
    from axess.audit.pipeline import AuditPipeline
    from axess.authz.guards import AuthzGuard

logger = logging.getLogger(__name__)
#: One DEBUG line per decision, with its latency.
decision_logger = logging.getLogger("axess.authz.decision")

#: What an app's role/group callback may return per parent.
ParentSpec = m.EntityUid | str
RolesCallback = Callable[[str, str], Iterable[ParentSpec] | Awaitable[Iterable[ParentSpec]]]
ResourceAnswer = m.Resource | m.Entity | m.EntityUid | None
ResourceCallback = Callable[[HTTPConnection], ResourceAnswer | Awaitable[ResourceAnswer]]
ResourceSpec = m.Resource | m.Entity | m.EntityUid | str | ResourceCallback
ContextCallback = Callable[[HTTPConnection], Mapping[str, Any] | Awaitable[Mapping[str, Any]]]

_PRINCIPAL_KEY: Final = "axess.authz.principal"
_RESOURCES_KEY: Final = "axess.authz.resources"
_MAX_ERROR_CHARS: Final = 500
#: How many actions' schema checks are remembered per schema (an app names
#: a handful; the bound keeps callers passing arbitrary text from growing it).
_MAX_KNOWN_ACTIONS: Final = 1024
#: Cedar's validator prefixes each error with the (synthetic) policy it is about.
_POLICY_PREFIX: Final = re.compile(r"^for policy `[^`]*`, ")


@dataclass(frozen=True, slots=True)
class AuthzDecision:
    """One decision. Truthy when allowed.

    ``reason``: ``allow``; ``forbid`` (a forbid policy matched);
    ``no_permit`` (no permit matched); ``tenant_rail`` (allowed by Cedar,
    refused because the resource belongs to another tenant);
    ``error`` (evaluation failed: deny); ``unauthenticated``;
    ``no_resource`` (the resource callback found nothing).
    ``policies`` are the determining policies' names (their ``@id``, else
    Cedar's id); ``errors`` are Cedar's or the failure's messages.
    """

    allowed: bool
    reason: str
    action: m.EntityUid
    resource: m.Resource | None = None
    policies: tuple[str, ...] = ()
    errors: tuple[str, ...] = ()
    latency_us: float = 0.0

    def __bool__(self) -> bool:
        return self.allowed


class CedarAuthorizer:
    """Authorizes requests with a Cedar policy set validated against a schema.

    * ``policies``: Cedar text (``str``), a file path, or a sequence of paths.
    * ``schema``: Cedar schema text, JSON schema text, a JSON mapping or a
      path (``.json`` → JSON format).
    * ``entities``: static entities (roles, tenants, a group hierarchy) as
      :class:`~axess.authz.model.Entity` objects, Cedar JSON entity dicts,
      JSON text or a path; parsed once, validated against the schema.
    * ``namespace``: the schema namespace of axess's types (``App`` →
      ``App::User``, ``App::Tenant``, ``App::Action``, ``App::Role``); the
      type names themselves are ``principal_type``, ``tenant_type``,
      ``action_type`` and ``role_type``.
    * ``roles``: ``(user_id, tenant) -> roles/groups`` (sync or async),
      called once per request; bare strings are ``role_type`` ids, or return
      :class:`EntityUid` / uid text (``Group::"eng"``). They become the
      principal's parents, so ``principal in Role::"admin"`` works.
    * ``context``: ``(request) -> extra context attributes`` (sync or async).
    * ``template_links``: :class:`TemplateLink` s applied at load.
    * ``default_tenant``: the tenant of sessions without one.
    * ``strict``: pass the schema to every decision too (requests and
      entities type-checked by Cedar; a mismatch is a deny with an error).

    Raises :class:`ConfigurationError` for an invalid policy set, schema,
    static entities or type names.
    """

    def __init__(
        self,
        *,
        policies: PolicyInput,
        schema: SchemaInput,
        entities: EntitiesInput | None = None,
        namespace: str | None = None,
        principal_type: str = "User",
        tenant_type: str = "Tenant",
        action_type: str = "Action",
        role_type: str = "Role",
        roles: RolesCallback | None = None,
        context: ContextCallback | None = None,
        template_links: Sequence[TemplateLink] = (),
        default_tenant: str = "default",
        strict: bool = True,
        metrics: AuthnMetrics | None = None,
        audit: AuditPipeline | None = None,
        clock: Clock | None = None,
        random: Random | None = None,
    ) -> None:
        try:
            self.types = m.Types.build(
                namespace,
                user=principal_type,
                tenant=tenant_type,
                action=action_type,
                role=role_type,
            )
        except ValueError as exc:
            raise ConfigurationError(str(exc)) from None
        self._policy_input = policies
        self._schema_input = schema
        self._entities_input = entities
        schema_handle, self._schema_name = load_schema(schema)
        self._static, self._static_uids = load_entities(entities, schema_handle, self.types.user)
        self._compiled = compile_policies(
            read_policy_sources(policies), schema_handle, self._schema_name, template_links
        )
        #: Actions the guards built by :meth:`require` name: a reload must keep them.
        self._guarded: set[m.EntityUid] = set()
        #: (schema, action -> why no request can name it, None when one can).
        self._actions: tuple[cedarpy.Schema | None, dict[m.EntityUid, str | None]] = (None, {})
        self.roles = roles
        self.context = context
        self.default_tenant = default_tenant
        self.strict = strict
        self.metrics: AuthnMetrics = metrics or NoopMetrics()
        self.audit = audit
        self.clock: Clock = clock or SystemClock()
        self.random: Random = random or SystemRandom()
        logger.info(
            "Cedar policy set %s loaded (%d policies and links)",
            self._compiled.digest,
            len(self._compiled.policy_set),
        )

    @classmethod
    def from_files(
        cls,
        policies: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
        schema: str | os.PathLike[str],
        **kwargs: Any,
    ) -> CedarAuthorizer:
        """Load policies and schema from files (plain strings are paths here)."""
        paths = (
            [os.fspath(policies)]
            if isinstance(policies, str | os.PathLike)
            else [os.fspath(p) for p in policies]
        )
        return cls(policies=[Path(p) for p in paths], schema=Path(os.fspath(schema)), **kwargs)

    def bind(
        self,
        *,
        clock: Clock,
        random: Random,
        metrics: AuthnMetrics,
        audit: AuditPipeline | None,
    ) -> None:
        """Use the app's clock, randomness, metrics and audit pipeline (``Axess`` calls this)."""
        self.clock, self.random, self.metrics = clock, random, metrics
        if audit is not None:
            self.audit = audit

    # -- policy set lifecycle ---------------------------------------------------------
    @property
    def policies(self) -> CompiledPolicies:
        """The policy set in use (immutable; a reload replaces it)."""
        return self._compiled

    def reload(
        self,
        policies: PolicyInput | None = None,
        schema: SchemaInput | None = None,
        *,
        template_links: Sequence[TemplateLink] | None = None,
    ) -> CompiledPolicies:
        """Validate a new policy set, then switch to it atomically.

        Without arguments the original sources are read again (files
        re-read). Raises :class:`ConfigurationError` and keeps the current
        set when the new one is invalid. Decisions already running finish on
        the set they started with.
        """
        old = self._compiled
        try:
            if schema is not None:
                schema_handle, schema_name = load_schema(schema)
            elif isinstance(self._schema_input, os.PathLike):
                schema_handle, schema_name = load_schema(self._schema_input)
            else:
                schema_handle, schema_name = old.schema, self._schema_name
            sources: Sequence[Source] = read_policy_sources(
                policies if policies is not None else self._policy_input
            )
            links = old.links if template_links is None else template_links
            new = compile_policies(sources, schema_handle, schema_name, links)
            lost = sorted(
                f"{uid.cedar()} ({why})"
                for uid in self._guarded
                if (why := self._action_problem(new.schema, uid)) is not None
            )
            if lost:
                raise ConfigurationError(
                    f"the schema {schema_name} no longer declares actions guards use: "
                    + "; ".join(lost)
                )
        except ConfigurationError as exc:
            logger.error("Cedar policy reload refused, keeping policy set %s: %s", old.digest, exc)
            raise
        if policies is not None:
            self._policy_input = policies
        if schema is not None:
            self._schema_input, self._schema_name = schema, schema_name
        self._compiled = new
        logger.info("Cedar policy set %s replaced by %s", old.digest, new.digest)
        return new

    def link(self, *links: TemplateLink) -> CompiledPolicies:
        """Add template links (validated like a reload; nothing changes on error)."""
        return self.reload(template_links=(*self._compiled.links, *links))

    def unlink(self, *link_ids: str) -> CompiledPolicies:
        """Remove template links by id."""
        keep = tuple(k for k in self._compiled.links if k.id not in link_ids)
        return self.reload(template_links=keep)

    # -- decisions ----------------------------------------------------------------------
    def action_uid(self, action: m.EntityUid | str) -> m.EntityUid:
        """``Action::"view"`` text, a bare ``"view"`` or a uid, as a uid of
        the action type (a bare name, or text naming type ``Action``,
        gets the namespace)."""
        if isinstance(action, m.EntityUid):
            return action
        uid = m.to_uid(action, self.types.action)
        if uid.type == "Action" and self.types.action != "Action":
            return m.EntityUid(self.types.action, uid.id)
        return uid

    def check_action(self, action: m.EntityUid | str) -> m.EntityUid:
        """The action's uid (see :meth:`action_uid`), if a request can name it:
        the schema declares it for some principal and resource. Raises
        :class:`ConfigurationError` otherwise (a typo, an action group, a uid
        of another type, malformed text)."""
        try:
            uid = self.action_uid(action)
        except (ValueError, TypeError) as exc:
            raise ConfigurationError(f"{action!r} is not an action: {exc}") from None
        why = self._action_problem(self._compiled.schema, uid)
        if why is not None:
            raise ConfigurationError(
                f"action {uid.cedar()} is not declared in the schema {self._schema_name} "
                f"for any principal and resource: {why}"
            )
        return uid

    def _action_problem(self, schema: cedarpy.Schema, uid: m.EntityUid) -> str | None:
        """Why no request can name ``uid`` under ``schema``; ``None`` when one can.

        Cedar's validator is the judge (the schema handle cannot be queried):
        a policy scoped to exactly this action validates only when the schema
        declares the action for some principal and resource. Answers are
        remembered per schema, a bounded number of them.
        """
        known_schema, known = self._actions
        if known_schema is not schema:
            known = {}
            self._actions = (schema, known)
        if uid in known:
            return known[uid]
        probe = f"permit (principal, action == {uid.cedar()}, resource);"
        try:
            result = cedarpy.validate_policies(probe, schema)
            why = (
                None
                if result.validation_passed
                else "; ".join(_POLICY_PREFIX.sub("", e.error) for e in result.errors)
                or "refused by the validator"
            )
        except ValueError as exc:
            why = str(exc)
        if len(known) < _MAX_KNOWN_ACTIONS:
            known[uid] = why
        return why

    def evaluate(
        self,
        principal: m.Principal,
        action: m.EntityUid | str,
        resource: m.Resource | m.Entity | m.EntityUid,
        *,
        ip: str = "0.0.0.0",  # noqa: S104 - a context value, never bound
        method: str = "GET",
        path: str = "/",
        now: float | None = None,
        extra_context: Mapping[str, Any] | None = None,
    ) -> AuthzDecision:
        """A decision from plain values, without a request: what the guards use
        and what tests of policies call. Never raises once the action is
        read: a resource that is not one, input Cedar refuses, or any other
        exception while deciding is a deny with reason ``error``."""
        start = time.perf_counter()
        action_uid = self.action_uid(action)
        compiled = self._compiled
        res: m.Resource | None = None
        try:
            res = m.as_resource(resource)
            # Cedar alone says nothing about an undeclared action without the
            # schema (a quiet no_permit), and something vaguer with it.
            why = self._action_problem(compiled.schema, action_uid)
            if why is not None:
                return self._finish(
                    start,
                    compiled,
                    action_uid,
                    res,
                    False,
                    "error",
                    (),
                    (_short(f"action {action_uid.cedar()} is not in the schema: {why}"),),
                )
            context = m.context_record(
                principal,
                ip=ip,
                method=method,
                path=path,
                now=self.clock.time() if now is None else now,
                extra=extra_context,
            )
            request = {
                "principal": {"type": self.types.user, "id": principal.user},
                "action": action_uid.json(),
                "resource": res.entity.uid.json(),
                "context": context,
            }
            entities = self._entities(
                m.principal_entity(principal, self.types), res, compiled.schema
            )
            result = cedarpy.is_authorized(
                request,
                compiled.policy_set,
                entities,
                schema=compiled.schema if self.strict else None,
            )
            # Read inside the ``try``: a tenant the rail cannot read (malformed
            # uid text, say) must deny, not escape as an exception.
            tenant = m.tenant_of(res.entity, self.types.tenant) if result.allowed else None
            diag = result.diagnostics
            ids = tuple(diag.reasons)
            errors = tuple(_short(e) for e in diag.errors)
        except (ValueError, TypeError, RecursionError) as exc:  # Cedar refused the input
            return self._finish(
                start, compiled, action_uid, res, False, "error", (), (_short(str(exc)),)
            )
        except Exception as exc:
            # Not input Cedar refused but a failure (an app mapping whose
            # ``items()`` raises, a bug): still a deny, never a 500. Its message
            # may quote app data, so the decision and the log keep only the
            # exception's type and where it was raised.
            return self._finish(
                start, compiled, action_uid, res, False, "error", (), (_unexpected(exc),)
            )
        if result.allowed:
            if tenant is not None and tenant != principal.tenant:
                if not compiled.cross_tenant.intersection(ids):
                    return self._finish(
                        start, compiled, action_uid, res, False, "tenant_rail", ids, errors
                    )
            return self._finish(start, compiled, action_uid, res, True, "allow", ids, errors)
        if result.decision == cedarpy.Decision.Deny:
            reason = "forbid" if ids else ("error" if errors else "no_permit")
        else:
            reason = "error"
        return self._finish(start, compiled, action_uid, res, False, reason, ids, errors)

    def _entities(self, principal: m.Entity, res: m.Resource, schema: cedarpy.Schema) -> Any:
        """The request's entities: principal, resource and related entities
        (first occurrence of a uid wins; static entities are not repeated).
        Strict mode type-checks them against the schema."""
        seen: set[tuple[str, str]] = set(self._static_uids)
        delta = []
        for ent in (principal, res.entity, *res.related):
            key = (ent.uid.type, ent.uid.id)
            if key not in seen:
                seen.add(key)
                delta.append(ent.json())
        check = schema if self.strict else None
        # A parsed handle, even for a one-off set: cedarpy decides faster on a
        # handle than on entity JSON text (benchmarks.authz).
        if self._static is None:
            return cedarpy.Entities.from_json_str(json.dumps(delta), check)
        if not delta:
            return self._static
        return self._static.with_added_json_str(json.dumps(delta), check)

    def _finish(
        self,
        start: float,
        compiled: CompiledPolicies,
        action: m.EntityUid,
        res: m.Resource | None,
        allowed: bool,
        reason: str,
        ids: tuple[str, ...],
        errors: tuple[str, ...],
    ) -> AuthzDecision:
        latency = (time.perf_counter() - start) * 1e6
        names = tuple(compiled.name(i) for i in ids)
        decision = AuthzDecision(allowed, reason, action, res, names, errors, latency)
        _count(self.metrics, "allow" if allowed else "deny")
        if errors:
            _count_error(self.metrics)
            logger.warning(
                "Cedar evaluation error(s) for %s on %s (%s): %s",
                action.cedar(),
                res.entity.uid.type if res is not None else "-",
                "allowed" if allowed else "denied",
                "; ".join(errors),
            )
        if decision_logger.isEnabledFor(logging.DEBUG):
            decision_logger.debug(
                "%s %s %s policies=%s latency_us=%.1f",
                "allow" if allowed else "deny",
                reason,
                action.cedar(),
                ",".join(names) or "-",
                latency,
            )
        return decision

    # -- requests -------------------------------------------------------------------------
    async def is_authorized(
        self,
        conn: HTTPConnection,
        action: m.EntityUid | str,
        resource: ResourceSpec,
    ) -> AuthzDecision:
        """The decision for this request's session. An unauthenticated session
        gets ``reason="unauthenticated"`` (no Cedar call, no audit event);
        every other denial emits ``authz_denied``. Never raises, except
        ``HTTPException`` (e.g. a 404) and ``StoreError`` from the app's
        callbacks, which are the app's to answer."""
        action_uid = self.action_uid(action)
        session = get_session(conn)
        state = session.auth_state
        if not isinstance(state, d.Authenticated):
            return AuthzDecision(False, "unauthenticated", action_uid)
        try:
            principal = await self._principal(conn, state)
            res = await self._resource(conn, resource)
            extra = await _maybe_await(self.context(conn)) if self.context is not None else None
        except (HTTPException, StoreError):
            raise
        except Exception as exc:
            _count(self.metrics, "deny")
            _count_error(self.metrics)
            logger.warning(
                "authorization input failed for %s (%s: %s): denied",
                action_uid.cedar(),
                type(exc).__name__,
                exc,
                exc_info=True,
            )
            decision = AuthzDecision(
                False, "error", action_uid, None, (), (_short(f"{type(exc).__name__}: {exc}"),)
            )
            self._audit_denial(conn, session.storage_key, state, decision)
            return decision
        if res is None:
            decision = AuthzDecision(False, "no_resource", action_uid)
            _count(self.metrics, "deny")
        else:
            decision = self.evaluate(
                principal,
                action_uid,
                res,
                ip=client_ip(conn),
                method=conn.scope.get("method", "GET"),
                path=route_path(conn.scope),  # as the router and the rate limits see it
                extra_context=extra,
            )
        if not decision.allowed:
            self._audit_denial(conn, session.storage_key, state, decision)
        return decision

    def require(
        self,
        action: m.EntityUid | str,
        *,
        resource: ResourceSpec,
        login_url: str | None = None,
    ) -> AuthzGuard:
        """A guard: a FastAPI dependency (``Depends(authz.require(...))``) and a
        Starlette decorator. 401 for an unauthenticated session (or a
        redirect with ``login_url``), 403 on denial.

        Raises :class:`ConfigurationError` when the schema does not declare
        the action (see :meth:`check_action`); a later :meth:`reload` must
        keep declaring it."""
        from axess.authz.guards import AuthzGuard

        uid = self.check_action(action)
        self._guarded.add(uid)
        return AuthzGuard(uid, resource=resource, authorizer=self, login_url=login_url)

    async def _principal(self, conn: HTTPConnection, state: d.Authenticated) -> m.Principal:
        """The principal, built once per request (roles callback included)."""
        cache = conn.scope.setdefault("state", {})
        hit = cache.get(_PRINCIPAL_KEY)
        if hit is not None and hit[0] is self and hit[1] == state:
            principal: m.Principal = hit[2]
            return principal
        tenant = state.tenant or self.default_tenant
        parents: tuple[m.EntityUid, ...] = ()
        if self.roles is not None:
            found = await _maybe_await(self.roles(state.user, tenant))
            parents = tuple(m.to_uid(r, self.types.role) for r in found)
        principal = m.Principal(state.user, tenant, state.factors, state.authn_time, parents)
        cache[_PRINCIPAL_KEY] = (self, state, principal)
        return principal

    async def _resource(self, conn: HTTPConnection, spec: ResourceSpec) -> m.Resource | None:
        """The resource, loaded once per request per callback."""
        if isinstance(spec, m.Resource | m.Entity | m.EntityUid):
            return m.as_resource(spec)
        if isinstance(spec, str):
            return m.as_resource(m.parse_uid(spec))
        cache: dict[Any, m.Resource | None] = conn.scope.setdefault("state", {}).setdefault(
            _RESOURCES_KEY, {}
        )
        if spec in cache:
            return cache[spec]
        answer = await _maybe_await(spec(conn))
        res = None if answer is None else m.as_resource(answer)
        cache[spec] = res
        return res

    def _audit_denial(
        self,
        conn: HTTPConnection,
        storage_key: str | None,
        state: d.Authenticated,
        decision: AuthzDecision,
    ) -> None:
        if self.audit is None:
            return
        from axess.audit.events import AuthEvent

        res = decision.resource
        try:
            self.audit.emit(
                AuthEvent.create(
                    "authz_denied",
                    clock=self.clock,
                    random=self.random,
                    tenant=state.tenant,
                    user=state.user,
                    session=storage_key,
                    ip=client_ip(conn),
                    user_agent=_header(conn, "user-agent"),
                    reason=decision.reason,
                    extras={
                        "action": decision.action.cedar(),
                        "resource": res.entity.uid.cedar() if res is not None else None,
                        "policies": list(decision.policies),
                        "errors": list(decision.errors),
                        "method": conn.scope.get("method"),
                        "path": conn.scope.get("path"),
                    },
                )
            )
        except Exception:  # never let auditing turn a 403 into a 500
            logger.exception("could not emit authz_denied")


#: The spec's name for the same object (``AuthzStore.from_files(policies, schema)``).
AuthzStore = CedarAuthorizer


def _count(metrics: AuthnMetrics, outcome: str) -> None:
    """``metrics.authz_decision`` (absent on metrics written before it existed)."""
    count = getattr(metrics, "authz_decision", None)
    if count is not None:
        count(outcome)


def _count_error(metrics: AuthnMetrics) -> None:
    count = getattr(metrics, "authz_error", None)
    if count is not None:
        count()


async def _maybe_await(value: Any) -> Any:
    if inspect.isawaitable(value):
        return await value
    return value


def _header(conn: HTTPConnection, name: str) -> str | None:
    value = conn.headers.get(name)
    return value[:512] if value else None


def _unexpected(exc: BaseException) -> str:
    """``unexpected <type> at <file>:<line>`` (innermost frame), no message."""
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" at {Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else ""
    return f"unexpected {type(exc).__name__}{where}"


def _short(text: str) -> str:
    return text if len(text) <= _MAX_ERROR_CHARS else text[: _MAX_ERROR_CHARS - 1] + "…"
