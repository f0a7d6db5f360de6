import base64
import logging

import pytest

from axess import ConfigurationError, Key, Keyring
from axess.keys import ENV_VARS, parse_key_list


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def env_for(ring: Keyring) -> dict[str, str]:
    return dict(line.split("=", 1) for line in ring.env_lines())


def test_generate_roundtrips_through_env() -> None:
    ring = Keyring.generate()
    assert ring.ephemeral
    again = Keyring.from_env(env_for(ring))
    assert not again.ephemeral
    for purpose in ("signing", "envelope", "fingerprint", "csrf"):
        assert again.active(purpose) == ring.active(purpose)  # type: ignore[arg-type]


def test_from_env_order_first_is_active() -> None:
    env = env_for(Keyring.generate())
    env["AXESS_SIGNING_KEYS"] = f"new:{b64(b'n' * 32)},old:{b64(b'o' * 32)}"
    ring = Keyring.from_env(env)
    assert ring.active("signing").kid == "new"
    assert [k.kid for k in ring.keys("signing")] == ["new", "old"]
    assert ring.find("signing", "old") is not None
    assert ring.find("signing", "gone") is None


@pytest.mark.parametrize("var", list(ENV_VARS.values()))
def test_missing_variable_is_named(var: str) -> None:
    env = env_for(Keyring.generate())
    del env[var]
    with pytest.raises(ConfigurationError, match=var):
        Keyring.from_env(env)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("k1:" + b64(b"x" * 31), "at least 32"),
        ("k1:" + b64(bytes(32)), "all zero"),
        ("k1", "kid:base64url"),
        ("k1:@@@@", "base64url"),
        ("bad kid:" + b64(b"x" * 32), "invalid"),
        ("k1:" + b64(b"x" * 32) + ",", "empty"),
    ],
)
def test_bad_entries_refused(text: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        parse_key_list(text, purpose="signing")


def _keys(**over: list[Key]) -> dict[str, list[Key]]:
    base = {
        "signing": [Key("s1", b"s" * 32)],
        "envelope": [Key("e1", b"e" * 32)],
        "fingerprint": [Key("f1", b"f" * 32)],
        "csrf": [Key("c1", b"c" * 32)],
        "device": [Key("d1", b"d" * 32)],
    }
    base.update(over)
    return base


def test_duplicate_kid_refused() -> None:
    with pytest.raises(ConfigurationError, match="duplicate"):
        Keyring(**_keys(signing=[Key("s1", b"a" * 32), Key("s1", b"b" * 32)]))  # type: ignore[arg-type]


@pytest.mark.parametrize("kid", ["", "s1\n", "a" * 33, "s 1", "s1:", "é"])
def test_bad_key_ids_refused(kid: str) -> None:
    # A trailing newline slipped through the pattern's $ and then broke the
    # env lines keygen writes (AXESS_SIGNING_KEYS=s1\n:...).
    with pytest.raises(ConfigurationError, match="key id"):
        Key(kid, b"s" * 32)


def test_same_bytes_for_two_purposes_refused() -> None:
    with pytest.raises(ConfigurationError, match="same bytes"):
        Keyring(**_keys(csrf=[Key("c1", b"s" * 32)]))  # type: ignore[arg-type]


def test_empty_purpose_refused() -> None:
    with pytest.raises(ConfigurationError, match="no envelope key"):
        Keyring(**_keys(envelope=[]))  # type: ignore[arg-type]


def test_secret_never_in_repr() -> None:
    ring = Keyring(**_keys())  # type: ignore[arg-type]
    key = ring.active("signing")
    assert "sss" not in repr(key) and "sss" not in repr(ring)


def test_hkdf_subkeys_are_distinct_per_label_and_key() -> None:
    ring = Keyring(**_keys(signing=[Key("s2", b"t" * 32), Key("s1", b"s" * 32)]))  # type: ignore[arg-type]
    a = ring.derive("signing", "cookie")
    assert a == ring.derive("signing", "cookie")
    assert a != ring.derive("signing", "other")
    assert a != ring.derive("signing", "cookie", kid="s1")
    assert len(ring.derive("signing", "x", length=64)) == 64
    with pytest.raises(ConfigurationError):
        ring.derive("signing", "cookie", kid="nope")


def test_axess_refuses_generated_keys_without_debug(caplog: pytest.LogCaptureFixture) -> None:
    from axess import Axess
    from axess.stores import MemoryStore

    with pytest.raises(ConfigurationError, match="debug=True"):
        Axess(store=MemoryStore(), keys=Keyring.generate())
    with caplog.at_level(logging.WARNING, logger="axess"):
        Axess(store=MemoryStore(), keys=Keyring.generate(), debug=True)
    assert "EPHEMERAL KEYS" in caplog.text
