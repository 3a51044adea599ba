"""Who may call localcloud: requests for a loopback host name that no other web page's browser sent.

localcloud verifies no signatures, so a request that reaches it can create and run code. Binding
127.0.0.1 keeps other machines out, but not the user's own browser, which any web page can point at
127.0.0.1: a cross-origin `text/plain` POST needs no CORS preflight, an <img> GET none either, and a
DNS-rebound name (evil.example resolving to 127.0.0.1) makes the page same-origin with localcloud.
LocalStack answers the same problem with an allowed-origins list (its CorsEnforcer: an exact match of
Origin, else of the Referer's origin, against a default list plus EXTRA_CORS_ALLOWED_ORIGINS; requests
with neither header pass because the AWS CLI sends neither). localcloud does likewise, with no default
origins, and adds two checks LocalStack's CORS handler does not make:

1. Host: the name in the Host header (port removed, any case) must be 127.0.0.1, localhost, [::1] (or
   another spelling of a loopback address), the address localcloud listens on, or one of
   `allowed_hosts`. This is what stops DNS rebinding: the rebound page's requests say
   `Host: evil.example:4566`. A request without a Host header (an HTTP/1.0 tool) passes; browsers
   always send one.
2. Origin: when present, it must be one of `allowed_origins`, exactly as the browser writes it. Browsers
   send it on every cross-origin request, on every POST, PUT, PATCH and DELETE, on preflights and
   WebSockets. `null` (sandboxed iframes, file:// pages) and localcloud's own origin are not allowed: an
   S3 object or an HTTP API answer served from localcloud's origin can be anybody's HTML.
3. No Origin (a GET or HEAD): a browser still says where it comes from in `Sec-Fetch-Site`, which a page
   cannot set. Anything but `none` (the user typed the URL) needs a Referer of an allowed origin; so
   does a Referer alone (browsers too old for Sec-Fetch-*).

boto3, the AWS CLI, Airflow and curl send none of these headers and always pass. Each check is a dict
lookup or two and a set membership test: it sits on every request's path.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "[::1]"})
HOSTS_SETTING = "LOCALCLOUD_ALLOWED_HOSTS (--allowed-hosts)"
ORIGINS_SETTING = "LOCALCLOUD_ALLOWED_ORIGINS (--allowed-origins)"
_WILDCARD_BINDS = frozenset({"", "0.0.0.0", "::"})  # noqa: S104 - names, not a bind
_SHOWN = 200  # characters of a refused value quoted back
_REMEMBERED_HOSTS = 64


def host_name(host: str) -> str:
    """The name part of a Host header value, lower-cased: "LocalHost:4566" -> "localhost"."""
    if not host.endswith("]"):  # "[::1]" has colons but no port
        name, colon, port = host.rpartition(":")
        if colon and port.isdigit():
            host = name
    return host.lower()


def _is_loopback_literal(name: str) -> bool:
    """127.0.0.2, [0:0:0:0:0:0:0:1]: other spellings of a loopback address (never a DNS name)."""
    try:
        return ipaddress.ip_address(name[1:-1] if name.startswith("[") else name).is_loopback
    except ValueError:
        return False


class RequestGuard:
    """Judges a request's Host, Origin, Sec-Fetch-Site and Referer headers before anything else is done."""

    def __init__(self, allowed_hosts: tuple[str, ...] = (), allowed_origins: tuple[str, ...] = ()) -> None:
        self.hosts = LOOPBACK_NAMES | {_checked_host(host) for host in allowed_hosts}
        self.origins = frozenset(_checked_origin(origin) for origin in allowed_origins)
        # Host header values already found allowed ("127.0.0.1:4566"): one set lookup for the usual
        # request. Bounded, since a client chooses them (every port of every allowed name).
        self._allowed_values: set[str] = set()

    @classmethod
    def for_server(cls, bind_host: str, allowed_hosts: tuple[str, ...], allowed_origins: tuple[str, ...]):
        """The guard of a server listening on `bind_host`: its own address is a name clients use too."""
        extra = () if bind_host in _WILDCARD_BINDS else (bind_host,)
        return cls((*allowed_hosts, *extra), allowed_origins)

    def refusal(self, headers: dict[str, str]) -> str | None:
        """Why the request must be refused, or None. `headers` has lower-case names."""
        host = headers.get("host")
        if host and host not in self._allowed_values:
            name = host_name(host)
            if name not in self.hosts and not _is_loopback_literal(name):
                return (
                    f"localcloud answers only loopback host names and those in {HOSTS_SETTING}; "
                    f"this request is for host {host[:_SHOWN]!r}"
                )
            if len(self._allowed_values) < _REMEMBERED_HOSTS:
                self._allowed_values.add(host)
        origin = headers.get("origin")
        if origin is None:
            referer = headers.get("referer")
            if referer is None:
                site = headers.get("sec-fetch-site")
                if site is None or site == "none":
                    return None  # not sent by a web page: an SDK, a terminal, or the user typing the URL
                return (
                    f"localcloud refuses browser requests from other sites (Sec-Fetch-Site: {site[:_SHOWN]}) "
                    f"that name no origin in {ORIGINS_SETTING}"
                )
            origin = _origin_of(referer)
        if origin in self.origins:
            return None
        return f"localcloud refuses requests from browser origin {origin[:_SHOWN]!r}; {ORIGINS_SETTING} allows origins"


def _origin_of(url: str) -> str:
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    return f"{parts.scheme}://{parts.netloc}" if parts.scheme and parts.netloc else url


def _checked_host(host: str) -> str:
    name = host_name(host.strip())
    if not name or name == "*" or any(c in name for c in "/@ \t,*"):
        raise ValueError(
            f"{HOSTS_SETTING}: {host!r} is not a host name; list the names clients use to reach localcloud "
            "(e.g. the compose service name localcloud), without scheme or path"
        )
    if ":" in name and not name.startswith("["):
        name = f"[{name}]"  # an IPv6 address, as a Host header writes it
    return name


def _checked_origin(origin: str) -> str:
    if origin == "*":
        raise ValueError(
            f"{ORIGINS_SETTING} cannot be '*': that would let every web page run code through localcloud; "
            "list the origins (scheme://host[:port]) whose pages may call it"
        )
    if origin == "null":
        raise ValueError(
            f"{ORIGINS_SETTING} cannot hold 'null': every sandboxed iframe and file:// page sends that origin"
        )
    parts = urlsplit(origin)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.username is not None:
        raise ValueError(f"{ORIGINS_SETTING}: {origin!r} is not an origin (scheme://host[:port])")
    if parts.path or parts.query or parts.fragment:
        raise ValueError(f"{ORIGINS_SETTING}: {origin!r} has a path; an origin is only scheme://host[:port]")
    return origin.lower()
