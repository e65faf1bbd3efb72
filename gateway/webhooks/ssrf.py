"""The SSRF guard: callbacks may reach the public internet, never Muster's own network.

Two checks, with one policy (``Guard``):

1. On the URL, at submit and again before every attempt (``Guard.check_url``): https only (plain
   http when ``MUSTER_WEBHOOK_ALLOW_HTTP`` is set), no credentials, and a host that is a name or
   an allowed address. Numeric hosts in other forms than a dotted quad (``2130706433``,
   ``0x7f000001``, ``127.1``) are refused outright: resolvers read them as addresses.
2. At connect time, on every address a connection would go to: ``GuardedResolver`` refuses a
   host name that resolves to a refused address, and ``Guard.socket_factory`` (handed to
   aiohttp's connector) refuses to open a socket to one, which also covers literal addresses
   that aiohttp never sends through the resolver. Nothing is sent to a refused address: the
   refusal happens before ``connect()``.

Refused: loopback, private, link-local, carrier-grade NAT (100.64.0.0/10), multicast, reserved,
unspecified, documentation and other non-global ranges, the cloud metadata addresses, and the
same addresses inside IPv6 (IPv4-mapped ``::ffff:a.b.c.d``, IPv4-compatible, NAT64 and 6to4),
unless a network of ``MUSTER_WEBHOOK_ALLOW_NETS`` contains the address.

Redirects are never followed (the delivery loop does not), so the checked host is the only one.

What a tenant is told: at submit, what is wrong with its URL (it wrote the address, so naming it
and its range tells nothing new); at delivery, when an address is refused, only
``SSRF_PRIVATE_ADDRESS``. What a host name resolves to, and why that is refused, would map Muster's
own network for the tenant, so ``gateway.errors.AddressRefused`` prints as ``SSRF_PRIVATE_ADDRESS``
and keeps the host, its addresses and the reason in ``detail``, for the server log.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from aiohttp import TCPConnector
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

from gateway.errors import SSRF_REFUSED, AddressRefused

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

METADATA: frozenset[Address] = frozenset(
    {
        ipaddress.ip_address("169.254.169.254"),  # AWS, GCP, Azure, OpenStack, ...
        ipaddress.ip_address("fd00:ec2::254"),  # AWS over IPv6
        ipaddress.ip_address("168.63.129.16"),  # Azure's wire server
        ipaddress.ip_address("100.100.100.200"),  # Alibaba Cloud
    }
)
CARRIER_GRADE_NAT = ipaddress.ip_network("100.64.0.0/10")
DOCUMENTATION: tuple[Network, ...] = tuple(
    ipaddress.ip_network(n)
    for n in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "2001:db8::/32", "3fff::/20")
)
NAT64 = ipaddress.ip_network("64:ff9b::/96")
IPV4_COMPATIBLE = ipaddress.ip_network("::/96")


@dataclass(frozen=True, kw_only=True, slots=True)
class UrlRefusal:
    """Why the guard refuses a callback URL: ``detail`` for its author (the 422 at submit) and the
    server log; ``address`` when it is the address the URL names that is refused, of which a
    delivery's record says only ``SSRF_PRIVATE_ADDRESS``."""

    detail: str
    address: bool = False


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for, if it is one of the IPv4-in-IPv6 forms."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in NAT64 or (address in IPV4_COMPATIBLE and int(address) > 1):
        return ipaddress.IPv4Address(int(address) & 0xFFFF_FFFF)
    return None


def _reason(address: Address) -> str | None:
    """Why this address is refused (before any allow-list), or None if it is public."""
    if address in METADATA:
        return "a cloud metadata address"
    if address.is_unspecified:
        return "unspecified"
    if address.is_loopback:
        return "loopback"
    if address.is_link_local:
        return "link-local"
    if address.is_multicast:
        return "multicast"
    if address in CARRIER_GRADE_NAT:
        return "carrier-grade NAT (100.64.0.0/10)"
    if any(address in net for net in DOCUMENTATION if net.version == address.version):
        return "reserved for documentation"
    if address.is_reserved:
        return "reserved"
    if address.is_private:
        return "private"
    if not address.is_global:
        return "not globally routable"
    return None


def parse_networks(values: Iterable[str]) -> tuple[Network, ...]:
    """``MUSTER_WEBHOOK_ALLOW_NETS`` entries: networks or single addresses."""
    return tuple(ipaddress.ip_network(value.strip(), strict=False) for value in values)


