"""Authentication: login flow, credentials, password hashing, TOTP, recovery codes,
lockout, guards and the user admin API."""

from axess.authn.guards import require_authn, require_partial_authn
from axess.authn.lockout import (
    Lever,
    Locked,
    Lockout,
    LockoutKeys,
    LockoutPolicy,
    lockout_keys,
    normalize_identifier,
)
from axess.authn.outcomes import Authenticated, FactorRequired, InvalidCredentials, LoginOutcome
from axess.authn.password import Password, PasswordHasher
from axess.authn.recovery import RecoveryCode, RecoveryCodes
from axess.authn.service import AuthnEvent, AuthnService
from axess.authn.totp import TOTPCode, TOTPSecretSealer, TOTPSecretUnavailable
from axess.authn.users import TOTPEnrolment, UserAdmin

__all__ = [
    "Authenticated",
    "AuthnEvent",
    "AuthnService",
    "FactorRequired",
    "InvalidCredentials",
    "Lever",
    "Locked",
    "Lockout",
    "LockoutKeys",
    "LockoutPolicy",
    "LoginOutcome",
    "Password",
    "PasswordHasher",
    "RecoveryCode",
    "RecoveryCodes",
    "TOTPCode",
    "TOTPEnrolment",
    "TOTPSecretSealer",
    "TOTPSecretUnavailable",
    "UserAdmin",
    "lockout_keys",
    "normalize_identifier",
    "require_authn",
    "require_partial_authn",
]
