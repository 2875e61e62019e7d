"""Outbound HTTP, safe by default: every request the worker makes goes through an `EgressPolicy`.

That is audio downloads (and each redirect hop), callback POSTs and model downloads (and theirs).
For each request the policy parses the URL, resolves its host (every address `getaddrinfo` gives)
and decides on those addresses; the connection is then made to one of the addresses it checked,
never to a second lookup of the name, so a name that changes its answer between the check and the
connect (DNS rebinding) reaches nothing new. The request itself keeps the name: its Host header,
and for https the SNI and the certificate check, are those of the URL.

Refused by default (InputNotAllowed, before any connection):
  - schemes other than http and https; a URL without a host; a host that is not a plain DNS name
    or IP literal (percent-escapes, an IPv6 zone, backslashes, spaces or control characters);
  - credentials in the URL (`user:pass@host`): parsers disagree on where they end
    (`http://127.0.0.1:80@evil/`, `http://a@b@c/`), and a password in a URL ends up in logs;
    use a signed query string instead (queries are redacted from every message, see `redact`);
  - a host outside ALLOWED_URL_HOSTS, when that is set;
  - cloud metadata names (metadata.google.internal, ...) whatever they resolve to;
  - a host with ANY address that is not public unicast: loopback (127/8, ::1), "this network"
    (0/8, ::), private (RFC 1918, fc00::/7), link-local (169.254/16 with the metadata address
    169.254.169.254, fe80::/10), shared/CGNAT (100.64/10), multicast, broadcast, reserved,
    documentation and benchmarking ranges, and IPv6 forms that embed an IPv4 address
    (IPv4-mapped ::ffff:a.b.c.d, IPv4-compatible ::a.b.c.d, 6to4 2002::/16, NAT64 64:ff9b::/96)
    when the embedded address is refused. Every spelling of an address (2130706433, 0177.0.0.1,
    0x7f.1, 127.1, [::ffff:7f00:1], a name in /etc/hosts) resolves to the same address first.

Opened by the operator, exactly:
  - ALLOWED_PRIVATE_ORIGINS: `scheme://host:port` origins whose URLs may reach any address (the
    host compared as written in the URL, lower-cased: http://localhost:8000 does not open
    http://127.0.0.1:8000). The gateway's own origin (GATEWAY_PUBLIC_URL, or
    http://GATEWAY_HOST:GATEWAY_PORT) is added by the wiring, so its upload URLs work;
  - ALLOWED_PRIVATE_NETWORKS: CIDRs; an address inside one is allowed for any URL;
  - model downloads also allow WHISPER_DOWNLOAD_URL's own origin (not the hosts it redirects to).

A proxy (HTTPS_PROXY, HTTP_PROXY, NO_PROXY from the settings, proxies.py) carries the connection to a
checked address through a CONNECT tunnel; requests' own proxy handling and .netrc are never used (a proxy
given the name would resolve it itself, after our check). This package: the policy here, the
connections in pinned.py, the proxies in proxies.py, redaction in redaction.py.
"""

import ipaddress
import re
import socket
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from urllib.parse import urlsplit

import requests

from worker.egress.pinned import PinnedAdapter
from worker.egress.proxies import Proxies, Proxy
from worker.egress.redaction import redact, redact_text
from worker.errors import InputNotAllowed

__all__ = ["EgressPolicy", "NameNotResolved", "Origin", "Proxies", "Proxy", "origin_of", "parse_origin", "redact",
           "redact_text"]  # fmt: skip

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], Sequence[str]]

DEFAULT_PORTS = {"http": 80, "https": 443}
MAX_REDIRECTS = 5
DIRECT = Proxies()  # no proxy: every connection made directly

# Names of cloud metadata services: refused whatever they resolve to (only an exact origin opens them).
METADATA_NAMES = frozenset(
    {
        "metadata",
        "metadata.google.internal",
        "metadata.goog",
        "metadata.azure.internal",
        "instance-data",
        "instance-data.ec2.internal",
        "metadata.packet.net",
        "metadata.platformequinix.com",
    }
)

