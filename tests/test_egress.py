"""The egress policy: what is refused before any connection, what the operator can open, and
that a request connects to the address that was checked (worker/egress/).

No test sends a packet anywhere but 127.0.0.1: the `loopback_only` fixture turns any other
connection attempt into a test failure before the socket connects, and `no_dns` fails a test that
would ask a DNS server (only numeric hosts and /etc/hosts' `localhost` reach getaddrinfo; other
names go to resolvers the tests pass in).
"""

import contextlib
import http.server
import ipaddress
import secrets
import shutil
import socket
import socketserver
import ssl
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from worker.egress import (
    EgressPolicy,
    NameNotResolved,
    Origin,
    Proxies,
    Proxy,
    parse_origin,
    pinned,
    redact,
    redact_text,
)
from worker.errors import InputNotAllowed


class Trap(http.server.BaseHTTPRequestHandler):
    """Records every request it gets (path and Host header); answers 200 "ok"."""

    seen: list[tuple[str, str]]

    def do_GET(self) -> None:
        self.seen.append((self.path, self.headers.get("Host", "")))
        body = b"ok"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(autouse=True)
def no_dns(monkeypatch) -> None:
    real = socket.getaddrinfo

    def local_only(host, port, *args, **kwargs):
        if host != "localhost":
            try:
                real(host, port, flags=socket.AI_NUMERICHOST)
            except socket.gaierror:
                pytest.fail(f"the test would ask DNS for {host!r}")
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", local_only)


@pytest.fixture
def loopback_only(monkeypatch) -> list[tuple[str, int]]:
    """Every connection the egress module makes, recorded; any address but loopback fails the test."""
    made: list[tuple[str, int]] = []
    real = pinned.create_connection

    def guarded(address, *args, **kwargs):
        host, port = address
        if not ipaddress.ip_address(host).is_loopback:
            pytest.fail(f"the test tried to connect to {host}:{port}")
        made.append((host, port))
        return real(address, *args, **kwargs)

    monkeypatch.setattr(pinned, "create_connection", guarded)
    return made


@pytest.fixture
def trap(loopback_only) -> Iterator[tuple[int, list[tuple[str, str]]]]:
    seen: list[tuple[str, str]] = []
    handler = type("RecordingTrap", (Trap,), {"seen": seen})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1], seen
    server.shutdown()
    server.server_close()


# Every spelling that reaches this machine (or a private network, or the metadata service), and why it is refused.
SPELLINGS = [
    ("http://127.0.0.1:{port}/x", "loopback"),
    ("http://localhost:{port}/x", "loopback"),  # /etc/hosts
    ("http://2130706433:{port}/x", "loopback"),  # decimal
    ("http://0177.0.0.1:{port}/x", "loopback"),  # octal
    ("http://0x7f.1:{port}/x", "loopback"),  # hex, short form
    ("http://127.1:{port}/x", "loopback"),  # short form
    ("http://0.0.0.0:{port}/x", "unspecified"),
    ("http://[::1]:{port}/x", "loopback"),
    ("http://[::ffff:127.0.0.1]:{port}/x", "loopback, 127.0.0.1 embedded"),
    ("http://[0:0:0:0:0:ffff:7f00:1]:{port}/x", "loopback, 127.0.0.1 embedded"),
    ("http://[::127.0.0.1]:{port}/x", "IPv4-compatible"),
    ("http://[64:ff9b::7f00:1]:{port}/x", "loopback, 127.0.0.1 embedded"),  # NAT64
    ("http://[2002:7f00:1::]:{port}/x", "loopback, 127.0.0.1 embedded"),  # 6to4
    ("http://localhost.:{port}/x", "loopback"),  # trailing dot
    ("http://LOCALHOST:{port}/x", "loopback"),  # upper case
    ("http://LocalHost.:{port}/x", "loopback"),
    ("http://169.254.169.254/latest/meta-data", "cloud metadata"),
    ("http://169.254.1.1/", "link-local"),
    ("http://metadata.google.internal/computeMetadata/v1/", "cloud metadata service"),
    ("http://100.64.0.1/", "CGNAT"),
    ("http://10.0.0.1/", "private"),
    ("http://172.16.5.4/", "private"),
    ("http://192.168.1.1/", "private"),
    ("http://[fe80::1]/", "link-local"),
    ("http://[fc00::1]/", "private"),
    ("http://224.0.0.1/", "multicast"),
    ("http://255.255.255.255/", "broadcast"),
    ("http://240.0.0.1/", "reserved"),
    ("http://192.0.2.1/", "documentation"),
    ("http://[2001:db8::1]/", "documentation"),
    ("http://198.18.0.1/", "benchmarking"),
    ("http://%6c%6f%63%61%6c%68%6f%73%74:{port}/x", "not a valid name"),  # URL-encoded host
    ("http://[fe80::1%25lo]:{port}/x", "not an IPv6 address"),  # zone id
    ("http://127.0.0.1:{port}@evil.test/x", "credentials"),  # userinfo tricks: refused whatever the host
    ("http://evil.test@127.0.0.1:{port}/x", "credentials"),
    ("http://user:secret@127.0.0.1:{port}/x", "credentials"),
    ("http://evil.test\\@127.0.0.1:{port}/x", "backslashes"),
    ("file:///etc/passwd", "scheme 'file'"),
    ("gopher://127.0.0.1:{port}/x", "scheme 'gopher'"),
    ("http:///x", "no host"),
]


