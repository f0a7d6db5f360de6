"""``auth_router``: JSON authentication routes for FastAPI (book: FastAPI auth routes).

::

    app = FastAPI(lifespan=auth.lifespan)
    auth.install(app)
    app.include_router(auth_router(auth))  # /auth/login, /auth/me, …

The routes only translate HTTP to the services an ``Axess`` already has:
logins and step-up checks go through :class:`~axess.authn.service.AuthnService`
(lockout, guess budget, audit events), factor changes through
:class:`~axess.authn.users.UserAdmin`, sessions through the registry. They run
inside the stack ``auth.install`` adds, so rate limits and CSRF apply to them
as to any other route. Refusals use the one JSON shape
``{"error", "detail", "retry_after"?}`` (:class:`Refusal`).

Changes to a user's factors need a fresh proof besides the session (a stolen
cookie alone must not be enough): enrolling TOTP asks for the password;
disabling TOTP and regenerating recovery codes ask for a current TOTP code or
a recovery code (:meth:`~axess.authn.service.AuthnService.reverify`).

This is the one module of axess that imports FastAPI and Pydantic (the
``fastapi`` extra).
"""

import logging
import math
from collections.abc import Callable, Coroutine, Iterable, Sequence
from typing import Annotated, Any, ClassVar, Final, Literal, Self

from fastapi import APIRouter, Depends, Path
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field, create_model, model_validator
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from axess import refusals
from axess.app import Axess
from axess.authn.guards import require_authn, require_partial_authn
from axess.authn.http import outcome_response, unavailable_response
from axess.authn.outcomes import (
    Authenticated,
    FactorRequired,
    InvalidCredentials,
    Locked,
    LoginOutcome,
)
from axess.authn.password import Password
from axess.authn.recovery import RecoveryCode
from axess.authn.service import AuthnService
from axess.authn.totp import TOTPCode
from axess.authn.users import UserAdmin
from axess.errors import ConfigurationError, StoreError
from axess.login_fields import LoginFields
from axess.ratelimit.keys import CompositeKey, Key, LoginIdentifierKey
from axess.session import data as d
from axess.session.csrf import csrf_token
from axess.session.events import KEY_PREFIX_CHARS
from axess.session.handle import Session, get_session
from axess.session.registry import SessionInfo
from axess.stack import replay_body

__all__ = [
    "CSRFTokenResponse",
    "CodeProof",
    "LoggedOut",
    "LoggedOutEverywhere",
    "LoginAuthenticated",
    "LoginFactorRequired",
    "LoginRequest",
    "Me",
    "PasswordProof",
    "RecoveryCodesResponse",
    "Refusal",
    "SessionEntry",
    "SessionList",
    "SessionRevoked",
    "TOTPCodeRequest",
    "TOTPDisabled",
    "TOTPEnabled",
    "TOTPEnrolmentResponse",
    "auth_router",
]

logger = logging.getLogger(__name__)

#: Largest request body the routes read (their bodies are a few hundred bytes).
MAX_BODY_BYTES: Final = 64 * 1024
#: Session custom-data key of the TOTP enrolment waiting for its first code.
TOTP_PENDING_KEY: Final = "_axess.totp_enrolment"
_NO_STORE: Final = {"Cache-Control": "no-store"}
_UNSAFE: Final = frozenset({"POST", "PUT", "PATCH", "DELETE"})

#: The session of a signed-in user (401 ``unauthenticated`` otherwise).
SignedIn = Annotated[Session, Depends(require_authn())]
#: The session of a login waiting for its second factor.
Authenticating = Annotated[Session, Depends(require_partial_authn())]


# -- models -------------------------------------------------------------------------
class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Refusal(BaseModel):
    """The JSON body of every refusal (book: Errors and refusals)."""

    error: str = Field(
        description="What went wrong, as a stable snake_case code.",
        examples=["invalid_credentials"],
    )
    detail: str = Field(description="One human sentence about it.")
    retry_after: int | None = Field(
        default=None,
        description="Seconds to wait before trying again; present exactly when the "
        "response carries a Retry-After header (429, 503).",
    )