# Checked in order; the first match names the refusal. `not is_global` (and is_reserved) after them
# catches whatever else Python's table knows.
_SPECIAL: tuple[tuple[IPNetwork, str], ...] = tuple(
    (ipaddress.ip_network(net), label)
    for net, label in (
        ("0.0.0.0/8", "unspecified ('this network')"),
        ("127.0.0.0/8", "loopback"),
        ("10.0.0.0/8", "private"),
        ("172.16.0.0/12", "private"),
        ("192.168.0.0/16", "private"),
        ("169.254.169.254/32", "link-local (the cloud metadata service)"),
        ("169.254.0.0/16", "link-local"),
        ("100.64.0.0/10", "shared address space (CGNAT)"),
        ("192.0.0.0/24", "IETF protocol assignment"),
        ("192.0.2.0/24", "documentation"),
        ("198.51.100.0/24", "documentation"),
        ("203.0.113.0/24", "documentation"),
        ("198.18.0.0/15", "benchmarking"),
        ("192.88.99.0/24", "6to4 relay anycast"),
        ("224.0.0.0/4", "multicast"),
        ("255.255.255.255/32", "broadcast"),
        ("240.0.0.0/4", "reserved"),
        ("::/128", "unspecified"),
        ("::1/128", "loopback"),
        ("::/96", "IPv4-compatible (deprecated)"),
        ("64:ff9b:1::/48", "local-use NAT64"),
        ("100::/64", "discard-only"),
        ("2001::/23", "IETF protocol assignment (Teredo, ORCHID, benchmarking)"),
        ("2001:db8::/32", "documentation"),
        ("3fff::/20", "documentation"),
        ("5f00::/16", "segment routing"),
        ("fc00::/7", "private (unique local)"),
        ("fe80::/10", "link-local"),
        ("fec0::/10", "site-local (deprecated)"),
        ("ff00::/8", "multicast"),
    )
)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_NAME = re.compile(r"[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?)*")
_UNSAFE = re.compile(r"[\x00-\x20\x7f\\]")


class NameNotResolved(requests.ConnectionError):
    """The URL's host did not resolve (DNS down, or no such name): a network error, retried as such."""


@dataclass(frozen=True)
class Origin:
    """A checked URL's scheme, host (lower case, no trailing dot, IPv6 without brackets) and port."""

    scheme: str
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


@dataclass(frozen=True)
class Destination:
    """What a request may connect to: the URL's origin and the addresses that were checked."""

    origin: Origin
    addresses: tuple[str, ...]


def _system_resolver(host: str, port: int) -> list[str]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise NameNotResolved(f"{host!r} did not resolve: {exc}") from None
    return list(dict.fromkeys(str(info[4][0]) for info in infos if info[0] in (socket.AF_INET, socket.AF_INET6)))


@dataclass(frozen=True)
class EgressPolicy:
    """Which URLs the worker may request, and the session that enforces it on every connection.

    The default (`EgressPolicy()`) allows any host that resolves only to public addresses.
    """

    allowed_hosts: frozenset[str] | None = None  # ALLOWED_URL_HOSTS; None: any host
    allowed_origins: frozenset[Origin] = frozenset()  # ALLOWED_PRIVATE_ORIGINS (+ the gateway's)
    allowed_networks: tuple[IPNetwork, ...] = ()  # ALLOWED_PRIVATE_NETWORKS
    proxies: Proxies = DIRECT  # HTTPS_PROXY, HTTP_PROXY, NO_PROXY: how to connect, never what
    resolver: Resolver = field(default=_system_resolver, compare=False, repr=False)

    @classmethod
    def build(
        cls,
        *,
        allowed_hosts: Iterable[str] | None = None,
        origins: Iterable[str] = (),
        networks: Iterable[str] = (),
        proxies: Proxies = DIRECT,
        resolver: Resolver = _system_resolver,
    ) -> "EgressPolicy":
        """From settings' strings; ValueError names an origin or network that does not parse."""
        hosts = None if allowed_hosts is None else frozenset(h.strip().lower().rstrip(".") for h in allowed_hosts)
        return cls(
            allowed_hosts=hosts,
            allowed_origins=frozenset(parse_origin(o) for o in origins if o.strip()),
            allowed_networks=tuple(ipaddress.ip_network(n.strip(), strict=False) for n in networks if n.strip()),
            proxies=proxies,
            resolver=resolver,
        )

    def allowing(self, origin: str, *, direct: bool = False) -> "EgressPolicy":
        """This policy plus one more allowed origin (the origin of `origin`, a URL; its path is ignored);
        `direct`: its host reached without a proxy (one on the workers' own network: the gateway)."""
        allowed = origin_of(origin)
        proxies = self.proxies.bypassing(allowed.host) if direct else self.proxies
        return replace(self, allowed_origins=self.allowed_origins | {allowed}, proxies=proxies)

    def check_url(self, url: str) -> Origin:
        """The URL's origin, or InputNotAllowed for its form or host; no DNS, no connection."""
        origin = origin_of(url)
        if self.allowed_hosts is not None and origin.host not in self.allowed_hosts:
            raise InputNotAllowed(f"host {origin.host!r} is not in ALLOWED_URL_HOSTS: {redact(url)}")
        return origin

    def resolve(self, url: str) -> Destination:
        """Check `url` and resolve its host; InputNotAllowed unless every address may be reached.

        NameNotResolved (a requests.ConnectionError) when the host does not resolve.
        """
        origin = self.check_url(url)
        if origin in self.allowed_origins:
            return Destination(origin, self._addresses(origin))
        if origin.host in METADATA_NAMES:
            raise InputNotAllowed(f"{origin.host!r} is a cloud metadata service: {redact(url)}")
        addresses = self._addresses(origin)
        for address in addresses:
            reason = self.refusal(ipaddress.ip_address(address))
            if reason is not None:
                what = "is" if _is_ip(origin.host) else "resolves to"
                raise InputNotAllowed(
                    f"host {origin.host!r} {what} a non-public address ({reason}); outbound requests go to public"
                    f" addresses only unless ALLOWED_PRIVATE_ORIGINS or ALLOWED_PRIVATE_NETWORKS allow it: {redact(url)}"
                )
        return Destination(origin, addresses)

    def refusal(self, ip: IPAddress) -> str | None:
        """Why `ip` may not be reached (None: it may): its kind of address, unless an allowed network holds it."""
        if any(ip in network for network in self.allowed_networks):
            return None
        if isinstance(ip, ipaddress.IPv6Address):
            embedded = (
                ip.ipv4_mapped
                or ip.sixtofour
                or (ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF) if ip in _NAT64 else None)
            )
            if embedded is not None:
                inner = self.refusal(embedded)
                return None if inner is None else f"{inner}, {embedded} embedded"
        return _kind(ip)

    def _addresses(self, origin: Origin) -> tuple[str, ...]:
        addresses = tuple(self.resolver(origin.host, origin.port))
        if not addresses:
            raise NameNotResolved(f"{origin.host!r} resolved to no address")
        return addresses

    def session(self) -> requests.Session:
        """A requests Session whose every request (and redirect hop) is checked and pinned by this policy.

        Not shared between threads: make one per download or callback (`with policy.session() as s:`).
        """
        session = requests.Session()
        session.trust_env = False  # no proxies or .netrc from the environment
        session.max_redirects = MAX_REDIRECTS
        adapter = PinnedAdapter(self)
        for prefix in ("http://", "https://", ""):  # "": any other scheme, refused by the policy (not InvalidSchema)
            session.mount(prefix, adapter)
        return session


