"""A headless client: ``python -m backend.client``.

It sends a style image and a prompt, streams the previews and writes the
final PNG: the README's demo and the reference for what the Krita plugin does.
``--serve-tiny`` starts a server on the embedded tiny model in the same
process, so the whole round trip runs with one command.

A ``wss://`` server is trusted through the system's CAs, a studio CA (``--ca FILE``) or a pinned
certificate (``--pin FINGERPRINT``); its certificate is checked before ``hello`` carries the token.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ssl
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from PIL import Image
from websockets.asyncio.client import ClientConnection, connect

from backend.generate_command import add_job_arguments, describe_search, job_from_arguments, png_labels
from protocol import (
    Cancel,
    Cancelled,
    Error,
    FrameKind,
    Generate,
    Hello,
    Limits,
    ModelFamily,
    ModelStatus,
    PixelFormat,
    PixelFrame,
    Progress,
    Queued,
    Result,
    ResultImage,
    ServerHello,
    ServerMessage,
    Started,
    decode_frame,
    decode_server_message,
    encode_frame_header,
    encode_message,
)
from protocol.tls import (
    CertificateProblem,
    CertificateRefused,
    ServerTrust,
    explain_handshake_failure,
    fingerprint,
    is_tls_url,
    peer_certificate,
    plain_to_tls_hint,
)

_FORMATS = {"RGB": PixelFormat.RGB8, "RGBA": PixelFormat.RGBA8, "L": PixelFormat.GRAY8}


class ServerError(RuntimeError):
    """The server answered with an ``error`` message."""

    def __init__(self, error: Error) -> None:
        super().__init__(f"{error.code.value}: {error.message}")
        self.error = error


def input_frame(job_id: int, index: int, image: Image.Image) -> bytes:
    """An INPUT frame with raw pixels (RGB, RGBA or grayscale)."""
    if image.mode not in _FORMATS:
        image = image.convert("RGBA" if "A" in image.getbands() else "RGB")
    header = encode_frame_header(
        FrameKind.INPUT, job_id, index, image.width, image.height, _FORMATS[image.mode]
    )
    return header + image.tobytes()


def frame_image(frame: PixelFrame) -> Image.Image:
    mode = {PixelFormat.RGB8: "RGB", PixelFormat.RGBA8: "RGBA", PixelFormat.GRAY8: "L"}[frame.format]
    return Image.frombytes(mode, (frame.width, frame.height), frame.payload)


@dataclass
class JobOutcome:
    """Everything a job sent back, in arrival order."""

    queued: Queued | None = None
    positions: list[int] = field(default_factory=list)
    """Every queue position announced, first to last."""
    started: Started | None = None
    progress: list[Progress] = field(default_factory=list)
    previews: list[PixelFrame] = field(default_factory=list)
    result: Result | None = None
    images: list[PixelFrame] = field(default_factory=list)
    assembling: dict[int, ResultImage] = field(default_factory=dict)
    cancelled: Cancelled | None = None
    error: Error | None = None
    order: list[str] = field(default_factory=list)

    def record(self, item: ServerMessage | PixelFrame) -> bool:
        """Add one of this job's messages; True once the job has ended."""
        self.order.append(item.kind.name if isinstance(item, PixelFrame) else type(item).__name__)
        if isinstance(item, Queued):
            self.queued = item
            self.positions.append(item.position)
        elif isinstance(item, Started):
            self.started = item
        elif isinstance(item, Progress):
            self.progress.append(item)
        elif isinstance(item, PixelFrame) and item.kind is FrameKind.PREVIEW:
            self.previews.append(item)
        elif isinstance(item, Result):
            self.result = item
        elif isinstance(item, PixelFrame) and item.kind is FrameKind.RESULT:
            self.images.append(item)
            return self.result is not None and len(self.images) == self.result.count
        elif isinstance(item, PixelFrame) and item.kind is FrameKind.RESULT_TILE and self.result:
            # A canvas too large for one message: its rectangles, put together as one RESULT frame.
            size = (self.result.width, self.result.height)
            assembly = self.assembling.setdefault(item.index, ResultImage(*size))
            assembly.add(item)
            if assembly.complete:
                whole = bytes(assembly.pixels)
                self.images.append(
                    PixelFrame(FrameKind.RESULT, item.job_id, item.index, *size, item.format, whole)
                )
            return len(self.images) == self.result.count
        elif isinstance(item, Cancelled):
            self.cancelled = item
            return True
        elif isinstance(item, Error):
            self.error = item
            return True
        return False


