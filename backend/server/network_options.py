"""``serve``'s options for serving beyond this machine: TLS, the token file, proxies, keep-alive, limits.

Each mistake is one line (:class:`ConfigError`) before any model loads.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from .config import ConfigError

MAX_TOKEN_FILE_BYTES = 4096


class TlsMode(str, Enum):
    SELF_SIGNED = "self-signed"


def add_network_arguments(serve: argparse.ArgumentParser) -> None:
    group = serve.add_argument_group("serving over the network (docs/SECURITY.md)")
    group.add_argument(
        "--token-file", metavar="FILE", help="read the token from the first line of FILE (not with --token)"
    )
    group.add_argument(
        "--tls",
        choices=[mode.value for mode in TlsMode],
        help="serve wss:// with a self-signed certificate for this host's names, made once and kept "
        "(clients pin its SHA-256 fingerprint, printed at start)",
    )
    group.add_argument("--tls-cert", metavar="FILE", help="serve wss:// with this PEM certificate (chain)")
    group.add_argument("--tls-key", metavar="FILE", help="the private key of --tls-cert (PEM)")
    group.add_argument(
        "--tls-dir",
        metavar="DIR",
        help="where --tls self-signed keeps its certificate (default $XDG_DATA_HOME/instantstyle/tls "
        "or ~/.local/share/instantstyle/tls)",
    )
    group.add_argument(
        "--insecure",
        action="store_true",
        help="allow plain ws:// beyond loopback: tokens and canvases cross the network in clear text",
    )
    group.add_argument(
        "--path",
        metavar="PREFIX",
        help="serve the WebSocket only at this path (e.g. /instantstyle behind a proxy)",
    )
    group.add_argument(
        "--trusted-proxy",
        action="append",
        default=[],
        metavar="ADDR",
        help="a reverse proxy (IP or CIDR; repeatable) whose X-Forwarded-For names the client",
    )
    group.add_argument(
        "--ping-interval",
        type=float,
        default=20.0,
        metavar="SECONDS",
        help="keep-alive pings, shorter than a proxy's idle timeout (0: none; default %(default)g)",
    )
    group.add_argument(
        "--ping-timeout",
        type=float,
        default=20.0,
        metavar="SECONDS",
        help="a client that does not answer a ping within this is dropped (0: never; default %(default)g)",
    )
    group.add_argument(
        "--max-connections", type=int, default=32, help="open connections at most (default %(default)d)"
    )


@dataclass(frozen=True)
class NetworkSettings:
    token: str | None
    tls_cert: str | None
    tls_key: str | None
    insecure: bool
    path: str | None
    trusted_proxies: tuple[str, ...]
    ping_interval: float
    ping_timeout: float
    max_connections: int


def network_settings(args: argparse.Namespace) -> NetworkSettings:
    """The options as ServerConfig fields; ``--tls self-signed`` makes (or reuses) its certificate."""
    token = _token(args)
    cert, key = getattr(args, "tls_cert", None), getattr(args, "tls_key", None)
    if getattr(args, "tls", None) == TlsMode.SELF_SIGNED.value:
        if cert or key:
            raise ConfigError("--tls self-signed or --tls-cert/--tls-key, not both")
        from .certificates import default_tls_dir, ensure_self_signed, host_names

        folder = Path(args.tls_dir).expanduser() if args.tls_dir else default_tls_dir()
        bind = () if args.host in ("", "0.0.0.0", "::", "*") else (args.host,)
        issued = ensure_self_signed(folder, host_names(args.host), required=bind)
        cert, key = str(issued.cert), str(issued.key)
    elif getattr(args, "tls_dir", None):
        raise ConfigError("--tls-dir is for --tls self-signed")
    return NetworkSettings(
        token=token,
        tls_cert=cert,
        tls_key=key,
        insecure=bool(getattr(args, "insecure", False)),
        path=getattr(args, "path", None),
        trusted_proxies=tuple(getattr(args, "trusted_proxy", None) or ()),
        ping_interval=getattr(args, "ping_interval", 20.0),
        ping_timeout=getattr(args, "ping_timeout", 20.0),
        max_connections=getattr(args, "max_connections", 32),
    )


def _token(args: argparse.Namespace) -> str | None:
    """``--token``, ``--token-file`` (its first line, stripped) or ``INSTANTSTYLE_TOKEN``."""
    path = getattr(args, "token_file", None)
    if path is None:
        return args.token or os.environ.get("INSTANTSTYLE_TOKEN") or None
    if args.token:
        raise ConfigError("--token or --token-file, not both")
    try:
        with open(path, "rb") as file:
            data = file.read(MAX_TOKEN_FILE_BYTES)
        # utf-8-sig: an editor's byte-order mark is not part of the token.
        token = data.decode("utf-8-sig").splitlines()[0].strip() if data.strip() else ""
    except OSError as error:
        raise ConfigError(f"--token-file {path}: cannot read it ({error.strerror or error})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"--token-file {path}: not UTF-8 text") from None
    if not token:
        raise ConfigError(f"--token-file {path}: its first line is empty")
    return token
