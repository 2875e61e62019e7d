"""URLs and texts fit for a log line or an error message: no credentials, no query, no token in a path."""

import re
from urllib.parse import urlsplit

_USERINFO = re.compile(r"(//)[^/\s?#@'\"]*@")
_QUERY = re.compile(r"\?[^\s'\"()<>]+")
# A path segment that is a secret rather than a name: 32 or more characters of the URL-safe base64
# alphabet (the gateway's upload tokens are 43; hex and base64url keys of webhooks and presigned paths
# alike), shown by its first 4 only. A file name has a dot; a word of that length is rare.
_TOKEN = re.compile(r"(?<=/)([A-Za-z0-9_-]{4})[A-Za-z0-9_-]{28,}(?=[/?#\s'\"()<>]|\.(?:\s|$)|$)")


def redact(url: str) -> str:
    """`url` fit for a log line or an error: scheme, host and port kept, the path with its token-like
    segments cut to `abcd...`; credentials dropped, the query shown as `?...`, the fragment dropped."""
    try:
        parts = urlsplit(str(url))
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return redact_text(str(url))
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{port}" if port is not None else host
    query = "?..." if parts.query else ""
    path = _TOKEN.sub(r"\1...", parts.path)
    return f"{parts.scheme}://{netloc}{path}{query}" if parts.scheme else redact_text(str(url))


def redact_text(text: str) -> str:
    """Any text (a library's error message, say) with URL credentials, query strings and token-like
    path segments taken out."""
    return _TOKEN.sub(r"\1...", _QUERY.sub("?...", _USERINFO.sub(r"\1", str(text))))
