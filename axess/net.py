"""Client-IP resolution behind trusted proxies, and IP prefixes.

The rule (book: Client IP): if the TCP peer is not a trusted proxy, the client is
the peer and forwarded headers are ignored. Otherwise the forwarding header
is walked right to left, skipping trusted hops; the first untrusted address
is the client. If every hop is trusted, the leftmost one is. Anything
unparseable stops the walk at the last address we could trust to have
reported it. Resolution never raises.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from collections.abc import Iterable
from typing import Final

from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Receive, Scope, Send

from axess._cache import Memo
from axess.errors import ConfigurationError
from axess.stack import HEADERS_KEY, Stage, join_headers

logger = logging.getLogger(__name__)

IPV4_PREFIX: Final = 24
IPV6_PREFIX: Final = 64
#: What a connection without a peer address (e.g. a unix socket) resolves to.
NO_PEER: Final = "0.0.0.0"  # noqa: S104 - a placeholder address, never bound
#: Longest text :func:`parse_ip` reads as an address (with brackets and port);
#: also the key bound of the memos keyed by an address.
MAX_ADDRESS_CHARS: Final = 64

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


_MAPPED: Final = ipaddress.IPv6Network("::ffff:0:0/96")


def parse_ip(text: str) -> IPAddress | None:
    """An IP address from ``text``, tolerating ports (``1.2.3.4:80``,
    ``[::1]:80``) and brackets; IPv4-mapped IPv6 becomes IPv4. ``None`` if
    ``text`` is not an address (e.g. ``unknown`` or ``_hidden``)."""
    try:  # the usual case, a plain dotted quad, parsed in C (as strictly)
        return ipaddress.IPv4Address(socket.inet_pton(socket.AF_INET, text))
    except (OSError, ValueError):  # not a dotted quad; ValueError: a NUL inside
        pass
    text = text.strip()
    if not text or len(text) > MAX_ADDRESS_CHARS:
        return None
    if text[0] == "[":
        end = text.find("]")
        if end < 0 or (end + 1 < len(text) and text[end + 1] != ":"):
            return None
        text = text[1:end]
    elif text.count(":") == 1:  # IPv4 with a port
        text = text.partition(":")[0]
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            return addr.ipv4_mapped
        if addr.scope_id is not None:
            return None
    return addr


def ip_prefix(ip: str, *, v4: int = IPV4_PREFIX, v6: int = IPV6_PREFIX) -> str | None:
    """The network containing ``ip`` (``/24`` for IPv4, ``/64`` for IPv6 by
    default) as CIDR text; ``None`` when ``ip`` is not an address."""
    try:  # a plain dotted quad: mask the packed bytes, all in C
        packed = socket.inet_pton(socket.AF_INET, ip)
    except (OSError, ValueError):
        pass
    else:
        masked = int.from_bytes(packed, "big") & (((1 << v4) - 1) << (32 - v4))
        return f"{socket.inet_ntop(socket.AF_INET, masked.to_bytes(4, 'big'))}/{v4}"
    addr = parse_ip(ip)
    if addr is None:
        return None
    if addr.version == 4:
        bits, width, cls = v4, 32, ipaddress.IPv4Network
    else:
        bits, width, cls = v6, 128, ipaddress.IPv6Network  # type: ignore[assignment]
    # Mask the integer directly: building a network from text is much slower.
    mask = ((1 << bits) - 1) << (width - bits)
    return str(cls((int(addr) & mask, bits)))


def _forwarded_for(element: str) -> str:
    """The ``for=`` value of one RFC 7239 element ('' when absent)."""
    for pair in element.split(";"):
        name, sep, value = pair.partition("=")
        if sep and name.strip().lower() == "for":
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1]
            return value
    return ""


class TrustedProxies:
    """Which peers may tell us the client address, and how.

    ``cidrs``: networks of your reverse proxies / load balancers (IPv4 and
    IPv6), and ``"unix"`` to trust connections that have no peer address: a
    server listening on a Unix-domain socket reports none, so behind a proxy
    on the same host every client would otherwise share one address. Add
    ``"unix"`` only when the app listens on nothing but that socket.
    ``header``: ``"x-forwarded-for"`` (default), ``"forwarded"``
    (RFC 7239) or a custom single-address header such as ``"x-real-ip"``.
    Headers beyond ``max_header_bytes`` are cut from the left (the rightmost
    hops are the ones your proxies wrote) and at most ``max_hops`` are walked.

    Raises :class:`ConfigurationError` for an invalid CIDR.
    """

    def __init__(
        self,
        cidrs: Iterable[str] = (),
        *,
        header: str = "x-forwarded-for",
        max_header_bytes: int = 2048,
        max_hops: int = 16,
    ) -> None:
        networks: list[IPNetwork] = []
        self.unix = False
        if isinstance(cidrs, str):  # one network (iterating would go by character)
            cidrs = [cidrs]
        for cidr in cidrs:
            if cidr.strip().lower() == "unix":
                self.unix = True
                continue
            try:
                network = ipaddress.ip_network(cidr.strip(), strict=False)
            except ValueError:
                raise ConfigurationError(f"trusted proxy {cidr!r} is not an IP network") from None
            if isinstance(network, ipaddress.IPv6Network) and network.subnet_of(_MAPPED):
                # Peers are compared as IPv4 (::ffff:10.0.0.1 is 10.0.0.1), so
                # the network is too; as written it would never match.
                network = ipaddress.IPv4Network(
                    (int(network.network_address) & 0xFFFFFFFF, max(0, network.prefixlen - 96))
                )
            networks.append(network)
        self.networks: tuple[IPNetwork, ...] = tuple(networks)
        name = header.strip().lower()
        if not name or any(c in name for c in " :\r\n"):
            raise ConfigurationError(f"invalid forwarding header name {header!r}")
        self.header = name
        self._header_bytes = name.encode("latin-1")
        self._rfc7239 = name == "forwarded"
        self._single = name not in ("x-forwarded-for", "forwarded")
        if max_header_bytes < 64 or max_hops < 1:
            raise ConfigurationError("max_header_bytes must be >= 64 and max_hops >= 1")
        self.max_header_bytes = max_header_bytes
        self.max_hops = max_hops
        # peer text -> (normalized address, trusted?): peers repeat a lot. Longer
        # text than an address is recomputed each time, never remembered.
        self._peers: Memo[str | None, tuple[str, bool]] = Memo(
            self._peer, 4096, max_key_bytes=MAX_ADDRESS_CHARS
        )
        self._warned = False

    def is_trusted(self, addr: IPAddress) -> bool:
        return any(addr in net for net in self.networks if net.version == addr.version)

    def _peer(self, peer: str | None) -> tuple[str, bool]:
        """(normalized address, trusted?) of the TCP peer's address text."""
        if not peer:  # a Unix-domain socket: no address (None, or "" from some servers)
            return NO_PEER, self.unix
        # A link-local peer comes with its zone (``fe80::1%eth0``), which
        # names our interface, not the client: dropped, so such clients get
        # their own address rather than one shared placeholder bucket.
        addr = parse_ip(peer.partition("%")[0])
        return (NO_PEER, False) if addr is None else (str(addr), self.is_trusted(addr))

    def resolve(self, peer: str | None, headers: Iterable[tuple[bytes, bytes]]) -> str:
        """The client IP (normalized text) for a request. Never raises."""
        return self.resolve_headers(peer, join_headers(headers))

    def resolve_headers(self, peer: str | None, headers: dict[bytes, bytes]) -> str:
        """:meth:`resolve` for headers already joined into a dict."""
        address, trusted = self._peers[peer]
        if not self.networks and not self.unix:
            if not self._warned and not _FORWARDING_HEADERS.isdisjoint(headers):
                self._warned = True
                logger.warning(
                    "forwarded headers received but no trusted proxies are configured; "
                    "using the TCP peer address (configure TrustedProxies if behind a proxy)"
                )
            return address
        if not trusted:
            return address
        value = headers.get(self._header_bytes)
        if value is None:
            return address
        return self._walk(address, value)

    def _walk(self, current: str, raw: bytes) -> str:
        """``current`` starts as the (trusted) peer: the last address we trust to report."""
        if len(raw) > self.max_header_bytes:
            raw = raw[-self.max_header_bytes :]
            raw = raw.partition(b",")[2]  # drop the entry the cut went through
        text = raw.decode("latin-1")
        hops = [text] if self._single else text.split(",")
        for hop in reversed(hops[-self.max_hops :]):
            addr = parse_ip(_forwarded_for(hop) if self._rfc7239 else hop)
            if addr is None:
                return current  # garbage or obfuscated: stop, keep the last trusted view
            current = str(addr)
            if not self.is_trusted(addr):
                return current
        return current


