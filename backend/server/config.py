"""Server settings and the security rules that apply before anything runs."""

from __future__ import annotations

import hmac
import ipaddress
import math
import socket
import ssl
from dataclasses import dataclass, field

from backend.engine.preview_budget import DEFAULT_PREVIEW_SHARE
from protocol import Limits, ProtocolError
from protocol.schema import from_json_object, to_json_object

from .config_error import ConfigError
from .hello_guard import HelloPolicy
from .proxy import normalize_path, parse_networks


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
    preview_share: float | None = DEFAULT_PREVIEW_SHARE
    """What step previews may cost, as a share of each job's denoising time (None: every step,
    whatever it costs)."""
    max_pending_previews: int = 4
    """Step updates buffered for one slow client before older ones are dropped (results never are)."""
    max_connections: int = 32
    """Open connections; more are refused (HTTP 503) before any WebSocket state exists."""
    pre_auth_max_bytes: int = 64 * 1024
    """Largest message before ``hello`` is accepted: a stranger cannot make the server hold big frames."""
    input_bytes_total: int = 256 * 1024 * 1024
    """INPUT frames waiting for their ``generate``, all clients together."""
    input_bytes_per_client: int | None = None
    """The same per client (default: one job's worth: ``max_message_bytes`` x (style images + 2))."""
    queued_image_bytes_total: int = 256 * 1024 * 1024
    """Decoded images of queued and running jobs, all clients together."""
    queued_image_bytes_per_client: int = 128 * 1024 * 1024
    outbox_bytes_per_client: int | None = None
    """Unsent bytes one client may have waiting (default: its largest result plus 8 MiB): a client
    that stays over it for ``slow_client_seconds`` is disconnected, its jobs cancelled."""
    outbox_bytes_total: int = 1024 * 1024 * 1024
    """Unsent bytes of all clients together: while over it, the client with the most waiting counts
    as over its own budget (and is disconnected after ``slow_client_seconds``)."""
    slow_client_seconds: float = 5.0
    max_per_client_jobs: int | None = None
    """Queued jobs per client (default: a quarter of ``max_queued_jobs``); clients take turns."""
    tls_cert: str | None = None
    """PEM certificate (chain) to serve ``wss://`` with; with ``tls_key``."""
    tls_key: str | None = None
    insecure: bool = False
    """Plain ``ws://`` beyond loopback: refused unless True (``--insecure``): the token and every
    canvas would cross the network in clear text."""
    path: str | None = None
    """Serve the WebSocket at this path only (``/instantstyle``, a trailing slash allowed); others 404."""
    trusted_proxies: tuple[str, ...] = ()
    """Addresses or networks whose ``X-Forwarded-For`` names the client (for logs and hello limits)."""
    ping_interval: float = 20.0
    """Seconds between the server's keep-alive pings (0: none): a proxy's idle timeout sees traffic."""
    ping_timeout: float = 20.0
    """Seconds for the pong before the connection counts as dead (0: wait forever)."""
    hello_policy: HelloPolicy = field(default_factory=HelloPolicy)
    """Failed-``hello`` throttling per client address."""

    @property
    def scheme(self) -> str:
        return "wss" if self.tls_cert else "ws"

    def ssl_context(self) -> ssl.SSLContext | None:
        """The server side of TLS, or None for plain ``ws://``."""
        if not self.tls_cert:
            return None
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        try:  # a passphrase-protected key would prompt on the terminal, then fail unexplained
            context.load_cert_chain(self.tls_cert, self.tls_key, password=_no_passphrase)
        except _EncryptedKey:
            raise ConfigError(
                f"the TLS key {self.tls_key} is protected by a passphrase: give the server an unencrypted "
                "key (readable by its user only)"
            ) from None
        except (OSError, ssl.SSLError) as error:
            reason = getattr(error, "strerror", None) or error
            raise ConfigError(f"cannot use the TLS certificate {self.tls_cert}: {reason}") from None
        return context

    @property
    def input_budget_per_client(self) -> int:
        limits = self.limits
        return self.input_bytes_per_client or limits.max_message_bytes * (limits.max_style_images + 2)

    @property
    def outbox_budget(self) -> int:
        """A job's largest result, a batch or a sweep's cells (a sweep of 16 got 3 of its 16 pictures
        when only the batch was counted), at 4 bytes a pixel, plus 8 MiB for everything else."""
        limits = self.limits
        pictures = max(limits.max_batch, limits.max_sweep_cells)
        return self.outbox_bytes_per_client or pictures * limits.max_pixels * 4 + 8 * 1024 * 1024

    def check(self) -> None:
        try:  # the limits must be ones the protocol itself accepts, or every client refuses the hello
            from_json_object(Limits, to_json_object(self.limits))
        except ProtocolError as error:
            raise ConfigError(f"impossible server limits: {error.message}") from None
        if not is_loopback(self.host) and not self.token:
            raise ConfigError(
                f"refusing to listen on {self.host}: binding beyond loopback needs a token "
                "(--token or INSTANTSTYLE_TOKEN), or anyone on the network could use this GPU"
            )
        if self.preview_share is not None and not 0.0 <= self.preview_share <= 1.0:
            raise ConfigError(f"the preview budget must be 0 to 100 %, got {self.preview_share * 100:g}")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ConfigError("TLS needs both a certificate and its key (--tls-cert and --tls-key)")
        if not self.insecure and not self.tls_cert and not is_loopback(self.host):
            raise ConfigError(
                f"refusing plain ws:// on {self.host}: the token and every canvas would cross the network "
                "in clear text; use --tls self-signed (or --tls-cert/--tls-key), or --insecure to accept that"
            )
        normalize_path(self.path)
        parse_networks(self.trusted_proxies)
        if (self.trusted_proxies or self.path) and not self.token:
            # Behind a proxy the server may sit on loopback, yet whoever reaches the proxy reaches it.
            raise ConfigError(
                "--trusted-proxy and --path are for a server behind a reverse proxy, which the network "
                "reaches: they need a token (--token-file FILE, --token or INSTANTSTYLE_TOKEN)"
            )
        if not all(math.isfinite(x) and x >= 0 for x in (self.ping_interval, self.ping_timeout)):
            raise ConfigError("--ping-interval and --ping-timeout must be 0 (off) or more seconds")
        if self.max_connections < 1:
            raise ConfigError(f"--max-connections {self.max_connections}: expected 1 or more")
        if self.token is not None and len(self.token) < 8:
            raise ConfigError("the token must be at least 8 characters long")

    @property
    def plain_off_loopback(self) -> bool:
        """Tokens and canvases travel in clear text beyond this machine."""
        return not self.tls_cert and not is_loopback(self.host)

    def token_matches(self, offered: str | None) -> bool:
        if self.token is None:
            return True
        return offered is not None and hmac.compare_digest(offered.encode(), self.token.encode())


class _EncryptedKey(Exception):
    pass


def _no_passphrase() -> bytes:
    """Asked for a key's passphrase: there is none to give (the server runs unattended)."""
    raise _EncryptedKey
