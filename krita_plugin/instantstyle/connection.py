"""The connection to the backend, on a background thread, with automatic reconnect.

Why threads and not asyncio or QtWebSockets: Krita's Python has PyQt5 or PyQt6 but no
QtWebSockets on Linux distributions, and bridging asyncio into Qt's event loop
needs a timer-driven private loop that is easy to starve. The ``websockets``
package's threaded client (pure Python, vendored by the installer) works the
same on Linux, Windows and macOS. This thread only does I/O; it never touches
Qt or Krita: everything it learns becomes an event in a queue, which the UI
thread drains with ``poll()`` from a timer.

A ``wss://`` server's certificate is checked (``server_trust``) right after the handshake and before
``hello``, which carries the token: a certificate the artist has yet to confirm, or one other than
the pinned one, ends the attempt with nothing sent.
"""

from __future__ import annotations

import inspect
import logging
import queue
import threading
from dataclasses import dataclass
from enum import Enum

from .deps import protocol
from .server_trust import ServerTrust, Untrusted, check_peer, handshake_failure, peer_der, tls_options

log = logging.getLogger(__name__)

RECONNECT_DELAYS = (0.5, 1.0, 2.0, 4.0, 8.0)
"""Seconds between attempts; the last one repeats."""


class ConnectionState(str, Enum):
    DISCONNECTED = "disconnected"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    UNAUTHORIZED = "unauthorized"
    """The server refused the token: no retries until the settings change."""
    UNTRUSTED = "untrusted"
    """The server's certificate is new (to confirm) or not the pinned one: nothing was sent, and no
    retries until the settings change (``Untrusted`` says which certificate)."""
    STOPPED = "stopped"


@dataclass(frozen=True)
class StateChanged:
    state: ConnectionState
    message: str = ""
    """Why, in words for the artist (empty when connected)."""


@dataclass(frozen=True)
class Connected:
    hello: protocol.ServerHello


@dataclass(frozen=True)
class Received:
    """A message or frame from the server."""

    item: protocol.ServerMessage | protocol.PixelFrame


ConnectionEvent = StateChanged | Connected | Received | Untrusted


def _websockets_client():  # -> module; imported lazily so that errors are reported, not raised at import
    from websockets.sync import client

    return client


