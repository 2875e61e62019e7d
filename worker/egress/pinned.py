"""Connections made to an address the policy checked: requests' adapter for the egress policy's sessions.

The connection keeps the URL's name as its host (the Host header, and for https the SNI and the name the
certificate must match) and connects to one of the checked addresses, directly or, when the operator
named a proxy for it (proxies.py), through a CONNECT tunnel to that address.
"""

import ipaddress
import socket
import sys
from typing import Protocol

from requests.adapters import HTTPAdapter
from requests.utils import select_proxy
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError
from urllib3.poolmanager import SSL_KEYWORDS
from urllib3.util.connection import create_connection

from worker.egress.proxies import Proxies, Proxy
from worker.egress.redaction import redact
from worker.errors import InputNotAllowed

_MAX_PROXY_ANSWER = 65536


class Checks(Protocol):
    """What the adapter asks of the policy (worker.egress.EgressPolicy)."""

    proxies: Proxies

    def resolve(self, url: str): ...


class _PinnedConnectionMixin:
    """A urllib3 connection that connects to the addresses it was given, never resolving its host.

    The host stays the URL's name, so urllib3 sends it as the Host header and, over TLS, as the
    SNI name and the name the certificate must match.
    """

    addresses: tuple[str, ...] = ()
    # A CONNECT tunnel to the checked address through it (not `proxy`: urllib3's own attribute, set to None).
    via: Proxy | None = None

    def _new_conn(self) -> socket.socket:
        failure: Exception | None = None
        for address in self.addresses:
            try:
                sock = self._tunnel_to(address) if self.via else self._connect(address, self.port)
            except TimeoutError as exc:
                failure = ConnectTimeoutError(
                    self, f"Connection to {self.host} ({address}) timed out. (connect timeout={self.timeout})"
                )
                failure.__cause__ = exc
            except OSError as exc:
                failure = NewConnectionError(self, f"Failed to establish a new connection to {address}: {exc}")
                failure.__cause__ = exc
            else:
                sys.audit("http.client.connect", self, self.host, self.port)
                return sock
        raise failure or NewConnectionError(self, "no address to connect to")

    def _connect(self, host: str, port: int) -> socket.socket:
        return create_connection(
            (host, port), self.timeout, source_address=self.source_address, socket_options=self.socket_options
        )

    def _tunnel_to(self, address: str) -> socket.socket:
        """A socket to the proxy, tunnelled to `address` (checked) at the URL's port: CONNECT names the
        address, not the host, so the proxy resolves nothing."""
        proxy = self.via
        target = f"[{address}]:{self.port}" if ":" in address else f"{address}:{self.port}"
        sock = self._connect(proxy.host, proxy.port)
        try:
            lines = [f"CONNECT {target} HTTP/1.1", f"Host: {target}"]
            if proxy.authorization:
                lines.append(f"Proxy-Authorization: {proxy.authorization}")
            sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("ascii"))
            answer = b""
            while b"\r\n\r\n" not in answer and len(answer) < _MAX_PROXY_ANSWER:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                answer += chunk
            status = answer.split(b"\r\n", 1)[0].decode("latin-1")
            if status.split(" ")[1:2] != ["200"]:
                raise OSError(f"the proxy {proxy.host}:{proxy.port} answered {status!r} to CONNECT {target}")
            return sock
        except BaseException:
            sock.close()
            raise


def _pinned_pool(
    scheme: str, host: str, port: int, addresses: tuple[str, ...], proxy: Proxy | None, **kwargs
) -> HTTPConnectionPool:
    base_pool, base_conn = (
        (HTTPSConnectionPool, HTTPSConnection) if scheme == "https" else (HTTPConnectionPool, HTTPConnection)
    )
    attributes = {"addresses": addresses, "via": proxy}
    connection = type(f"Pinned{base_conn.__name__}", (_PinnedConnectionMixin, base_conn), attributes)
    pool = base_pool(host, port, maxsize=1, **kwargs)
    pool.ConnectionCls = connection
    return pool


class PinnedAdapter(HTTPAdapter):
    """requests' adapter with every connection checked by the policy and made to a checked address."""

    def __init__(self, policy: Checks) -> None:
        super().__init__(max_retries=0)
        self.policy = policy
        self._pools: dict[tuple, HTTPConnectionPool] = {}

    def get_connection_with_tls_context(self, request, verify, proxies=None, cert=None) -> HTTPConnectionPool:
        if select_proxy(request.url, proxies):  # the policy's own (HTTPS_PROXY ...) only, and only as a tunnel
            raise ValueError("a request's proxies are not taken by the egress policy's sessions")
        destination = self.policy.resolve(request.url)
        host_params, pool_kwargs = self.build_connection_pool_key_attributes(request, verify, cert)
        host = str(host_params["host"]).strip("[]").lower().rstrip(".")
        try:
            host = str(ipaddress.IPv6Address(host))  # [0:0::1] as [::1], as the check reads it
        except ValueError:
            pass  # a name
        if (host_params["scheme"], host) != (destination.origin.scheme, destination.origin.host):
            # requests read the URL differently from our check: refuse rather than guess which is right.
            raise InputNotAllowed(f"URL is ambiguous (its host reads two ways): {redact(request.url)}")
        if host_params["scheme"] != "https":
            pool_kwargs = {k: v for k, v in pool_kwargs.items() if k not in SSL_KEYWORDS}
        origin = destination.origin
        proxy = self.policy.proxies.for_url(origin.scheme, origin.host, origin.port)
        key = (origin, destination.addresses, proxy, tuple(sorted(pool_kwargs.items())))
        if key not in self._pools:
            self._pools[key] = _pinned_pool(
                host_params["scheme"], host_params["host"], origin.port, destination.addresses, proxy, **pool_kwargs
            )
        return self._pools[key]

    def close(self) -> None:
        super().close()
        for pool in self._pools.values():
            pool.close()
        self._pools.clear()