class InstantStyleClient:
    """A thin asyncio client over the protocol."""

    def __init__(self, connection: ClientConnection, hello: ServerHello) -> None:
        self.connection = connection
        self.hello = hello
        self.status: ModelStatus = hello.status
        """The model's loading status, as last announced."""
        self._next_job = 0

    @classmethod
    @contextlib.asynccontextmanager
    async def connect(
        cls,
        url: str,
        token: str | None = None,
        client: str = "backend.client",
        trust: ServerTrust | None = None,
    ) -> AsyncIterator[InstantStyleClient]:
        """Raises ``CertificateRefused`` for a ``wss://`` server ``trust`` does not accept (with the
        certificate's fingerprint when no authority vouches for it), before anything is sent."""
        limits = Limits()
        trust = trust or ServerTrust()
        tls = {"ssl": trust.context()} if is_tls_url(url) else {}
        try:
            ws = await connect(url, compression=None, max_size=limits.max_message_bytes, proxy=None, **tls)
        except ssl.SSLError as error:
            raise await _refusal(error, url, trust) from None
        async with ws:
            if tls:  # before hello: the token never reaches a server that is not the one trusted
                _check_pin(trust, ws.transport.get_extra_info("ssl_object").getpeercert(binary_form=True))
            await ws.send(encode_message(Hello(client=client, token=token)))
            reply = decode_server_message(await ws.recv())
            if isinstance(reply, Error):
                raise ServerError(reply)
            assert isinstance(reply, ServerHello)
            # The server's results may be larger (or must be smaller) than the defaults: its own limit.
            ws.protocol.max_message_size = reply.limits.max_message_bytes
            yield cls(ws, reply)

    def new_job_id(self) -> int:
        self._next_job += 1
        return self._next_job

    async def submit(self, message: Generate, inputs: dict[int, Image.Image]) -> None:
        """Send the INPUT frames, then the ``generate`` that refers to them."""
        for index, image in inputs.items():
            await self.connection.send(input_frame(message.job_id, index, image))
        await self.connection.send(encode_message(message))

    async def cancel(self, job_id: int) -> None:
        await self.connection.send(encode_message(Cancel(job_id)))

    async def receive(self) -> ServerMessage | PixelFrame:
        data = await self.connection.recv()
        if isinstance(data, bytes):
            return decode_frame(data, self.hello.limits.max_side)
        return decode_server_message(data)

    async def follow(
        self, job_id: int, on_item: Callable[[ServerMessage | PixelFrame], None] | None = None
    ) -> JobOutcome:
        """Collect one job's messages until its result images, cancellation or error.

        Messages of other jobs on this connection are dropped: use ``follow_all`` for several.
        """
        return (await self.follow_all([job_id], on_item))[job_id]

    async def follow_all(
        self, job_ids: list[int], on_item: Callable[[ServerMessage | PixelFrame], None] | None = None
    ) -> dict[int, JobOutcome]:
        """Collect several jobs' messages, each into its own outcome, until every one has ended.

        ``on_item`` sees each of their messages as it arrives (progress bars)."""
        outcomes = {job_id: JobOutcome() for job_id in job_ids}
        running = set(job_ids)
        while running:
            item = await self.receive()
            if isinstance(item, ModelStatus):
                self.status = item
                if on_item is not None:
                    on_item(item)
                continue
            job_id = getattr(item, "job_id", None)
            if job_id not in running:
                continue
            if on_item is not None:
                on_item(item)
            if outcomes[job_id].record(item):
                running.discard(job_id)
        return outcomes


async def _demo(args: argparse.Namespace) -> int:
    server = None
    url = args.url
    if args.serve_tiny:
        from backend.engine.engine import InstantStyleEngine
        from backend.server.app import InstantStyleServer
        from backend.server.config import ServerConfig
        from backend.threads import pin_threads
        from backend.tiny.layouts import ensure_tiny_model
        from protocol import ModelInfo

        pin_threads()
        engine = InstantStyleEngine.load(ensure_tiny_model().spec(), device="cpu")
        info = engine.info
        server = InstantStyleServer(
            engine,
            ModelInfo(info.label, True, info.device, info.dtype, info.memory_tier),
            ServerConfig(port=0),
        )
        await server.start()
        url = server.url
    try:
        message, inputs = job_from_arguments(args, 1)  # the files are read before connecting
        trust = getattr(args, "trust", None)
        async with InstantStyleClient.connect(url, token=args.token, trust=trust) as client:
            model = client.hello.model
            print(f"connected to {url}: {model.label}{' [TEST MODEL]' if model.is_test_model else ''}")
            if not client.status.ready:
                show_progress(client.status)
            family = client.status.features.family if client.status.features else None
            if getattr(args, "speed", None) and family not in (None, ModelFamily.SDXL):  # its preset's LoRA
                message, inputs = job_from_arguments(args, 1, family)
            await client.submit(message, inputs)
            if args.previews:
                args.previews.mkdir(parents=True, exist_ok=True)
            outcome = (await client.follow_all([message.job_id], on_item=show_progress))[message.job_id]
            for preview in outcome.previews if args.previews else []:
                frame_image(preview).save(args.previews / f"step-{preview.index:03d}.png")
            if outcome.error:
                print(f"error: {outcome.error.message}", file=sys.stderr)
                return 1
            assert outcome.result is not None
            for frame in outcome.images:
                path = args.out if frame.index == 0 else args.out.with_stem(f"{args.out.stem}-{frame.index}")
                path.parent.mkdir(parents=True, exist_ok=True)
                seed = outcome.result.seeds[frame.index]
                frame_image(frame).save(path, pnginfo=png_labels(model.label, args.prompt, seed))
                print(f"wrote {path} (seed {seed}, {len(outcome.previews)} previews)")
            if outcome.result.auto is not None:
                auto = outcome.result.auto
                print(
                    describe_search(
                        auto.points, auto.chosen, auto.reason, (auto.width, auto.height), auto.steps
                    )
                )
            if model.is_test_model:
                print(
                    "note: made with the embedded TEST model (random weights): the picture is noise by design"
                )
            return 0
    finally:
        if server is not None:
            await server.close()