# What the session says where requests reads the URL before the policy does (None: not asked).
SESSION_READS = {
    "not a valid name": (InputNotAllowed, "loopback"),  # requests decodes the host first: then it is loopback
    "backslashes": None,  # requests reads host evil.test (the check before every hop refuses the backslash)
    "no host": (requests.exceptions.InvalidURL, "No host"),
}


@pytest.mark.parametrize(("url", "reason"), SPELLINGS)
def test_every_spelling_of_a_private_address_is_refused_before_connecting(trap, loopback_only, url, reason):
    port, seen = trap
    url = url.format(port=port)

    with pytest.raises(InputNotAllowed, match=reason):
        EgressPolicy().resolve(url)
    if (expected := SESSION_READS.get(reason, (InputNotAllowed, reason))) is not None:
        with EgressPolicy().session() as session, pytest.raises(expected[0], match=expected[1]):
            session.get(url, timeout=5)

    assert seen == [] and loopback_only == []  # nothing was even connected to


def test_a_name_resolving_to_several_addresses_is_refused_if_any_is_private(loopback_only):
    policy = EgressPolicy(resolver=lambda host, port: ["93.184.215.14", "10.1.2.3"])

    with pytest.raises(InputNotAllowed, match="resolves to a non-public address \\(private\\)"):
        policy.resolve("https://media.example.org/a.mp3")


def test_public_addresses_pass_and_embedded_public_ones_too():
    policy = EgressPolicy(resolver=lambda host, port: [host])
    for host in ("93.184.215.14", "[2606:4700::1111]", "[::ffff:93.184.215.14]", "[64:ff9b::5db8:d70e]"):
        assert policy.resolve(f"https://{host}/a.mp3").addresses


def test_allowed_hosts_still_apply_and_compare_by_name():
    policy = EgressPolicy.build(allowed_hosts=["media.example.org"], resolver=lambda host, port: ["93.184.215.14"])

    assert policy.resolve("https://MEDIA.example.org./a.mp3").origin == Origin("https", "media.example.org", 443)
    with pytest.raises(InputNotAllowed, match="'other.example.org' is not in ALLOWED_URL_HOSTS"):
        policy.resolve("https://other.example.org/a.mp3")