class Connection:
    """One backend connection. Thread-safe: ``send_*`` and ``poll`` may be called from any thread."""

    def __init__(
        self,
        url: str,
        token: str = "",
        client_name: str = "krita-instantstyle",
        trust: ServerTrust | None = None,
    ) -> None:
        self.url = url
        self.token = token or None
        self.client_name = client_name
        self.trust = trust or ServerTrust()
        """What a ``wss://`` server's certificate must be (unused for ``ws://``)."""
        self.untrusted: Untrusted | None = None
        """The certificate refused last, while ``UNTRUSTED``."""
        self.state = ConnectionState.DISCONNECTED
        self.hello: protocol.ServerHello | None = None
        self._events: queue.Queue[ConnectionEvent] = queue.Queue()
        self._outgoing: queue.Queue[str | bytes] = queue.Queue()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ control

    def start(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="instantstyle-connection", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self._set_state(ConnectionState.STOPPED)

    def reconnect_now(self) -> None:
        """Skip the current back-off wait (e.g. the artist pressed "Connect")."""
        self._wake.set()

    def poll(self) -> list[ConnectionEvent]:
        """Every event since the last call, in order (call from the UI thread)."""
        events = []
        while True:
            try:
                events.append(self._events.get_nowait())
            except queue.Empty:
                return events

    def send_message(self, message: protocol.ClientMessage) -> None:
        self._outgoing.put(protocol.encode_message(message))

    def send_frame(self, data: bytes) -> None:
        self._outgoing.put(data)

    # ------------------------------------------------------------------ the I/O thread

    def _set_state(self, state: ConnectionState, message: str = "") -> None:
        if state != self.state or message:
            self.state = state
            self._events.put(StateChanged(state, message))

    def _run(self) -> None:
        attempt = 0
        while not self._stop.is_set():
            self._set_state(ConnectionState.CONNECTING)
            self.hello = None
            try:
                outcome = self._session()
            except Exception as error:  # anything unexpected: report, retry
                log.exception("connection error")
                outcome = f"connection error: {error}"
            if self.hello is not None:
                attempt = 0  # it was connected: a backend restart starts the back-off afresh
            if self._stop.is_set():
                break
            if self.state in (ConnectionState.UNAUTHORIZED, ConnectionState.UNTRUSTED):
                self._wake.clear()
                self._wake.wait()  # until the settings change (a new Connection) or stop()
                continue
            delay = RECONNECT_DELAYS[min(attempt, len(RECONNECT_DELAYS) - 1)]
            attempt += 1
            self._set_state(
                ConnectionState.DISCONNECTED, f"{outcome or 'disconnected'}; retrying in {delay:g} s"
            )
            self._wake.clear()
            self._wake.wait(delay)

    def _session(self) -> str | None:
        """One connection's life. Returns why it ended, for the artist."""
        client = _websockets_client()
        limits = protocol.Limits()
        try:
            ws = client.connect(
                self.url,
                compression=None,
                max_size=limits.max_message_bytes,
                open_timeout=5,
                user_agent_header=self.client_name,
                **_no_proxy(client.connect),
                **tls_options(self.url, self.trust, client.connect),
            )
        except Exception as error:
            refused = handshake_failure(error, self.url, self.trust)
            if refused is not None:
                return self._refuse(refused)
            if isinstance(error, OSError):
                return f"the backend at {self.url} is not reachable ({error.strerror or error})"
            return f"could not connect to {self.url}: {getattr(error, 'message', '') or error}"
        with ws:
            refused = check_peer(peer_der(ws), self.url, self.trust)
            if refused is not None:
                return self._refuse(refused)  # before hello: the token never reaches that server
            try:
                ws.send(protocol.encode_message(protocol.Hello(client=self.client_name, token=self.token)))
                reply = protocol.decode_server_message(ws.recv(timeout=10))
            except Exception as error:
                return f"the backend did not answer hello: {error}"
            if isinstance(reply, protocol.Error):
                token_unreadable = reply.message.startswith("token ")  # e.g. not valid Unicode text
                if reply.code is protocol.ErrorCode.UNAUTHORIZED or token_unreadable:
                    self._set_state(
                        ConnectionState.UNAUTHORIZED,
                        "the backend refused the token: check the token in the InstantStyle settings",
                    )
                    return None
                return f"the backend refused the connection: {reply.message}"
            if not isinstance(reply, protocol.ServerHello):
                return "the backend answered with an unexpected message"
            self.hello = reply
            _accept_messages_up_to(ws, reply.limits.max_message_bytes)
            self._drop_stale_outgoing()
            self._events.put(Connected(reply))
            self._set_state(ConnectionState.CONNECTED)
            return self._pump(ws, reply.limits.max_side)

    def _refuse(self, refused: Untrusted) -> str | None:
        """A TLS refusal: one for the artist to decide waits (``UNTRUSTED``), others are retried."""
        if not refused.waits_for_the_artist:
            return refused.message
        self.untrusted = refused
        self._events.put(refused)
        self._set_state(ConnectionState.UNTRUSTED, refused.message)
        return None

    def _drop_stale_outgoing(self) -> None:
        """Messages queued while disconnected belong to jobs the session already failed."""
        while True:
            try:
                self._outgoing.get_nowait()
            except queue.Empty:
                return

    def _pump(self, ws: object, max_side: int) -> str:
        from websockets.exceptions import ConnectionClosed

        while not self._stop.is_set():
            try:
                while True:
                    ws.send(self._outgoing.get_nowait())  # type: ignore[attr-defined]
            except queue.Empty:
                pass
            except ConnectionClosed as closed:
                return _closed_reason(closed)
            try:
                data = ws.recv(timeout=0.02)  # type: ignore[attr-defined]
            except TimeoutError:
                continue
            except ConnectionClosed as closed:
                return _closed_reason(closed)
            try:
                item = (
                    protocol.decode_frame(data, max_side)
                    if isinstance(data, bytes)
                    else protocol.decode_server_message(data)
                )
            except protocol.ProtocolError as error:
                log.warning("ignoring a malformed message from the backend: %s", error)
                continue
            self._events.put(Received(item))
        return "stopped"


def _no_proxy(connect) -> dict[str, None]:
    """Connect directly, not through a proxy from the environment: ``proxy=None`` since websockets
    15, which began using them (an older one, already in Krita, takes no such keyword)."""
    return {"proxy": None} if "proxy" in inspect.signature(connect).parameters else {}


def _accept_messages_up_to(ws: object, size: int) -> None:
    """Frames as large as the server announces (a bigger ``--max-side`` means bigger results).

    websockets keeps the limit in its sans-I/O protocol object: ``max_message_size`` since 15.0,
    ``max_size`` before (a websockets that Krita already has may be older than the vendored one).
    """
    state = getattr(ws, "protocol", None)
    name = "max_message_size" if hasattr(state, "max_message_size") else "max_size"
    if state is not None and hasattr(state, name):
        setattr(state, name, size)


def _closed_reason(closed: Exception) -> str:
    received = getattr(closed, "rcvd", None)
    if received is not None and received.code == 1001:
        return "the backend shut down"
    return "the connection to the backend was lost"
