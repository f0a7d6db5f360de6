"""Authentication: credentials, password hashing, TOTP, recovery codes, lockout."""

from axess.authn.lockout import (
    Lever,
    Locked,
    Lockout,
    LockoutKeys,
    LockoutPolicy,
    lockout_keys,
    normalize_identifier,
)
from axess.authn.password import Password, PasswordHasher
from axess.authn.recovery import RecoveryCode, RecoveryCodes
from axess.authn.totp import TOTPCode, TOTPSecretSealer

__all__ = [
    "Lever",
    "Locked",
    "Lockout",
    "LockoutKeys",
    "LockoutPolicy",
    "Password",
    "PasswordHasher",
    "RecoveryCode",
    "RecoveryCodes",
    "TOTPCode",
    "TOTPSecretSealer",
    "lockout_keys",
    "normalize_identifier",
]