class LoginRequest(_Request):
    """A login: the identifier (in the field(s) the rate limits read), the
    password and, for a multi-tenant app, the tenant. :func:`auth_router`
    adds the identifier field(s) it is configured with."""

    #: Attribute names of the identifier fields.
    identifier_fields: ClassVar[tuple[str, ...]] = ()

    password: str = Field(description="The password.", max_length=4096)
    tenant: str | None = Field(
        default=None, description="The tenant id; leave out for the default tenant."
    )

    @model_validator(mode="after")
    def _one_identifier(self) -> Self:
        names = self.identifier_fields
        if names and not any(getattr(self, name) for name in names):
            raise ValueError("fill in the login identifier")
        return self


class CodeProof(_Request):
    """A one-time code: a TOTP code, or one of the user's recovery codes."""

    code: str = Field(
        description="The 6-digit code of the authenticator app, or a recovery code "
        "(XXXXX-XXXXX; case, spaces and dashes are ignored).",
        max_length=64,
        examples=["123456"],
    )
    kind: Literal["totp", "recovery_code"] = Field(
        default="totp", description="Which kind of code ``code`` is."
    )


class PasswordProof(_Request):
    """The signed-in user's password, asked again before a factor changes."""

    password: str = Field(description="The current password.", max_length=4096)


class TOTPCodeRequest(_Request):
    """The first code the authenticator app shows for the new secret."""

    code: str = Field(description="The 6-digit code.", max_length=64, examples=["123456"])


class CSRFTokenResponse(BaseModel):
    csrf_token: str | None = Field(
        description="Send it back in the X-CSRF-Token header of every POST and DELETE "
        "(the response also sets it as the CSRF cookie, __Host-axess.csrf by default); "
        "null when the app runs without CSRF protection."
    )


class LoginAuthenticated(BaseModel):
    """The login is complete; the session id rotated with this response."""

    authenticated: Literal[True] = Field(default=True, description="Always true.")
    user_id: str = Field(description="The signed-in user.")
    tenant_id: str | None = Field(description="null for the default tenant.")
    factors: list[str] = Field(description="The factors proven, e.g. password, totp.")
    csrf_token: str | None = Field(
        description="The CSRF token for the new session (also in the cookie)."
    )


class LoginFactorRequired(BaseModel):
    """The password was right; the login needs a second factor next."""

    factor_required: str = Field(
        description="The next factor: totp (a recovery code is accepted instead)."
    )
    csrf_token: str | None = Field(description="The CSRF token for the next step.")


_AFTER_LOGOUT_DOC: Final = "The CSRF token for the guest session that follows (also in the cookie)."


class LoggedOut(BaseModel):
    logged_out: Literal[True] = Field(default=True, description="Always true.")
    csrf_token: str | None = Field(description=_AFTER_LOGOUT_DOC)


class LoggedOutEverywhere(BaseModel):
    sessions_ended: int = Field(description="Sessions ended, this one included.")
    csrf_token: str | None = Field(description=_AFTER_LOGOUT_DOC)


class Me(BaseModel):
    """Who this session belongs to. Nothing about the user is shown before the
    login is complete."""

    auth_state: Literal[
        "guest", "identifying", "authenticating", "authenticated", "pending_workflow"
    ] = Field(description="guest, authenticating (a second factor is due) or authenticated.")
    user_id: str | None = Field(default=None, description="Set once authenticated.")
    tenant_id: str | None = Field(default=None, description="null for the default tenant.")
    factors: list[str] = Field(
        default_factory=list, description="Factors proven by this session's login."
    )
    authenticated_at: float | None = Field(
        default=None, description="When the login completed (epoch seconds)."
    )
    factor_required: str | None = Field(
        default=None, description="While authenticating: the factor due next."
    )
    totp_enabled: bool | None = Field(
        default=None, description="Whether the user has TOTP (authenticated only)."
    )
    recovery_codes_remaining: int | None = Field(
        default=None, description="Unused recovery codes (authenticated only)."
    )


