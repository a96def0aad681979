"""Serving behind a reverse proxy: the path prefix, and the client's real address.

``X-Forwarded-For`` is a header anyone can send. It is read only when the TCP peer is a proxy the
operator named (``--trusted-proxy``), and then only as far back as the chain of trusted proxies
goes: each proxy appends the address it saw, so the rightmost address that is not a trusted proxy is
the first one no trusted party could have been lied to about. Everything else a client writes there
is ignored.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from .config_error import ConfigError

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
MAX_PROXIES = 64
MAX_FORWARDED_HOPS = 32
"""Entries of ``X-Forwarded-For`` looked at, from the right: a longer chain is no real deployment."""


def parse_networks(entries: Iterable[str]) -> tuple[Network, ...]:
    """``--trusted-proxy`` values: addresses or CIDR networks; a wrong one is one line."""
    networks: list[Network] = []
    for entry in entries:
        try:
            networks.append(ipaddress.ip_network(entry.strip(), strict=False))
        except ValueError:
            raise ConfigError(
                f"--trusted-proxy {entry}: expected an IP address or a network such as 10.0.0.0/8"
            ) from None
    if len(networks) > MAX_PROXIES:
        raise ConfigError(f"at most {MAX_PROXIES} trusted proxies, got {len(networks)}")
    return tuple(networks)


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """An address as proxies write it: bare, ``[v6]``, ``[v6]:port`` or ``v4:port``; else None."""
    text = text.strip().strip('"')
    if text.startswith("["):
        text = text[1 : text.find("]")] if "]" in text else ""
    elif text.count(":") == 1:
        text = text.split(":", 1)[0]
    try:
        address = ipaddress.ip_address(text.split("%")[0])
    except ValueError:
        return None
    mapped = getattr(address, "ipv4_mapped", None)
    return mapped or address


@dataclass(frozen=True)
class TrustedProxies:
    networks: tuple[Network, ...] = ()

    def trusts(self, address: str) -> bool:
        parsed = _address(address)
        return parsed is not None and any(parsed in network for network in self.networks)

    def client_address(self, peer: str, forwarded_for: Iterable[str]) -> str:
        """The client's address: ``peer`` (the TCP peer) unless it is a trusted proxy, then the
        rightmost ``X-Forwarded-For`` entry that is not one (a malformed entry ends the walk: the
        nearest trusted hop is the best that is known)."""
        if not self.trusts(peer):
            return peer
        hops = [hop for header in forwarded_for for hop in header.split(",")][-MAX_FORWARDED_HOPS:]
        known = peer
        for hop in reversed(hops):
            address = _address(hop)
            if address is None:
                return known
            known = str(address)
            if not any(address in network for network in self.networks):
                return known
        return known


def normalize_path(path: str | None) -> str | None:
    """``--path``: ``/instantstyle`` (a trailing slash dropped); None or ``/`` serve every path."""
    if path is None:
        return None
    cleaned = path.strip().rstrip("/")
    if not cleaned:
        return None
    if not cleaned.startswith("/") or any(c in cleaned for c in "?#% \t") or "//" in cleaned:
        raise ConfigError(f"--path {path}: expected a path such as /instantstyle")
    return cleaned


def path_matches(prefix: str | None, request_path: str) -> bool:
    """The WebSocket lives at ``prefix`` exactly, with or without a trailing slash (a query is ignored)."""
    if prefix is None:
        return True
    path = request_path.split("?", 1)[0]
    return path in (prefix, prefix + "/")
