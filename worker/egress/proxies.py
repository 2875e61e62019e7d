"""The operator's HTTP proxy for outbound requests (HTTPS_PROXY, HTTP_PROXY, NO_PROXY, as curl reads them).

Only where it goes is the proxy's business: what is reached is still decided by the egress policy, which
resolves the target and checks its addresses first, and the tunnel is opened to a checked address, never
to the name (the proxy would resolve it again: DNS rebinding). So the proxy is allowed as a proxy only: a
URL that names it is checked as any other.
"""

import base64
import ipaddress
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit


@dataclass(frozen=True)
class Proxy:
    """An http:// proxy: where to connect, and its Proxy-Authorization (from the URL's user:password)."""

    host: str
    port: int
    authorization: str | None = None

    @classmethod
    def parse(cls, url: str) -> "Proxy":
        """ValueError (naming no password) unless `url` is http://[user:password@]host[:port][/]."""
        try:
            parts = urlsplit(url.strip())
            port = parts.port or 80
        except ValueError:
            raise ValueError("a proxy is http://host:port") from None
        if parts.scheme != "http" or not parts.hostname or parts.path not in ("", "/") or parts.query:
            raise ValueError("a proxy is http://[user:password@]host:port (the tunnel to an https URL is TLS itself)")
        authorization = None
        if parts.username is not None:
            secret = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
            authorization = f"Basic {base64.b64encode(secret).decode()}"
        return cls(parts.hostname, port, authorization)

    def __repr__(self) -> str:  # the authorization holds the password
        return f"Proxy({self.host}:{self.port})"


@dataclass(frozen=True)
class Proxies:
    """Which proxy a URL goes through: `https` for https URLs, `http` for http ones; none for a host that
    `no_proxy` names (comma-separated: `*`, a name and its subdomains, an IP address or network; `:port`
    narrows an entry to one port)."""

    http: Proxy | None = None
    https: Proxy | None = None
    no_proxy: tuple[str, ...] = ()

    @classmethod
    def build(cls, *, http: str = "", https: str = "", no_proxy: str = "") -> "Proxies":
        return cls(
            Proxy.parse(http) if http.strip() else None,
            Proxy.parse(https) if https.strip() else None,
            tuple(entry.strip().lower() for entry in no_proxy.split(",") if entry.strip()),
        )

    def bypassing(self, host: str) -> "Proxies":
        """These proxies, with `host` reached directly too."""
        return Proxies(self.http, self.https, (*self.no_proxy, host.lower()))

    def for_url(self, scheme: str, host: str, port: int) -> Proxy | None:
        """The proxy for a checked URL's origin (host lower case, IPv6 without brackets), or None: direct."""
        proxy = self.https if scheme == "https" else self.http
        if proxy is None or any(_matches(entry, host, port) for entry in self.no_proxy):
            return None
        return proxy


def _matches(entry: str, host: str, port: int) -> bool:
    if entry == "*":
        return True
    name, _, wanted = entry.rpartition(":") if entry.count(":") == 1 else (entry, "", "")
    if wanted and wanted != str(port):
        return False
    name = name.strip("[]").lstrip(".").rstrip(".")
    try:
        return ipaddress.ip_address(host) in ipaddress.ip_network(name, strict=False)
    except ValueError:
        return host == name or host.endswith(f".{name}")
