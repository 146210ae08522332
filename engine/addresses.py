"""Which addresses a download may reach: a host resolved once, and the policy that refuses
every address that is not public.

Loopback, private (RFC 1918, ULA), link-local (169.254.169.254 and fd00:ec2::254 are cloud
metadata), CGNAT, unspecified, multicast and reserved ranges are refused, also when
wrapped in IPv6 (``::ffff:10.0.0.1``, NAT64, 6to4). :class:`engine.guarded_http.GuardedHttp`
checks every hop's addresses with it.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Sequence

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Sequence[IPAddress]]
"""``(host, port) -> addresses``; raises ``OSError`` when the name does not resolve."""
AddressPolicy = Callable[[IPAddress], "str | None"]
"""Why an address is refused (``"a loopback address"``), or ``None`` to allow it."""

# RFC 6598 shared space; Python 3.11 calls it neither private nor global.
_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")  # RFC 6052: the low 32 bits are an IPv4 address


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one stands for (mapped, NAT64, 6to4): where packets go."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return address.sixtofour


def refusal_reason(address: IPAddress) -> str | None:
    """Why fetching from ``address`` is refused, or ``None`` for a public address."""
    if isinstance(address, ipaddress.IPv6Address):
        inner = _embedded_ipv4(address)
        if inner is not None:
            # Judged by the IPv4 host it reaches: ::ffff:10.0.0.1 is 10.0.0.1, while a
            # DNS64 answer for a public host (64:ff9b::/96) stays fetchable.
            return refusal_reason(inner)
    # Most specific first: Python also counts loopback, link-local and 240/4 as private.
    if address.is_unspecified:
        return "an unspecified address"
    if address.is_loopback:
        return "a loopback address"
    if address.is_link_local:
        return "a link-local address (cloud metadata services live there)"
    if address.is_multicast:
        return "a multicast address"
    if isinstance(address, ipaddress.IPv4Address) and address in _CGNAT:
        return "a carrier-grade NAT address"
    if address.is_reserved:
        return "a reserved address"
    if address.is_private:
        return "a private address"
    if not address.is_global:
        return "a non-public address"
    return None


def resolve_host(host: str, port: int) -> list[IPAddress]:
    """Every address ``host`` resolves to, in the resolver's order of preference."""
    # getaddrinfo has no timeout of its own (the system resolver's, ~5 s per try,
    # applies): engine.guarded_http waits for it only until the download's deadline or
    # the job's cancel.
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    addresses: list[IPAddress] = []
    for _family, _type, _proto, _canon, sockaddr in infos:
        # The scope id of a link-local IPv6 answer ("fe80::1%eth0") is not part of the address.
        address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        if address not in addresses:
            addresses.append(address)
    return addresses