class SessionEntry(BaseModel):
    handle: str = Field(
        description=f"The first {KEY_PREFIX_CHARS} characters of the session's storage "
        "key (a hash of its id): enough to revoke it, useless as a cookie."
    )
    created_at: float = Field(description="When the session's login happened (epoch seconds).")
    last_seen_at: float | None = Field(description="Last request seen (epoch seconds).")
    expires_at: float = Field(description="When it ends unless used (epoch seconds).")
    device: str | None = Field(description="The User-Agent it was created with.")
    ip_prefix: str | None = Field(
        description="The network it was created from (/24 for IPv4, /64 for IPv6)."
    )
    current: bool = Field(description="Whether this is the session making the request.")


class SessionList(BaseModel):
    sessions: list[SessionEntry] = Field(description="Live sessions, oldest first.")


class SessionRevoked(BaseModel):
    revoked: str = Field(description="The handle of the ended session.")
    current: bool = Field(description="True when it was this session (now logged out).")
    csrf_token: str | None = Field(
        description="The CSRF token to use next (a new one when this session ended)."
    )


class TOTPEnrolmentResponse(BaseModel):
    """A new TOTP secret, not active until :class:`TOTPCodeRequest` confirms it."""

    otpauth_uri: str = Field(description="Show it as a QR code for the authenticator app.")
    secret: str = Field(description="The same secret in base32, for typing it in.")
    expires_in: int = Field(description="Seconds left to confirm it with a first code.")


class TOTPEnabled(BaseModel):
    totp_enabled: Literal[True] = Field(default=True, description="TOTP is now active.")
    recovery_codes: list[str] = Field(
        description="New single-use recovery codes, shown this once; earlier ones stop working."
    )


class TOTPDisabled(BaseModel):
    totp_enabled: Literal[False] = Field(default=False, description="TOTP is now off.")


class RecoveryCodesResponse(BaseModel):
    recovery_codes: list[str] = Field(
        description="New single-use recovery codes, shown this once; earlier ones stop working."
    )


# -- refusals -----------------------------------------------------------------------
_REFUSAL_DOCS: Final = {
    400: "Bad request: an ambiguous or oversized body (bad_request, ambiguous_identifier) "
    "or a wrong code (invalid_code).",
    401: "invalid_credentials (a wrong password or code) or unauthenticated (no login; "
    "on a login: newer logins took its place under max_sessions_per_user).",
    403: "csrf_failed: no valid X-CSRF-Token, or a request from another site.",
    404: "not_found: no such session of this user.",
    409: "conflict: the factor is not in the state this needs.",
    429: "locked (too many failed attempts) or rate_limited; see retry_after.",
    503: "service_unavailable: a store is down; see retry_after.",
}


def _responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {s: {"model": Refusal, "description": _REFUSAL_DOCS[s]} for s in statuses}


def _refusal(status: int, error: str, detail: str) -> Response:
    return refusals.RefusalResponse(refusals.Refusal(status, error, detail))


def _too_large() -> Response:
    return _refusal(400, "bad_request", "the request body is too large")


# -- the route class ----------------------------------------------------------------
class _AuthRoute(APIRoute):
    """Every auth route: a bounded body, ``Cache-Control: no-store``, and a
    store outage answered 503 rather than 500."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route_handler(request: Request) -> Response:
            if request.method in _UNSAFE:
                body = await _bounded_body(request)
                if body is None:
                    return _too_large()
                request = Request(request.scope, replay_body(body, request.receive))
            try:
                response = await handler(request)
            except RequestValidationError as exc:
                # The 422 echoes the input; a lone surrogate (valid escaped
                # JSON) would make rendering it fail with a 500.
                raise RequestValidationError(
                    _encodable(list(exc.errors())),
                    body=_encodable(exc.body),
                    endpoint_ctx=exc.endpoint_ctx,
                ) from None
            except StoreError:
                logger.warning("auth route %s answered 503: store unavailable", request.url.path)
                return unavailable_response()
            response.headers.setdefault("cache-control", "no-store")
            return response

        return route_handler


def _encodable(value: Any) -> Any:
    """``value`` with every string made encodable as UTF-8 (lone surrogates
    escaped) and every float finite JSON (``NaN``, ``Infinity`` and ``1e999``,
    which Python's JSON parser accepts, as their text), in nested lists,
    tuples and dicts."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return value.encode("utf-8", "backslashreplace").decode("utf-8")
        return value
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if isinstance(value, dict):
        return {_encodable(k): _encodable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_encodable(v) for v in value)
    return value


async def _bounded_body(request: Request) -> bytes | None:
    """The body, or ``None`` when it exceeds :data:`MAX_BODY_BYTES`."""
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > MAX_BODY_BYTES):
        return None
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