def test_an_allowed_origin_opens_exactly_that_origin(trap):
    port, seen = trap
    policy = EgressPolicy.build(origins=[f"http://127.0.0.1:{port}"])

    with policy.session() as session:
        assert session.get(f"http://127.0.0.1:{port}/upload", timeout=5).text == "ok"
        for other in (f"http://localhost:{port}/x", f"http://127.0.0.1:{port + 1}/x", f"https://127.0.0.1:{port}/x"):
            with pytest.raises(InputNotAllowed, match="non-public"):
                session.get(other, timeout=5)

    assert [path for path, _ in seen] == ["/upload"]


def test_an_allowed_network_opens_its_addresses_for_any_url(trap):
    port, seen = trap
    policy = EgressPolicy.build(networks=["127.0.0.0/8"])

    with policy.session() as session:
        assert session.get(f"http://localhost:{port}/a", timeout=5).text == "ok"
        assert session.get(f"http://2130706433:{port}/b", timeout=5).text == "ok"
        with pytest.raises(InputNotAllowed, match="private"):
            session.get("http://10.0.0.1/", timeout=5)

    assert [path for path, _ in seen] == ["/a", "/b"]
    with pytest.raises(InputNotAllowed, match="cloud metadata"):  # names are not opened by a network
        EgressPolicy.build(networks=["0.0.0.0/0"]).resolve("http://metadata.google.internal/")


def test_the_connection_goes_to_the_checked_address_and_keeps_the_name(trap, loopback_only):
    # Given a name only our resolver knows (the system's cannot resolve it: a second lookup would fail)
    port, seen = trap
    lookups: list[str] = []

    def resolver(host: str, port: int) -> list[str]:
        lookups.append(host)
        return ["127.0.0.1"]

    policy = EgressPolicy.build(networks=["127.0.0.1/32"], resolver=resolver)
    with policy.session() as session:
        response = session.get(f"http://pinned.test:{port}/audio.mp3", timeout=5)

    assert response.text == "ok"
    assert lookups == ["pinned.test"]  # resolved once, by the policy
    assert loopback_only == [("127.0.0.1", port)]  # connected to the checked address
    assert seen == [("/audio.mp3", f"pinned.test:{port}")]  # the Host header is the URL's name


def test_a_name_that_rebinds_after_the_check_is_refused_on_connect(trap, loopback_only):
    # Given a name that answers a public address first (the job's check), then loopback
    port, seen = trap
    answers = iter([["93.184.215.14"], ["127.0.0.1"]])
    policy = EgressPolicy(resolver=lambda host, port: next(answers))

    policy.resolve(f"http://rebind.test:{port}/a.mp3")  # the check when the job arrives passes
    with policy.session() as session, pytest.raises(InputNotAllowed, match="loopback"):
        session.get(f"http://rebind.test:{port}/a.mp3", timeout=5)

    assert seen == [] and loopback_only == []


def test_a_name_that_does_not_resolve_is_a_network_error(monkeypatch):
    def no_such_name(host, port, *args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_such_name)
    with pytest.raises(NameNotResolved):
        EgressPolicy().resolve("http://no-such-host.invalid/a.mp3")
    with EgressPolicy().session() as session, pytest.raises(requests.ConnectionError):
        session.get("http://no-such-host.invalid/a.mp3", timeout=5)


def test_each_redirect_hop_is_checked_by_the_session(trap, loopback_only):
    # Given an allowed origin that redirects to another port on loopback (not allowed)
    port, seen = trap

    class Redirect(Trap):
        def do_GET(self) -> None:
            self.send_response(302)
            self.send_header("Location", f"http://127.0.0.1:{port}/private")
            self.send_header("Content-Length", "0")
            self.end_headers()

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Redirect)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        policy = EgressPolicy.build(origins=[f"http://127.0.0.1:{server.server_address[1]}"])
        with policy.session() as session, pytest.raises(InputNotAllowed, match="loopback"):
            session.get(f"http://127.0.0.1:{server.server_address[1]}/start", timeout=5)  # redirects followed
    finally:
        server.shutdown()
        server.server_close()
    assert seen == []