@dataclass(frozen=True, kw_only=True, slots=True)
class Guard:
    allow_nets: tuple[Network, ...] = ()
    allow_http: bool = False

    @classmethod
    def from_settings(cls, allow_nets: Iterable[str], allow_http: bool) -> Guard:
        return cls(allow_nets=parse_networks(allow_nets), allow_http=allow_http)

    def _allowed(self, address: Address) -> bool:
        return any(address in net for net in self.allow_nets if net.version == address.version)

    def refusal(self, address: Address) -> str | None:
        """Why a connection to ``address`` is refused, or None if it may be made."""
        if isinstance(address, ipaddress.IPv6Address) and address.scope_id:
            address = ipaddress.IPv6Address(str(address).split("%", 1)[0])
        if self._allowed(address):
            return None
        inner = _embedded_ipv4(address) if isinstance(address, ipaddress.IPv6Address) else None
        if inner is not None:
            if self._allowed(inner):
                return None
            reason = _reason(inner)
            return None if reason is None else f"an IPv6 form of {inner}, which is {reason}"
        return _reason(address)

    def check_url(self, url: str) -> UrlRefusal | None:
        """Why this callback URL is refused, or None. Resolves nothing: host names are checked
        at connect time."""
        try:
            parts = urlsplit(url)
            parts.port  # noqa: B018 - raises ValueError on a malformed port
        except ValueError as exc:
            return UrlRefusal(detail=f"is not a valid URL: {exc}")
        scheme = parts.scheme.lower()
        if scheme != "https" and not (scheme == "http" and self.allow_http):
            if scheme == "http":
                return UrlRefusal(
                    detail="must use https (plain http needs MUSTER_WEBHOOK_ALLOW_HTTP)"
                )
            return UrlRefusal(detail="must be an https URL")
        if "@" in parts.netloc or parts.username is not None or parts.password is not None:
            return UrlRefusal(detail="must not carry credentials")
        host = parts.hostname
        if not host:
            return UrlRefusal(detail="has no host")
        address = _literal(host)
        if isinstance(address, str):
            return UrlRefusal(detail=address)
        if address is None:
            return None
        reason = self.refusal(address)
        if reason is None:
            return None
        return UrlRefusal(detail=f"{SSRF_REFUSED}: {host} is {reason}", address=True)

    def check_address(self, host: str) -> None:
        """Raise ``AddressRefused`` unless a connection to the literal address ``host`` may be
        made."""
        address = ipaddress.ip_address(host.split("%", 1)[0])
        reason = self.refusal(address)
        if reason is not None:
            raise AddressRefused(f"{SSRF_REFUSED}: {address} is {reason}")

    def socket_factory(self, addr_info: tuple[Any, ...]) -> socket.socket:
        """aiohttp's socket factory: the last check, on the very address about to be dialled."""
        family, kind, proto, _, sockaddr = addr_info
        self.check_address(str(sockaddr[0]))
        return socket.socket(family=family, type=kind, proto=proto)

    def connector(self, resolver: AbstractResolver | None = None, **options: Any) -> TCPConnector:
        """A connector that resolves through the guard and dials only allowed addresses.
        ``resolver`` is the inner resolver (default: aiohttp's)."""
        return TCPConnector(
            resolver=GuardedResolver(self, resolver or DefaultResolver()),
            socket_factory=self.socket_factory,
            **options,
        )


def _literal(host: str) -> Address | str | None:
    """The address a URL's host denotes when it is a literal one; a problem (str) for numeric
    forms other than a dotted quad; None for a host name."""
    host = host.removesuffix(".")  # "127.0.0.1." and "localhost." name the same hosts
    if host == "localhost" or host.endswith(".localhost"):
        return ipaddress.IPv4Address("127.0.0.1")  # RFC 6761: always the loopback
    if ":" in host:
        try:
            return ipaddress.IPv6Address(host)
        except ValueError:
            return "has a host that is not a valid IPv6 address"
    try:
        return ipaddress.IPv4Address(host)
    except ValueError:
        pass
    try:
        packed = socket.inet_aton(host)
    except OSError:
        return None  # a host name
    address = ipaddress.IPv4Address(packed)
    return f"has a numeric host {host!r} (that is {address}); write addresses as a.b.c.d"


class GuardedResolver(AbstractResolver):
    """Resolves through ``inner`` and refuses a name if any of its addresses is refused: a name
    that answers with a private address among public ones is an attack, not a mistake."""

    def __init__(self, guard: Guard, inner: AbstractResolver) -> None:
        self._guard = guard
        self._inner = inner

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        addresses = [ipaddress.ip_address(str(r["host"]).split("%", 1)[0]) for r in results]
        for address in addresses:
            reason = self._guard.refusal(address)
            if reason is not None:
                listed = ", ".join(str(a) for a in addresses)
                which = "which is" if len(addresses) == 1 else f"and {address} is"
                raise AddressRefused(
                    f"{SSRF_REFUSED}: {host} resolves to {listed}, {which} {reason}"
                )
        return results

    async def close(self) -> None:
        await self._inner.close()