_FORWARDING_HEADERS: Final = frozenset({b"x-forwarded-for", b"forwarded", b"x-real-ip"})


def _normalize_peer(peer: str | None) -> str:
    if peer is None:
        return NO_PEER
    addr = parse_ip(peer)
    return NO_PEER if addr is None else str(addr)


class ClientIPMiddleware(Stage):
    """Resolves the client IP once per request into ``scope["state"]["client_ip"]``."""

    def __init__(
        self, app: ASGIApp | None = None, *, proxies: TrustedProxies | None = None
    ) -> None:
        super().__init__(app)
        self.proxies = proxies or TrustedProxies()

    def enter_now(self, scope: Scope) -> bool:
        client = scope.get("client")
        ip = self.proxies.resolve_headers(
            client[0] if client else None, scope["state"][HEADERS_KEY]
        )
        scope["state"]["client_ip"] = ip  # the stack made sure "state" exists
        return True

    async def enter(self, scope: Scope, receive: Receive, send: Send) -> Receive | None:
        self.enter_now(scope)
        return receive


def scope_ip(scope: Scope) -> str | None:
    """The client IP :class:`ClientIPMiddleware` resolved for this request,
    else the TCP peer as the server reported it (``None`` without one)."""
    ip = (scope.get("state") or {}).get("client_ip")
    if isinstance(ip, str):
        return ip
    client = scope.get("client")
    return client[0] if client else None


def client_ip(conn: HTTPConnection) -> str:
    """The resolved client IP of a request (the peer when axess did not resolve it)."""
    ip = conn.scope.get("state", {}).get("client_ip")
    if isinstance(ip, str):
        return ip
    client = conn.scope.get("client")
    return _normalize_peer(client[0] if client else None)