@pytest.fixture
def tls_server(tmp_path) -> Iterator[tuple[int, Path, list[str]]]:
    """HTTPS on 127.0.0.1 with a self-signed certificate for `pinned.test`; records the SNI names it gets."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make the test certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=pinned.test",
         "-addext", "subjectAltName=DNS:pinned.test", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    names: list[str] = []
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    context.sni_callback = lambda sock, name, ctx: names.append(name)
    handler = type("TlsTrap", (Trap,), {"seen": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1], cert, names
    server.shutdown()
    server.server_close()


def test_https_sends_the_name_as_sni_and_verifies_the_certificate_against_it(tls_server, loopback_only):
    port, cert, names = tls_server
    resolve_all = {"pinned.test": ["127.0.0.1"], "other.test": ["127.0.0.1"]}
    policy = EgressPolicy.build(networks=["127.0.0.1/32"], resolver=lambda host, port: resolve_all[host])

    with policy.session() as session:
        assert session.get(f"https://pinned.test:{port}/", verify=str(cert), timeout=5).text == "ok"
        with pytest.raises(requests.exceptions.SSLError, match="other.test"):  # same address, wrong name
            session.get(f"https://other.test:{port}/", verify=str(cert), timeout=5)

    assert names[:2] == ["pinned.test", "other.test"]
    assert all(host == "127.0.0.1" for host, _ in loopback_only)


def test_origins_and_networks_from_settings_must_parse():
    assert parse_origin("HTTP://Gateway:8000/") == Origin("http", "gateway", 8000)
    assert parse_origin("https://[::1]") == Origin("https", "::1", 443)
    assert str(parse_origin("http://[::1]:8000")) == "http://[::1]:8000"
    for bad in ("http://gateway:8000/path", "gateway:8000", "ftp://gateway", "http://user@gateway"):
        with pytest.raises(ValueError):
            parse_origin(bad)
    with pytest.raises(ValueError):
        EgressPolicy.build(networks=["10.0.0.0/33"])


def test_redaction_drops_credentials_and_queries():
    assert redact("https://user:secret@Media.example.org:8443/a/b.mp3?token=secret#x") == (
        "https://media.example.org:8443/a/b.mp3?..."
    )
    assert redact("http://127.0.0.1/a.mp3") == "http://127.0.0.1/a.mp3"
    assert redact("http://[::1]:80/") == "http://[::1]:80/"
    text = "HTTPConnectionPool(host='h', port=1): Max retries exceeded with url: /a.mp3?token=secret (Caused by x)"
    assert "secret" not in redact_text(text) and "/a.mp3?..." in redact_text(text)
    assert redact_text("see https://u:secret@h/x?sig=secret.") == "see https://h/x?..."


def test_redaction_cuts_token_like_path_segments_and_keeps_file_names():
    """The gateway's upload URLs carry their capability in the path (uploads.py: 43 characters)."""
    token = secrets.token_urlsafe(32)
    assert redact(f"http://gateway:8000/uploads/{token}") == f"http://gateway:8000/uploads/{token[:4]}..."
    for text in (f"HTTP 404: http://gateway:8000/uploads/{token} (gone)", f"at /uploads/{token}.", f"/{token}/a.mp3"):
        assert token not in redact_text(text) and token[:4] in redact_text(text), text
    hexed = secrets.token_hex(20)  # a webhook's key in its path
    assert (
        redact(f"https://hooks.example.org/services/{hexed}/x")
        == f"https://hooks.example.org/services/{hexed[:4]}.../x"
    )
    names = "https://cdn.example.org/talks/ljspeech_LJ001-0001_to_0032_concat.wav", "https://h/2026/episode-12/"
    for url in names:
        assert redact(url) == url and redact_text(f"see {url} now") == f"see {url} now"


