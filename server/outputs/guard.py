"""Which URLs an output may send to: the server makes requests to URLs that users give it, so each is checked.

- Only `http` and `https`, with a host and no user:password part.
- The host must be allowed: by default the services' documented caption hosts for that kind (DEFAULT_HOSTS; a
  webhook has none, so webhooks need `outputs.allowed_hosts`). An entry "*.example.com" allows its subdomains.
- Every address the host resolves to must be public (`is_global`): loopback, private, link-local (the cloud
  metadata address 169.254.169.254 among them), shared (100.64/10: Alibaba's metadata), multicast, reserved and
  unspecified addresses are refused, IPv4-mapped IPv6 included. An address is allowed anyway only when it is
  itself listed in the allowed hosts ("127.0.0.1" for a test's stand-in): it is the address that is trusted,
  never a name, so an allowed name that resolves to 10.0.0.5 is refused (this defeats DNS tricks).
  The check runs when the output is made (its refusal is the API's 400) and again on every connection
  (GuardedResolver, the sender's aiohttp resolver), so a name that changes its answer later is refused then.

A caption URL is a credential (Zoom's signature, YouTube's stream key, Teams' token are in its query): errors
and logs carry `redact(url)` (scheme://host/path?…), never the query.
"""
from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from urllib.parse import urlsplit

from aiohttp.abc import AbstractResolver, ResolveResult

# Documented caption hosts (../shared/notes/caption-outputs.md; Microsoft's "Send real-time captions API").
DEFAULT_HOSTS: dict[str, tuple[str, ...]] = {
    "zoom": ("wmcapi.zoom.us",),
    "youtube": ("upload.youtube.com",),
    "teams": ("api.captions.office.microsoft.com",),
    "webhook": (),
}

# (host, port) -> addresses; the default is the loop's getaddrinfo (never blocks the loop).
Resolve = Callable[[str, int], Awaitable[list[str]]]


class RefusedURL(ValueError):
    """A URL the server will not send to; the message says why and never carries the URL's query."""


@dataclass(frozen=True)
class ParsedTarget:
    kind: str
    scheme: str
    host: str  # lower case, IPv6 without brackets
    port: int
    url: str  # the whole URL (a credential: keep it out of errors, logs and listings)

    @property
    def redacted(self) -> str:
        return redact(self.url)


def redact(url: str) -> str:
    """scheme://host[:port]/path, with "?…" where the URL had a query: safe to show and log."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return "(unparseable URL)"
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{port}" if port else host
    return f"{parts.scheme}://{netloc}{parts.path}" + ("?…" if parts.query else "")


def host_allowed(host: str, allowed: Collection[str]) -> bool:
    host = host.lower().rstrip(".")
    for entry in allowed:
        entry = entry.lower().strip().strip("[]").rstrip(".")
        if entry.startswith("*.") and host.endswith(entry[1:]) and host != entry[2:]:
            return True
        if host == entry:
            return True
    return False


def allowed_for(kind: str, allowed_hosts: Collection[str] | None) -> Collection[str]:
    return DEFAULT_HOSTS.get(kind, ()) if allowed_hosts is None else allowed_hosts


def check_url(url: str, kind: str, allowed_hosts: Collection[str] | None = None) -> ParsedTarget:
    """The URL's parts, or RefusedURL with the reason. `allowed_hosts` None: the kind's documented hosts."""
    try:
        parts = urlsplit(url.strip())
        host = (parts.hostname or "").lower()
        port = parts.port
    except ValueError as e:
        raise RefusedURL(f"not a valid URL ({e.__class__.__name__})") from None
    shown = redact(url)
    if any(ch.isspace() or not ch.isprintable() or not ch.isascii() for ch in url.strip()):
        raise RefusedURL(f"{shown}: spaces, control or non-ASCII characters (paste the URL as given)")
    if parts.scheme not in ("http", "https"):
        raise RefusedURL(f"only http and https URLs are allowed, not {parts.scheme or 'no scheme'!r}")
    if not host:
        raise RefusedURL(f"{shown}: no host")
    if parts.username is not None or parts.password is not None:
        raise RefusedURL(f"{shown}: user information in the URL is not allowed")
    allowed = allowed_for(kind, allowed_hosts)
    if not host_allowed(host, allowed):
        listed = ", ".join(allowed) or "none: set outputs.allowed_hosts"
        raise RefusedURL(f"{shown}: host {host!r} is not an allowed {kind} host (allowed: {listed})")
    return ParsedTarget(kind, parts.scheme, host, port or (443 if parts.scheme == "https" else 80), url.strip())


def address_refusal(address: str, allowed: Collection[str]) -> str | None:
    """Why this resolved address may not be sent to, or None when it may."""
    try:
        ip = ipaddress.ip_address(address.split("%")[0])
    except ValueError:
        return f"{address} is not an IP address"
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_global and not ip.is_multicast:
        return None
    if host_allowed(str(ip), [a for a in allowed if not a.startswith("*.")]):
        return None  # that address itself is allowed (a local stand-in, an internal webhook receiver)
    for what in ("loopback", "link_local", "multicast", "unspecified", "reserved", "private"):
        if getattr(ip, f"is_{what}"):
            return f"{ip} is a {what.replace('_', '-')} address"
    return f"{ip} is not a public address"


async def system_resolve(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


async def check_resolved(target: ParsedTarget, allowed_hosts: Collection[str] | None = None,
                         resolve: Resolve | None = None) -> list[str]:
    """The target's addresses, every one allowed; RefusedURL if any is not (or the name does not resolve)."""
    return await resolve_checked(target.host, target.port, allowed_for(target.kind, allowed_hosts), resolve)


async def resolve_checked(host: str, port: int, allowed: Collection[str], resolve: Resolve | None = None) -> list[str]:
    try:
        addresses = await (resolve or system_resolve)(host, port)
    except OSError as e:
        raise RefusedURL(f"host {host!r} does not resolve ({e.__class__.__name__})") from None
    if not addresses:
        raise RefusedURL(f"host {host!r} does not resolve")
    for address in addresses:
        why = address_refusal(address, allowed)
        if why is not None:
            # All or none: one refused address among good ones is how a DNS trick looks.
            raise RefusedURL(f"host {host!r} resolves to {why}; allow that address itself if it is meant")
    return addresses


class GuardedResolver(AbstractResolver):
    """aiohttp's resolver for an output's session: resolves and checks on every connection."""

    def __init__(self, allowed: Collection[str], resolve: Resolve | None = None):
        self._allowed = allowed
        self._resolve = resolve

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        addresses = await resolve_checked(host, port, self._allowed, self._resolve)
        return [ResolveResult(hostname=host, host=a, port=port,
                              family=socket.AF_INET6 if ":" in a else socket.AF_INET, proto=0,
                              flags=socket.AI_NUMERICHOST | socket.AI_NUMERICSERV) for a in addresses]

    async def close(self) -> None:
        return None
