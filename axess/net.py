"""Network helpers: IP prefixes (client-IP resolution behind proxies lands here too)."""

from __future__ import annotations

import ipaddress
from typing import Final

IPV4_PREFIX: Final = 24
IPV6_PREFIX: Final = 64


def ip_prefix(ip: str, *, v4: int = IPV4_PREFIX, v6: int = IPV6_PREFIX) -> str | None:
    """The network containing ``ip`` (``/24`` for IPv4, ``/64`` for IPv6 by default),
    as CIDR text; ``None`` when ``ip`` is not an IP address."""
    try:
        addr = ipaddress.ip_address(ip.strip())
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    bits = v4 if addr.version == 4 else v6
    return str(ipaddress.ip_network(f"{addr}/{bits}", strict=False))