def _kind(ip: IPAddress) -> str | None:
    for network, label in _SPECIAL:
        if ip in network:
            return label
    if ip.is_multicast:
        return "multicast"
    if ip.is_reserved:
        return "reserved"
    if not ip.is_global:
        return "non-public"
    return None


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def origin_of(url: str) -> Origin:
    """The origin of an http(s) URL, checked for form (see the module docstring); InputNotAllowed if not."""
    shown = redact(url)
    if _UNSAFE.search(url):
        raise InputNotAllowed(f"URL contains spaces, control characters or backslashes: {shown}")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise InputNotAllowed(f"URL does not parse ({exc}): {shown}") from None
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise InputNotAllowed(f"URL scheme {parts.scheme or '(none)'!r} is not allowed (http or https only): {shown}")
    if "@" in parts.netloc:
        raise InputNotAllowed(f"URL carries credentials (user@host), which are not accepted: {shown}")
    host = (parts.hostname or "").rstrip(".")
    if not host:
        raise InputNotAllowed(f"URL has no host: {shown}")
    if "[" in parts.netloc:
        if "%" in host or not _is_ipv6(host):
            raise InputNotAllowed(f"URL host is not an IPv6 address: {shown}")
        host = str(ipaddress.IPv6Address(host))
    else:
        host = _ascii_name(host, shown)
    return Origin(scheme, host, port if port is not None else DEFAULT_PORTS[scheme])


def _is_ipv6(host: str) -> bool:
    try:
        ipaddress.IPv6Address(host)
    except ValueError:
        return False
    return True


def _ascii_name(host: str, shown: str) -> str:
    try:
        ascii_host = host.encode("idna").decode("ascii").lower() if not host.isascii() else host.lower()
    except UnicodeError:
        raise InputNotAllowed(f"URL host is not a valid name: {shown}") from None
    if not _NAME.fullmatch(ascii_host):
        raise InputNotAllowed(f"URL host is not a valid name: {shown}")
    return ascii_host


def parse_origin(text: str) -> Origin:
    """`scheme://host[:port]` (a trailing slash allowed, nothing else) as an Origin; ValueError if not."""
    text = text.strip()
    parts = urlsplit(text)
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"an origin is scheme://host:port, with no path or query: {text!r}")
    try:
        return origin_of(text)
    except InputNotAllowed as exc:
        raise ValueError(f"not an http(s) origin: {text!r} ({exc})") from None


PUBLIC_ONLY = EgressPolicy()  # the default: any host, public addresses only
