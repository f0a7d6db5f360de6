"""Client-IP resolution: the right-to-left rule, caps, and hostile headers."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from pathlib import Path

import httpx
import pytest
import uvicorn
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from axess import ConfigurationError
from axess.net import NO_PEER, ClientIPMiddleware, TrustedProxies, client_ip, ip_prefix, parse_ip

PROXIES = ["10.0.0.0/8", "2001:db8:ffff::/48"]


def xff(value: bytes) -> list[tuple[bytes, bytes]]:
    return [(b"x-forwarded-for", value)]


def fwd(value: bytes) -> list[tuple[bytes, bytes]]:
    return [(b"forwarded", value)]


@pytest.mark.parametrize(
    ("peer", "header", "expected"),
    [
        # untrusted peer: headers ignored, whatever they say
        ("203.0.113.9", b"1.1.1.1", "203.0.113.9"),
        # trusted peer, one client hop
        ("10.0.0.1", b"198.51.100.7", "198.51.100.7"),
        # chain of trusted proxies is skipped
        ("10.0.0.1", b"198.51.100.7, 10.1.1.1, 10.2.2.2", "198.51.100.7"),
        # spoofed leftmost entry ignored: the first untrusted from the right wins
        ("10.0.0.1", b"6.6.6.6, 198.51.100.7, 10.1.1.1", "198.51.100.7"),
        # every hop trusted: leftmost
        ("10.0.0.1", b"10.9.9.9, 10.1.1.1", "10.9.9.9"),
        # garbage stops the walk at the last trusted hop's view
        ("10.0.0.1", b"198.51.100.7, not-an-ip, 10.1.1.1", "10.1.1.1"),
        ("10.0.0.1", b"", "10.0.0.1"),
        # ports and brackets
        ("10.0.0.1", b"198.51.100.7:4711", "198.51.100.7"),
        ("10.0.0.1", b"[2001:db8::1]:443", "2001:db8::1"),
        ("2001:db8:ffff::1", b"2001:db8::5", "2001:db8::5"),
        # IPv4-mapped IPv6 peer normalizes
        ("::ffff:10.0.0.1", b"198.51.100.7", "198.51.100.7"),
    ],
)
def test_x_forwarded_for_table(peer: str, header: bytes, expected: str) -> None:
    assert TrustedProxies(PROXIES).resolve(peer, xff(header)) == expected


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (b"for=198.51.100.7", "198.51.100.7"),
        (b'for="[2001:db8:cafe::17]:4711";proto=https', "2001:db8:cafe::17"),
        (b"For=198.51.100.7;by=10.0.0.1, for=10.1.1.1", "198.51.100.7"),
        (b"for=_hidden, for=10.1.1.1", "10.1.1.1"),
        (b"for=unknown", "10.0.0.1"),
        (b"proto=https", "10.0.0.1"),
        (b"for=6.6.6.6, for=198.51.100.7", "198.51.100.7"),
    ],
)
def test_forwarded_table(header: bytes, expected: str) -> None:
    assert TrustedProxies(PROXIES, header="forwarded").resolve("10.0.0.1", fwd(header)) == expected


def test_custom_single_address_header() -> None:
    p = TrustedProxies(PROXIES, header="X-Real-IP")
    assert p.resolve("10.0.0.1", [(b"x-real-ip", b"198.51.100.7")]) == "198.51.100.7"
    assert p.resolve("10.0.0.1", [(b"x-real-ip", b"1.1.1.1, 2.2.2.2")]) == "10.0.0.1"


def test_multiple_header_lines_join_in_order() -> None:
    headers = [(b"x-forwarded-for", b"6.6.6.6"), (b"x-forwarded-for", b"198.51.100.7")]
    assert TrustedProxies(PROXIES).resolve("10.0.0.1", headers) == "198.51.100.7"


def test_caps_walk_only_the_rightmost_hops() -> None:
    p = TrustedProxies(PROXIES, max_hops=3)
    hops = b", ".join([b"6.6.6.6"] + [b"10.0.0.%d" % i for i in range(10)])
    assert p.resolve("10.0.0.1", xff(hops)) == "10.0.0.7"  # leftmost of the 3 walked
    big = b"6.6.6.6, " * 5000 + b"198.51.100.7"
    assert TrustedProxies(PROXIES).resolve("10.0.0.1", xff(big)) == "198.51.100.7"


def test_a_link_local_peer_is_its_own_address_not_the_placeholder() -> None:
    p = TrustedProxies(["fe80::/10"])
    assert p.resolve("fe80::1%eth0", []) == "fe80::1"
    assert p.resolve("fe80::1%eth0", [(b"x-forwarded-for", b"203.0.113.9")]) == "203.0.113.9"
    assert TrustedProxies().resolve("fe80::2%3", []) == "fe80::2"


def test_an_ipv4_mapped_network_trusts_its_ipv4_peers() -> None:
    p = TrustedProxies(["::ffff:10.0.0.0/104"])
    assert p.networks == (ipaddress.IPv4Network("10.0.0.0/8"),)
    for peer in ("10.1.2.3", "::ffff:10.1.2.3"):
        assert p.resolve(peer, xff(b"1.2.3.4")) == "1.2.3.4"


def test_one_network_may_be_given_as_a_string() -> None:
    assert TrustedProxies("10.0.0.0/8").resolve("10.1.2.3", xff(b"1.2.3.4")) == "1.2.3.4"


def test_no_peer_and_bad_config() -> None:
    assert TrustedProxies(PROXIES).resolve(None, xff(b"1.2.3.4")) == NO_PEER
    with pytest.raises(ConfigurationError):
        TrustedProxies(["not a cidr"])
    with pytest.raises(ConfigurationError):
        TrustedProxies([], header="bad header")


@pytest.mark.parametrize("peer", [None, ""])
def test_unix_socket_peers_are_trusted_only_when_configured(peer: str | None) -> None:
    chain = xff(b"6.6.6.6, 198.51.100.7")
    # Not configured: a connection without an address is nobody we trust.
    assert TrustedProxies(PROXIES).resolve(peer, chain) == NO_PEER
    unix = TrustedProxies(["unix", *PROXIES])
    assert unix.resolve(peer, chain) == "198.51.100.7"
    assert unix.resolve(peer, xff(b"198.51.100.7, 10.1.1.1")) == "198.51.100.7"
    assert unix.resolve(peer, []) == NO_PEER  # the proxy sent nothing
    assert unix.resolve(peer, xff(b"garbage")) == NO_PEER
    # "unix" alone is a trusted proxy too (no TCP proxies at all).
    assert TrustedProxies(["UNIX"]).resolve(peer, chain) == "198.51.100.7"
    # It trusts the missing address only, never a TCP peer.
    assert unix.resolve("203.0.113.9", chain) == "203.0.113.9"


def test_warns_once_when_headers_arrive_untrusted(caplog: pytest.LogCaptureFixture) -> None:
    p = TrustedProxies()
    with caplog.at_level(logging.WARNING, logger="axess.net"):
        for _ in range(3):
            assert p.resolve("203.0.113.9", xff(b"1.1.1.1")) == "203.0.113.9"
    assert caplog.text.count("no trusted proxies") == 1


header_text = st.one_of(
    st.binary(max_size=300),
    st.lists(
        st.one_of(
            st.ip_addresses().map(str),
            st.ip_addresses(v=6).map(lambda a: f"[{a}]:{443}"),
            st.sampled_from(["unknown", "_hidden", "_x", "", " ", '"', "[", "]:"]),
            st.text(max_size=20),
        ),
        max_size=400,
    ).map(lambda hops: ", ".join(hops).encode("utf-8", "replace")),
    st.lists(
        st.one_of(st.ip_addresses().map(lambda a: f'for="{a}"'), st.text(max_size=30)),
        max_size=50,
    ).map(lambda xs: ";".join(xs).encode("utf-8", "replace")),
)


@settings(max_examples=500)
@given(
    header=header_text,
    name=st.sampled_from(["x-forwarded-for", "forwarded"]),
    peer=st.one_of(st.none(), st.sampled_from(["10.0.0.1", "203.0.113.9", "::1", "garbage"])),
)
def test_never_raises_and_always_returns_an_ip(header: bytes, name: str, peer: str | None) -> None:
    p = TrustedProxies(PROXIES, header=name)
    result = p.resolve(peer, [(name.encode(), header)])
    ipaddress.ip_address(result)  # a valid address, always


def test_parse_ip_and_prefix() -> None:
    assert str(parse_ip(" 1.2.3.4 ")) == "1.2.3.4"
    assert parse_ip("fe80::1%eth0") is None
    assert parse_ip("[::1") is None
    assert ip_prefix("203.0.113.77") == "203.0.113.0/24"
    assert ip_prefix("2001:db8:1:2:3:4:5:6") == "2001:db8:1:2::/64"
    assert ip_prefix("203.0.113.77", v4=16) == "203.0.0.0/16"
    assert ip_prefix("nope") is None


async def test_behind_a_proxy_on_a_unix_socket_under_uvicorn(tmp_path: Path) -> None:
    """A real server on a Unix-domain socket reports no peer address; with
    "unix" trusted, the proxy's X-Forwarded-For names the client."""

    async def whoami(request: Request) -> PlainTextResponse:
        return PlainTextResponse(client_ip(request))

    def app_with(proxies: TrustedProxies) -> Starlette:
        app = Starlette(routes=[Route("/", whoami)])
        app.add_middleware(ClientIPMiddleware, proxies=proxies)
        return app

    for proxies, expected in (
        (TrustedProxies(["unix"]), "198.51.100.7"),
        (TrustedProxies(), NO_PEER),
    ):
        path = str(tmp_path / "app.sock")
        server = uvicorn.Server(uvicorn.Config(app_with(proxies), uds=path, log_level="warning"))
        task = asyncio.create_task(server.serve())
        try:
            for _ in range(500):
                if server.started:
                    break
                await asyncio.sleep(0.01)  # uvicorn has no "started" event to await
            transport = httpx.AsyncHTTPTransport(uds=path)
            async with httpx.AsyncClient(transport=transport, base_url="http://proxy") as c:
                r = await c.get("/", headers={"x-forwarded-for": "6.6.6.6, 198.51.100.7"})
            assert r.text == expected
        finally:
            server.should_exit = True
            await task


@settings(max_examples=300)
@given(
    text=st.one_of(
        st.ip_addresses(v=4).map(str),
        st.tuples(*[st.integers(0, 300)] * 4).map(lambda t: ".".join(map(str, t))),
        st.text(alphabet="0123456789.x ", max_size=18),
    ),
    bits=st.integers(0, 32),
)
def test_dotted_quad_fast_path_agrees_with_ipaddress(text: str, bits: int) -> None:
    try:
        expected = ipaddress.ip_address(text.strip())
    except ValueError:
        expected = None
    got = parse_ip(text)
    if expected is None or expected.version == 6:
        assert got is None or got == expected
    else:
        assert got == expected
        network = ipaddress.IPv4Network((int(expected) & (((1 << bits) - 1) << (32 - bits)), bits))
        assert ip_prefix(str(expected), v4=bits) == str(network)
