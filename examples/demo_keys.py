"""The demo's key file: development keys that survive a restart.

The file holds the environment lines ``axess keygen`` prints
(``AXESS_SIGNING_KEYS=kid:base64url`` and so on, ``#`` comments allowed) and
is read back with :meth:`Keyring.from_env`, so it can be used as-is as an
``.env`` file later. It is created on first start with mode 0600. It is for
development only: in production the keys come from a secret store into the
process environment (book: Keys and key rotation).
"""

from __future__ import annotations

import io
import logging
import os
import stat
import tempfile
from pathlib import Path

from axess.cli import keygen
from axess.errors import ConfigurationError
from axess.keys import Keyring

logger = logging.getLogger(__name__)


def read_key_file(path: Path) -> Keyring:
    """The keyring in ``path``. Raises :class:`ConfigurationError` naming the
    file (never a secret) when it is malformed or incomplete."""
    environ: dict[str, str] = {}
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, value = line.partition("=")
        if not sep:
            raise ConfigurationError(f"{path}: line {number} is not NAME=value")
        environ[name.strip()] = value.strip()
    try:
        return Keyring.from_env(environ)
    except ConfigurationError as exc:
        raise ConfigurationError(f"{path}: {exc}") from None


def create_key_file(path: Path) -> bool:
    """Write fresh keys to ``path`` (mode 0600) unless it exists; ``True`` if
    this call created it.

    The file is written completely under a temporary name and then linked
    into place, which fails if ``path`` appeared meanwhile: two processes
    starting together end up reading the same, complete file.
    """
    text = io.StringIO()
    keygen(text)
    fd, tmp = tempfile.mkstemp(prefix=".demo-keys-", dir=path.parent)  # mode 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write("# axess demo keys: DEVELOPMENT ONLY (created by examples/demo.py)\n")
            out.write(text.getvalue())
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        return True
    finally:
        os.unlink(tmp)


def load_or_create_keys(path: Path) -> tuple[Keyring, bool]:
    """The keyring in ``path``, created there first if missing; and whether
    it was created now. Warns when the file is readable by others."""
    path = path.resolve()
    created = not path.exists() and create_key_file(path)
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        logger.warning("key file %s is readable by others (mode %o): chmod 600 it", path, mode)
    return read_key_file(path), created
