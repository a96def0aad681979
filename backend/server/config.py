"""Server settings and the security rules that apply before anything runs."""

from __future__ import annotations

import hmac
import ipaddress
import socket
from dataclasses import dataclass, field

from protocol import Limits


class ConfigError(ValueError):
    """The server refuses to start with these settings."""


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and names that resolve only to them (``localhost``)."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(info[4][0]).is_loopback for info in infos)


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8765
    token: str | None = None
    limits: Limits = field(default_factory=Limits)
    hello_timeout: float = 10.0
    """Seconds a client has to send ``hello`` after connecting."""
    max_pending_previews: int = 4
    """Step updates buffered for one slow client before older ones are dropped (results never are)."""
    max_pending_input_bytes: int = 256 * 1024 * 1024
    """INPUT frames a connection may hold before their ``generate`` arrives."""

    def check(self) -> None:
        if not is_loopback(self.host) and not self.token:
            raise ConfigError(
                f"refusing to listen on {self.host}: binding beyond loopback needs a token "
                "(--token or INSTANTSTYLE_TOKEN), or anyone on the network could use this GPU"
            )
        if self.token is not None and len(self.token) < 8:
            raise ConfigError("the token must be at least 8 characters long")

    def token_matches(self, offered: str | None) -> bool:
        if self.token is None:
            return True
        return offered is not None and hmac.compare_digest(offered.encode(), self.token.encode())