def _check_pin(trust: ServerTrust, der: bytes | None) -> None:
    """The pinned certificate and no other, said in this command's terms (``--pin``)."""
    try:
        trust.check(der)
    except CertificateRefused as refused:
        if not refused.fingerprint:  # no certificate at all
            raise
        seen = refused.fingerprint
        raise CertificateRefused(
            refused.problem,
            f"the server's certificate is not the one --pin names (it shows SHA-256 {seen}): if its "
            f"owner replaced it, pass --pin {seen}; otherwise someone may be in between",
            seen,
        ) from None


async def _refusal(error: ssl.SSLError, url: str, trust: ServerTrust) -> CertificateRefused:
    """The failed handshake in one line; a certificate nobody vouches for with how to pin it."""
    refused = explain_handshake_failure(error, url, trust)
    if refused.problem is not CertificateProblem.UNKNOWN:
        return refused
    try:
        seen = fingerprint(await asyncio.to_thread(peer_certificate, url))
    except (OSError, ValueError):
        return refused
    return CertificateRefused(
        refused.problem,
        f"the server's certificate at {url} is not signed by a known authority (SHA-256 {seen}): if "
        f"that is the fingerprint the server printed, pass --pin {seen}",
        seen,
    )


def show_progress(item: ServerMessage | PixelFrame) -> None:
    """One line per event on stderr: the model's loading, queue position, then steps."""
    if isinstance(item, ModelStatus):
        print(f"backend: {item.message or item.phase.value}", file=sys.stderr, flush=True)
    elif isinstance(item, Queued) and item.position:
        print(f"queued: {item.position} job(s) ahead", file=sys.stderr, flush=True)
    elif isinstance(item, Progress):
        eta = f", about {item.eta_seconds:.0f} s left" if item.eta_seconds else ""
        print(f"{item.describe()}{eta}", file=sys.stderr, flush=True)


def connection_problem(url: str, error: BaseException) -> str:
    """What went wrong reaching the server, in one line."""
    from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidMessage, InvalidURI

    if isinstance(error, CertificateRefused):
        return error.message
    if isinstance(error, InvalidURI):
        return f"{url} is not a WebSocket address (expected ws://HOST:PORT or wss://HOST:PORT)"
    if isinstance(error, InvalidMessage) and not is_tls_url(url):  # a TLS server hangs up on plain HTTP
        return plain_to_tls_hint(url)
    if isinstance(error, ServerError):
        return f"the server refused the connection: {error.error.message}"
    if isinstance(error, ConnectionClosed):
        reason = error.rcvd.reason if error.rcvd is not None and error.rcvd.reason else "no reason given"
        return f"the server closed the connection ({reason})"
    if isinstance(error, InvalidHandshake):
        return f"{url} did not answer as an InstantStyle backend ({error})"
    return f"no backend at {url} ({getattr(error, 'strerror', None) or error}): is it running?"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m backend.client", description=__doc__)
    parser.add_argument("--url", default="ws://127.0.0.1:8765")
    parser.add_argument("--serve-tiny", action="store_true", help="start a tiny-model server in this process")
    parser.add_argument("--token")
    parser.add_argument("--ca", metavar="FILE", help="a studio CA certificate (PEM) that signs the server's")
    parser.add_argument(
        "--pin",
        metavar="FINGERPRINT",
        help="trust the wss:// server whose certificate has this SHA-256 fingerprint (the server prints it)",
    )
    add_job_arguments(parser)
    args = parser.parse_args(argv)
    from websockets.exceptions import InvalidURI, WebSocketException

    try:
        if (args.ca or args.pin) and not is_tls_url(args.url):
            raise CertificateRefused(CertificateProblem.NOT_TLS, "--ca and --pin need a wss:// --url")
        args.trust = ServerTrust(args.ca or "", args.pin or "")
    except ValueError as error:  # a malformed --pin, or --ca/--pin without TLS
        print(f"error: {getattr(error, 'message', error)}", file=sys.stderr)
        return 2
    try:
        return asyncio.run(_demo(args))
    except FileNotFoundError as error:
        print(f"error: {error.filename}: no such file", file=sys.stderr)
    except (OSError, InvalidURI, WebSocketException, ServerError, CertificateRefused) as error:
        print(f"error: {connection_problem(args.url, error)}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