# -- the login identifier -----------------------------------------------------------
def _identifier_keys(key: Key) -> Iterable[LoginIdentifierKey]:
    if isinstance(key, LoginIdentifierKey):
        yield key
    elif isinstance(key, CompositeKey):
        for part in key.parts:
            yield from _identifier_keys(part)


def _login_fields(auth: Axess, login_path: str, given: LoginFields | None) -> LoginFields:
    """The fields the login reads the identifier from: those of the rate limits
    on ``login_path``, so the identifier counted is the one checked (book: Rate
    limiting, "One login identifier"). Raises :class:`ConfigurationError` when
    ``given`` differs from them."""
    counted = {
        key.login_fields
        for rule in auth.rate_limiter.rules
        if rule.matches("POST", login_path)
        for key in _identifier_keys(rule.key)
    }
    if len(counted) > 1:
        raise ConfigurationError(
            f"the rate limits on {login_path} read the login identifier from different "
            f"fields ({sorted(map(repr, counted))}); declare one LoginFields for all of them"
        )
    if given is None:
        return counted.pop() if counted else LoginFields()
    if counted and given not in counted:
        raise ConfigurationError(
            f"auth_router(login_fields={given!r}) differs from the LoginFields the rate "
            f"limits on {login_path} read ({next(iter(counted))!r}): pass the same one to both"
        )
    return given


def _login_model(fields: LoginFields) -> type[LoginRequest]:
    """:class:`LoginRequest` with the identifier field(s) of ``fields``: one
    required field, or several optional ones of which one is filled in."""
    names = fields.names
    single = len(names) == 1
    identifiers: dict[str, Any] = {
        f"identifier_{i}": (
            str if single else str | None,
            Field(
                default=... if single else None,
                alias=name,
                max_length=4096,
                description="The login identifier (e.g. the e-mail address)"
                + ("." if single else f"; fill in exactly one of {', '.join(names)}."),
            ),
        )
        for i, name in enumerate(names)
    }
    model: type[LoginRequest] = create_model(
        "LoginRequest", __base__=LoginRequest, __module__=__name__, **identifiers
    )
    model.identifier_fields = tuple(identifiers)
    return model