def test_the_wiring_allows_the_gateways_origin_and_nothing_else_on_its_host(tmp_path):
    from worker.config import Settings
    from worker.wiring import egress_policy, handler_options, model_downloader

    default = egress_policy(Settings())  # as `make run` starts the worker and the gateway
    assert default.allowed_origins == {Origin("http", "127.0.0.1", 8000)} and default.allowed_hosts is None
    assert default.resolve("http://127.0.0.1:8000/v1/uploads/abc").addresses == ("127.0.0.1",)
    for other in ("http://127.0.0.1:9100/metrics", "http://localhost:8000/v1/uploads/abc", "https://127.0.0.1:8000/"):
        with pytest.raises(InputNotAllowed):
            default.resolve(other)

    settings = Settings(
        gateway_public_url="http://gateway:8000/prefix",
        allowed_url_hosts="gateway,media.example.org",
        allowed_private_origins="http://10.1.2.3:9000, https://media.internal",
        allowed_private_networks="10.20.0.0/16",
        whisper_models_dir=tmp_path,
    )
    policy = egress_policy(settings)
    assert policy.allowed_origins == {
        Origin("http", "gateway", 8000),
        Origin("http", "10.1.2.3", 9000),
        Origin("https", "media.internal", 443),
    }
    assert policy.allowed_networks == (ipaddress.ip_network("10.20.0.0/16"),)
    assert handler_options(settings, tmp_path).egress == policy
    models = model_downloader(settings).sources.egress  # not limited to ALLOWED_URL_HOSTS; its own origin allowed
    assert models.allowed_hosts is None and Origin("https", "huggingface.co", 443) in models.allowed_origins
    with pytest.raises(ValueError):
        egress_policy(Settings(allowed_private_origins="http://10.1.2.3:9000/path"))


def test_a_long_form_ipv6_url_is_read_alike_by_the_check_and_the_connection(loopback_only):
    # [0:0:0:0:0:0:0:1] is ::1: opened by a network, it connects (nothing listens on port 9: refused, not "ambiguous")
    policy = EgressPolicy.build(networks=["::1/128"])
    with policy.session() as session, pytest.raises(requests.ConnectionError):
        session.get("http://[0:0:0:0:0:0:0:1]:9/x", timeout=5)
    assert loopback_only == [("::1", 9)]


# --- through the operator's proxy (HTTPS_PROXY, HTTP_PROXY, NO_PROXY) ------------------------------------


@pytest.fixture
def proxy() -> Iterator[tuple[int, list[str]]]:
    """A CONNECT proxy on 127.0.0.1: records each request's head, tunnels to what CONNECT names."""
    heads: list[str] = []

    def pump(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    class Tunnel(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            head = b""
            while b"\r\n\r\n" not in head and (chunk := self.request.recv(4096)):
                head += chunk
            heads.append(head.decode("latin-1"))
            method, target, _version = head.split(b"\r\n", 1)[0].decode().split(" ")
            if method != "CONNECT":
                self.request.sendall(b"HTTP/1.1 405 CONNECT only\r\n\r\n")
                return
            host, port = target.rsplit(":", 1)
            with socket.create_connection((host.strip("[]"), int(port)), timeout=5) as upstream:
                self.request.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
                back = threading.Thread(target=pump, args=(upstream, self.request), daemon=True)
                back.start()
                pump(self.request, upstream)
                back.join(5)

    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Tunnel)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1], heads
    server.shutdown()
    server.server_close()


def test_a_proxy_tunnels_to_the_checked_address_never_the_name(trap, proxy, loopback_only):
    port, seen = trap
    proxy_port, heads = proxy
    proxies = Proxies.build(http=f"http://someone:pa%3Ass@127.0.0.1:{proxy_port}")
    policy = EgressPolicy.build(networks=["127.0.0.1/32"], proxies=proxies, resolver=lambda h, p: ["127.0.0.1"])

    with policy.session() as session:
        assert session.get(f"http://media.test:{port}/a.mp3", timeout=5).text == "ok"

    (head,) = heads
    assert head.startswith(f"CONNECT 127.0.0.1:{port} HTTP/1.1\r\n") and "media.test" not in head
    assert "Proxy-Authorization: Basic c29tZW9uZTpwYTpzcw==" in head  # someone:pa:ss
    assert seen == [("/a.mp3", f"media.test:{port}")]  # the name stays the request's own
    assert loopback_only == [("127.0.0.1", proxy_port)]  # the one connection made: to the proxy


