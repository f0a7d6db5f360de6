"""Authorization with Cedar (needs the ``cedar`` extra, which installs cedarpy).

``CedarAuthorizer`` (alias ``AuthzStore``) loads a Cedar policy set and
schema, validates them at startup and decides requests from the session
axess already holds: user, tenant, factors, login time. Guards:
``authz.require(action, resource=...)`` or ``require_authz(...)`` with
``Axess(authz=...)``. The book's Authorization chapter is the guide.
"""

from axess.authz.authorizer import AuthzDecision, AuthzStore, CedarAuthorizer
from axess.authz.guards import (
    AuthzDenied,
    AuthzGuard,
    authz_exception_handler,
    forbidden_response,
    require_authz,
)
from axess.authz.model import Entity, EntityUid, Principal, Resource, parse_uid
from axess.authz.policies import CROSS_TENANT, CompiledPolicies, TemplateLink

__all__ = [
    "CROSS_TENANT",
    "AuthzDecision",
    "AuthzDenied",
    "AuthzGuard",
    "AuthzStore",
    "CedarAuthorizer",
    "CompiledPolicies",
    "Entity",
    "EntityUid",
    "Principal",
    "Resource",
    "TemplateLink",
    "authz_exception_handler",
    "forbidden_response",
    "parse_uid",
    "require_authz",
]