# -- the router -----------------------------------------------------------------------
def auth_router(
    auth: Axess,
    *,
    prefix: str = "/auth",
    tags: Sequence[str] = ("auth",),
    login_fields: LoginFields | Iterable[str] | None = None,
) -> APIRouter:
    """The JSON auth routes of ``auth`` under ``prefix``, for
    ``app.include_router(...)`` on an app that ``auth.install(app)`` set up.

    ``login_fields``: where the login body carries the identifier; by default
    the :class:`~axess.login_fields.LoginFields` of the rate limits on
    ``{prefix}/login`` (``username`` or ``email`` when there are none).
    Include the router without a further prefix: the rate limits are matched
    against ``{prefix}/login``. Raises :class:`ConfigurationError` when the
    store has no identity substore, or ``login_fields`` differs from what the
    rate limits read.
    """
    if auth.authn is None or auth.users is None:
        raise ConfigurationError(
            "auth_router needs logins: the store must implement the identity substore"
        )
    authn: AuthnService = auth.authn
    users: UserAdmin = auth.users
    login_path = f"{prefix}/login"
    fields = _login_fields(
        auth, login_path, None if login_fields is None else LoginFields.of(login_fields)
    )
    login_model = _login_model(fields)
    csrf_on = auth.csrf_config is not None
    router = APIRouter(prefix=prefix, tags=list(tags), route_class=_AuthRoute)

    def token(request: Request) -> str | None:
        return csrf_token(request) if csrf_on else None

    def login_answer(request: Request, outcome: LoginOutcome) -> Response:
        body: BaseModel
        if isinstance(outcome, Authenticated):
            body = LoginAuthenticated(
                user_id=outcome.user_id,
                tenant_id=outcome.tenant_id,
                factors=list(outcome.factors),
                csrf_token=token(request),
            )
        elif isinstance(outcome, FactorRequired):
            body = LoginFactorRequired(factor_required=outcome.kind, csrf_token=token(request))
        else:
            return outcome_response(outcome)  # locked, invalid credentials: one shape each
        return JSONResponse(body.model_dump(mode="json"), headers=_NO_STORE)

    async def own_sessions(session: Session) -> list[SessionInfo]:
        """The live sessions of the signed-in user: the same user id *and*
        tenant (an app whose user ids are per tenant has one id in several)."""
        assert session.user_id is not None  # signed in
        tenant = session.tenant_id
        return [
            info
            for info in await auth.list_sessions(session.user_id, tenant_id=tenant)
            if info.tenant_id == tenant
        ]

    async def end_session(session: Session, target: SessionInfo, listed: list[SessionInfo]) -> bool:
        """End ``target``, another session of the signed-in user, which
        ``listed`` showed. If a request of it rotated it to a new id since
        (``regenerate()`` keeps the creation time), that id is ended instead,
        as the logout does; a login there started a new session (a new
        creation time) and is not followed. False when no row of it was left
        to end (book: FastAPI auth routes, "Sessions")."""
        seen = {info.storage_key for info in listed}
        key = target.storage_key
        while not await auth.invalidate_session(key):
            successors = [
                info
                for info in await own_sessions(session)
                if info.created_at == target.created_at and info.storage_key not in seen
            ]
            if not successors:
                return False
            key = successors[0].storage_key
            seen.add(key)
        return True

    async def step_up(
        request: Request, credential: Password | TOTPCode | RecoveryCode
    ) -> Response | None:
        """``None`` when ``credential`` proves the signed-in user again, else the refusal."""
        outcome = await authn.reverify(request, credential)
        return None if isinstance(outcome, Authenticated) else outcome_response(outcome)

    def code_credential(proof: CodeProof) -> TOTPCode | RecoveryCode:
        return TOTPCode(proof.code) if proof.kind == "totp" else RecoveryCode(proof.code)

    async def totp_enabled(user_id: str) -> bool:
        return (await users.store.get_factors(user_id)).totp_secret is not None

    @router.get("/csrf", response_model=CSRFTokenResponse, summary="CSRF token")
    async def get_csrf(request: Request) -> CSRFTokenResponse:
        """The CSRF token for this client, also set as its cookie. Call it once
        before the first POST; login answers carry the next token."""
        return CSRFTokenResponse(csrf_token=token(request))

    async def login(request: Request, body: LoginRequest) -> Response:
        """Check the password (lockout, rate limits and audit as for every login).
        Answers either a complete login or the factor to send to
        ``/login/factor`` next."""
        # The identifier is read with the limiter's own parser, so the one
        # checked is the one counted (a repeated JSON key is a 400).
        identifier = await fields.read(request)
        outcome = await authn.login_password(request, identifier, body.password, body.tenant)
        return login_answer(request, outcome)

    # FastAPI takes the body model from the annotation: the one with this
    # router's identifier field(s).
    login.__annotations__["body"] = login_model
    router.post(
        "/login",
        response_model=LoginAuthenticated | LoginFactorRequired,
        responses=_responses(400, 401, 403, 429, 503),
        summary="Log in with identifier and password",
    )(login)

    @router.post(
        "/login/factor",
        response_model=LoginAuthenticated | LoginFactorRequired,
        responses=_responses(400, 401, 403, 429, 503),
        summary="Send the second factor",
    )
    async def login_factor(request: Request, body: CodeProof, session: Authenticating) -> Response:
        """Complete a login that answered ``factor_required`` with a TOTP code
        or a recovery code (each recovery code works once)."""
        return login_answer(request, await authn.verify_factor(request, code_credential(body)))

    @router.post(
        "/logout", response_model=LoggedOut, responses=_responses(403, 503), summary="Log out"
    )
    async def logout(request: Request) -> LoggedOut:
        """End this session (any state, also none)."""
        await authn.logout(request)
        return LoggedOut(csrf_token=token(request))

    @router.post(
        "/logout/everywhere",
        response_model=LoggedOutEverywhere,
        responses=_responses(401, 403, 503),
        summary="Log out on every device",
    )
    async def logout_everywhere(request: Request, session: SignedIn) -> LoggedOutEverywhere:
        """End every session of the signed-in user, this one included."""
        assert session.user_id is not None
        # Not a list-then-delete of our own: a session rotated to a new id
        # between the two would survive (book: FastAPI auth routes, "Sessions").
        ended = await auth.invalidate_user_in_tenant(
            session.user_id, session.tenant_id, except_key=session.storage_key
        )
        await authn.logout(request)
        return LoggedOutEverywhere(sessions_ended=ended + 1, csrf_token=token(request))

    @router.get("/me", response_model=Me, responses=_responses(503), summary="This session")
    async def me(request: Request) -> Me:
        """The session's state: who is signed in, with which factors. Answers
        guests too (``auth_state: guest``)."""
        state = get_session(request).auth_state
        if isinstance(state, d.Authenticated):
            factors = await users.store.get_factors(state.user)
            return Me(
                auth_state=state.kind,
                user_id=state.user,
                tenant_id=state.tenant,
                factors=list(state.factors),
                authenticated_at=state.authn_time,
                totp_enabled=factors.totp_secret is not None,
                recovery_codes_remaining=factors.recovery_codes,
            )
        if isinstance(state, d.Authenticating):
            return Me(auth_state=state.kind, factor_required=state.remaining[0])
        return Me(auth_state=state.kind)

    @router.get(
        "/sessions",
        response_model=SessionList,
        responses=_responses(401, 503),
        summary="The user's sessions",
    )
    async def sessions(session: SignedIn) -> SessionList:
        """Every live session of the signed-in user, on any device."""
        assert session.user_id is not None
        current = session.storage_key
        return SessionList(
            sessions=[
                SessionEntry(
                    handle=info.key_prefix,
                    created_at=info.created_at,
                    last_seen_at=info.last_seen_at,
                    expires_at=info.expires_at,
                    device=info.user_agent[:200] if info.user_agent else None,
                    ip_prefix=info.ip_prefix,
                    current=info.storage_key == current,
                )
                for info in await own_sessions(session)
            ]
        )

    @router.delete(
        "/sessions/{handle}",
        response_model=SessionRevoked,
        responses=_responses(401, 403, 404, 503),
        summary="End one session",
    )
    async def revoke_session(
        request: Request,
        session: SignedIn,
        handle: Annotated[
            str,
            Path(
                pattern=f"^[0-9a-f]{{{KEY_PREFIX_CHARS}}}$",
                description="The handle from GET /sessions.",
            ),
        ],
    ) -> Response | SessionRevoked:
        """End one of the signed-in user's sessions (only their own)."""
        assert session.user_id is not None
        listed = await own_sessions(session)
        matches = [i for i in listed if i.key_prefix == handle]
        if len(matches) != 1:
            return _refusal(404, "not_found", "no session of yours has this handle")
        if matches[0].storage_key == session.storage_key:
            await authn.logout(request)
            return SessionRevoked(revoked=handle, current=True, csrf_token=token(request))
        if not await end_session(session, matches[0], listed):
            return _refusal(
                404, "not_found", "this session ended or was replaced meanwhile; list them again"
            )
        return SessionRevoked(revoked=handle, current=False, csrf_token=token(request))

    @router.post(
        "/totp/enrol",
        response_model=TOTPEnrolmentResponse,
        responses=_responses(401, 403, 409, 429, 503),
        summary="Start a TOTP enrolment",
    )
    async def totp_enrol(
        request: Request, body: PasswordProof, session: SignedIn
    ) -> Response | TOTPEnrolmentResponse:
        """A new TOTP secret for the signed-in user, after their password. It
        becomes active once ``/totp/confirm`` gets a code of it."""
        user_id = session.user_id
        assert user_id is not None
        if await totp_enabled(user_id):
            return _refusal(409, "conflict", "TOTP is already enabled; disable it first")
        try:
            password = Password(body.password)
        except ValueError:  # cannot be anyone's password: nothing to count
            return outcome_response(InvalidCredentials())
        refused = await step_up(request, password)
        if refused is not None:
            return refused
        enrolment = await users.begin_totp_enrolment(user_id)
        session[TOTP_PENDING_KEY] = enrolment.pending  # nothing is stored until confirmed
        return TOTPEnrolmentResponse(
            otpauth_uri=enrolment.uri,
            secret=enrolment.secret,
            expires_in=int(users.totp_pending_ttl),
        )

    @router.post(
        "/totp/confirm",
        response_model=TOTPEnabled,
        responses=_responses(400, 401, 403, 409, 429, 503),
        summary="Activate TOTP with a first code",
    )
    async def totp_confirm(
        request: Request, body: TOTPCodeRequest, session: SignedIn
    ) -> Response | TOTPEnabled:
        """Activate the enrolment with a current code of its secret; answers the
        first recovery codes."""
        user_id = session.user_id
        assert user_id is not None
        pending = session.get(TOTP_PENDING_KEY)
        if not isinstance(pending, str):
            return _refusal(409, "conflict", "no TOTP enrolment in progress; start one")
        if await totp_enabled(user_id):
            # TOTP went on elsewhere since this enrolment began: confirming it
            # would replace that factor on the strength of a password alone.
            del session[TOTP_PENDING_KEY]
            return _refusal(409, "conflict", "TOTP is already enabled; disable it first")
        if await users.pending_totp_enrolment(user_id, pending) is None:
            del session[TOTP_PENDING_KEY]
            return _refusal(409, "conflict", "the TOTP enrolment expired; start again")
        # Each code tried costs a guess of the login's budget: a stolen
        # session must not try all million codes of a pending secret.
        outcome = await authn.check_code(
            request,
            lambda: users.confirm_totp_enrolment(
                user_id, pending, body.code, actor=user_id, replace=False
            ),
            reason="totp_enrolment",
        )
        if isinstance(outcome, Locked):
            return outcome_response(outcome)
        if not isinstance(outcome, Authenticated):
            if await totp_enabled(user_id):
                # Turned on by a request racing this one (the form sent
                # twice): that one got the recovery codes.
                session.pop(TOTP_PENDING_KEY, None)
                return _refusal(409, "conflict", "TOTP is already enabled; disable it first")
            return _refusal(400, "invalid_code", "wrong code; enter the one the app shows now")
        del session[TOTP_PENDING_KEY]
        codes = await users.regenerate_recovery_codes(user_id, actor=user_id)
        return TOTPEnabled(recovery_codes=codes)

    @router.post(
        "/totp/disable",
        response_model=TOTPDisabled,
        responses=_responses(401, 403, 409, 429, 503),
        summary="Disable TOTP",
    )
    async def totp_disable(
        request: Request, body: CodeProof, session: SignedIn
    ) -> Response | TOTPDisabled:
        """Remove TOTP and its recovery codes, after a current TOTP code or a
        recovery code (the password alone is not enough to drop the second
        factor)."""
        user_id = session.user_id
        assert user_id is not None
        if not await totp_enabled(user_id):
            return _refusal(409, "conflict", "TOTP is not enabled")
        refused = await step_up(request, code_credential(body))
        if refused is not None:
            return refused
        await users.disable_totp(user_id, actor=user_id)
        return TOTPDisabled()

    @router.post(
        "/recovery-codes/regenerate",
        response_model=RecoveryCodesResponse,
        responses=_responses(401, 403, 409, 429, 503),
        summary="New recovery codes",
    )
    async def recovery_codes_regenerate(
        request: Request, body: CodeProof, session: SignedIn
    ) -> Response | RecoveryCodesResponse:
        """New recovery codes (shown once; the old ones stop working), after a
        current TOTP code or a recovery code."""
        user_id = session.user_id
        assert user_id is not None
        if not await totp_enabled(user_id):
            return _refusal(409, "conflict", "recovery codes back up TOTP: enable TOTP first")
        refused = await step_up(request, code_credential(body))
        if refused is not None:
            return refused
        codes = await users.regenerate_recovery_codes(user_id, actor=user_id)
        return RecoveryCodesResponse(recovery_codes=codes)

    return router