def test_a_url_the_policy_refuses_never_reaches_the_proxy(trap, proxy):
    port, seen = trap
    proxy_port, heads = proxy
    proxies = Proxies.build(http=f"http://127.0.0.1:{proxy_port}", https=f"http://127.0.0.1:{proxy_port}")
    policy = EgressPolicy.build(proxies=proxies)
    with policy.session() as session:
        for url in (f"http://127.0.0.1:{port}/", f"http://127.0.0.1:{proxy_port}/", f"https://[::1]:{port}/"):
            with pytest.raises(InputNotAllowed):  # the proxy itself is allowed as a proxy only
                session.get(url, timeout=5)
    assert heads == [] and seen == []


def test_no_proxy_hosts_and_the_gateway_are_reached_directly(trap, proxy, loopback_only):
    port, seen = trap
    proxy_port, heads = proxy
    proxies = Proxies.build(http=f"http://127.0.0.1:{proxy_port}", no_proxy="internal.test, .corp.test")
    names = {"media.internal.test", "media.corp.test", "gateway"}
    policy = EgressPolicy.build(networks=["127.0.0.1/32"], proxies=proxies, resolver=lambda h, p: ["127.0.0.1"])
    policy = policy.allowing(f"http://gateway:{port}", direct=True)
    with policy.session() as session:
        for name in sorted(names):
            assert session.get(f"http://{name}:{port}/", timeout=5).text == "ok"
    assert heads == [] and loopback_only == [("127.0.0.1", port)] * 3


def test_https_through_the_proxy_keeps_the_name_for_sni_and_the_certificate(tls_server, proxy):
    port, cert, names = tls_server
    proxy_port, heads = proxy
    policy = EgressPolicy.build(networks=["127.0.0.1/32"], proxies=Proxies.build(https=f"http://127.0.0.1:{proxy_port}"),
                                resolver=lambda h, p: ["127.0.0.1"])  # fmt: skip
    with policy.session() as session:
        assert session.get(f"https://pinned.test:{port}/", verify=str(cert), timeout=5).text == "ok"
        with pytest.raises(requests.exceptions.SSLError, match="other.test"):  # tunnelled, still checked
            session.get(f"https://other.test:{port}/", verify=str(cert), timeout=5)
    assert names[:2] == ["pinned.test", "other.test"]
    assert [head.split("\r\n")[0] for head in heads] == [f"CONNECT 127.0.0.1:{port} HTTP/1.1"] * 2


def test_the_wiring_takes_the_proxies_from_settings_and_refuses_one_that_is_not_http():
    from worker import wiring
    from worker.config import Settings

    settings = Settings(_env_file=None, https_proxy="http://u:secret@proxy.corp:3128", no_proxy="10.0.0.0/8",
                        gateway_public_url="http://gateway:8000")  # fmt: skip
    proxies = wiring.egress_policy(settings).proxies
    assert proxies.for_url("https", "media.example.org", 443) == Proxy("proxy.corp", 3128, "Basic dTpzZWNyZXQ=")
    assert proxies.for_url("http", "media.example.org", 80) is None  # no HTTP_PROXY
    assert proxies.for_url("https", "10.1.2.3", 443) is None and proxies.for_url("https", "gateway", 443) is None
    assert "secret" not in repr(proxies)
    for bad in ("socks5://proxy.corp:1080", "https://proxy.corp:3128", "proxy.corp:3128", "http://proxy.corp/p"):
        with pytest.raises(ValueError) as refused:
            wiring.egress_policy(Settings(_env_file=None, https_proxy=bad))
        assert "proxy.corp" not in str(refused.value)
