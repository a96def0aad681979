"""Glue between the job session, the canvas and the docker, driven by a Qt timer.

One controller per Krita session. It owns the connection, drains its events
every 30 ms on the UI thread, and turns them into canvas changes and a
``changed`` signal for the docker. Every error reaches the artist as a
sentence in the docker, never as a traceback.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace

from krita import Krita  # type: ignore[import-not-found]

from .canvas import CanvasError, CanvasWriter, SavedSelection, capture, fit_inputs, save_selection
from .connection import Connection
from .deps import protocol
from .job_message import SubmitError, point_settings
from .jobs import Job, JobInputs, describe_point
from .live import CHECK_SECONDS, LiveWatch, live_settings, pick_preset
from .live_layer import LiveLayer, signature
from .managed_link import ManagedLink
from .qt import QObject, QTimer, pyqtSignal
from .server_trust import forget_certificate, server_trust, trust_certificate
from .session import JobUpdate, Session, UpdateKind, drop_stale_previews
from .settings import SETTINGS_GROUP, BackendMode, GenerationSettings, JobKind, load_settings, save_settings

log = logging.getLogger(__name__)
FOUND = "; the map under Find strength shows every setting tried and why this one"


class KritaStore:
    """Settings persisted in kritarc through Krita's own API."""

    def read(self, key: str, default: str) -> str:
        return Krita.instance().readSetting(SETTINGS_GROUP, key, default)

    def write(self, key: str, value: str) -> None:
        Krita.instance().writeSetting(SETTINGS_GROUP, key, value)


class Controller(QObject):
    changed = pyqtSignal()
    """Connection state, jobs or history changed: the docker refreshes."""

    def __init__(self) -> None:
        super().__init__()
        self.store = KritaStore()
        self.settings: GenerationSettings = load_settings(self.store)
        self.canvas = CanvasWriter()
        self.session = Session(
            Connection(self.settings.server_url, self.settings.token, trust=server_trust(self.settings))
        )
        self.message = ""
        """The last thing the artist should read (errors included)."""
        self.settings_sources: list = []
        """Callables that copy UI state into ``settings`` before a job (the docker registers one)."""
        self._in_tick = False
        self.saved_selections: dict[str, SavedSelection] = {}
        """Selections saved for regions, by region name (kept while Krita runs)."""
        self.live: LiveLayer | None = None
        """Live mode's document and layers while it is on."""
        self._live_watch = LiveWatch()
        self._live_checked = 0.0
        self.timer = QTimer(self)
        self.timer.setInterval(30)
        self.timer.timeout.connect(self.tick)
        self.link = ManagedLink(self)
        """The backend this plugin installs and runs itself."""
        self.auto_job: Job | None = None
        """The last finished "Find strength" job: the docker's trade-off map shows its search."""

    # ------------------------------------------------------------------ connection

    def start(self) -> None:
        if self.settings.backend_mode is BackendMode.MANAGED:
            self.link.start()
        else:
            self.session.connection.start()
        self.timer.start()

    def shutdown(self) -> None:
        self.stop_live()
        self.timer.stop()
        for job in self.session.active_jobs:
            self.session.cancel(job)
        self._clear_canvas(self.session)
        self.session.connection.stop(timeout=2.0)
        self.link.shutdown()

    def _clear_canvas(self, session: Session) -> None:
        """Take away the preview and partly arrived result layers of ``session``'s unfinished jobs."""
        for job in session.active_jobs:
            self._safely(self.canvas.remove_preview, job)
            self._safely(self.canvas.remove_arriving, job)

    def reconnect(self, url: str, token: str, ca_file: str | None = None) -> None:
        """New server address, token or studio CA file: save them and start a fresh connection."""
        self.settings.server_url, self.settings.token = url.strip(), token.strip()
        if ca_file is not None:
            self.settings.server_ca_file = ca_file.strip()
        self.save()
        self.connect_to(self.settings.server_url, self.settings.token)

    def trust_certificate(self) -> bool:
        """ "Trust this certificate": pin the one the connection refused (its fingerprint was shown),
        save, reconnect. False, with the reason said, when there is none to trust."""
        try:
            trust_certificate(self.settings, self.session.untrusted)
        except ValueError as error:
            self._say(str(error))
            return False
        self._trust_changed("trusting the server's certificate")
        return True

    def forget_certificate(self) -> None:
        """ "Forget": no pinned certificate; the server's next one is shown to confirm again."""
        forget_certificate(self.settings)
        self._trust_changed("forgot the trusted certificate")

    def _trust_changed(self, what: str) -> None:
        self.save()
        if self.settings.backend_mode is BackendMode.REMOTE:
            self.connect_to(self.settings.server_url, self.settings.token)
        self._say(what)

    def connect_to(self, url: str, token: str) -> None:
        """A fresh connection to ``url`` (the managed backend's address is not saved as a setting)."""
        self.stop_live()
        self.session.connection.stop(timeout=2.0)
        self._clear_canvas(self.session)
        self.session = Session(Connection(url, token, trust=server_trust(self.settings, url)))
        self.session.connection.start()
        self.changed.emit()

    @property
    def backend_status(self) -> str:
        """The docker's top line: the connection's state, or the managed backend's until it runs."""
        return self.link.status_line() or self.session.status

    def save(self) -> None:
        save_settings(self.store, self.settings)

    # ------------------------------------------------------------------ actions

    def stylize_active_layer(self) -> Job | None:
        """The "Stylize Layer" action: restyle the active layer (or selection) with the docker's settings,
        keeping its lines if the docker says so."""
        return self.generate(stylize=True)

    def generate(
        self,
        stylize: bool = False,
        sweep: bool = False,
        auto: bool = False,
        point: protocol.AutoPoint | None = None,
        seed: int | None = None,
    ) -> Job | None:
        """Start a job with the docker's settings; ``stylize`` forces a restyle of the active layer,
        ``sweep`` makes it a grid over the docker's sweep axes, ``auto`` lets the backend find the
        style and content strengths ("Find strength"); ``point`` (with its search's ``seed``) paints
        one setting of a trade-off map instead of the docker's strengths."""
        for source in self.settings_sources:
            source()
        settings = self.settings
        if stylize:  # for this job only: the docker's own choice stays saved
            keep_lines = settings.kind is JobKind.KEEP_LINES
            settings = replace(settings, kind=JobKind.KEEP_LINES if keep_lines else JobKind.STYLIZE)
        if point is not None:  # this job only: the docker's own strengths stay as they are
            settings = point_settings(settings, point, seed)
        job = None
        try:
            inputs, target = capture(Krita.instance().activeDocument(), settings, saved=self.saved_selections)
            job = self.session.submit(settings, self._within_limits(inputs), target, sweep=sweep, auto=auto)
        except (CanvasError, SubmitError) as error:
            self._say(str(error))
        except Exception as error:  # never a traceback for the artist; the log keeps it
            log.exception("could not start a job")
            self._say(f"could not start the job: {error}")
        else:
            if point is None:
                self.settings.seed = settings.seed  # the seed actually used (random unless locked)
            else:
                job.note = describe_point(point)
            self.canvas.remember_mask(job, inputs.mask)
            what = ": finding the strength" if auto else f": painting {job.note}" if point is not None else ""
            self._say(f"job {job.job_id} sent{what} (seed {job.seed})")
        self.save()  # once per job: the docker's values and the seed used
        return job

    def render_point(self, index: int) -> Job | None:
        """Paint setting ``index`` of the last "Find strength" search as a normal job at full size, with
        that search's seed and the docker's other settings as they are now."""
        job = self.auto_job
        search = job.search if job is not None else None
        if job is None or search is None or not 0 <= index < len(search.points):
            self._say("there is no Find strength result to pick from")
            return None
        return self.generate(point=search.points[index], seed=job.seed)

    def _within_limits(self, inputs: JobInputs) -> JobInputs:
        """The inputs as they travel: a layer larger than the server's frames at the job's size (the
        result still lands at the layer's; the selection mask kept for placing it is the original)."""
        hello = self.session.hello
        return fit_inputs(inputs, hello.limits) if hello is not None else inputs

    def cancel(self) -> None:
        self.session.cancel_all()

    def save_region_selection(self, name: str) -> bool:
        """Keep the active document's selection as region ``name``'s mask."""
        try:
            self.saved_selections[name] = save_selection(Krita.instance().activeDocument())
        except CanvasError as error:
            self._say(str(error))
            return False
        self._say(f"saved the selection for region '{name}'")
        return True

    # ------------------------------------------------------------------ live mode

    def start_live(self) -> bool:
        """Watch the active layer: a moment after it (or the selection) changes, restyle it into the
        "InstantStyle live" layer. False, with the reason said, if it cannot start."""
        self.stop_live()
        document = Krita.instance().activeDocument()
        source = document.activeNode() if document is not None else None
        if source is None:
            self._say("live mode needs an open document with a layer selected")
            return False
        if not self.session.connected:
            self._say(f"live mode needs the backend ({self.session.status})")
            return False
        self.live, self._live_watch = LiveLayer(document, source), LiveWatch()
        preset = pick_preset(self.session.features.speed_presets, self.settings.live_preset)
        how = preset.label if preset else f"{self.settings.steps} steps: the backend offers no speed preset"
        self._say(f"live: restyling '{source.name()}' as you paint ({how})")
        return True

    def stop_live(self, why: str = "") -> None:
        """Live mode off: its pending job is cancelled and its layer removed (the artist's stay)."""
        live, self.live = self.live, None
        if live is None:
            return
        for job in self.session.active_jobs:
            if job.live:
                self.session.cancel(job)
        self._safely(live.remove)
        if why:
            self._say(why)
        self.changed.emit()

    def apply_live(self) -> str | None:
        """Copy the live layer into a new permanent layer named after the prompt and seed."""
        if self.live is None:
            return None
        name = self._attempt("apply the live result", self.live.apply)
        if name is not False:
            self._say(f"added layer '{name}'" if name else "no live result to apply yet")
        return name or None

    def _check_live(self) -> None:
        """Send a live job once the watched layer's change has settled (called from the timer)."""
        live = self.live
        now = time.monotonic()
        if live is None or now - self._live_checked < CHECK_SECONDS:
            return
        self._live_checked = now
        if not live.open:
            self.stop_live("live mode stopped: its document was closed")
            return
        if not self.session.connected:
            self.stop_live("live mode stopped: the backend is not connected")
            return
        source = live.source()
        if source is None:
            self.stop_live(f"live mode stopped: the layer '{live.source_name}' is gone")
            return
        if self._live_watch.observe(signature(live.document, source), now):
            self._send_live(live, source)

    def _send_live(self, live: LiveLayer, source) -> None:
        for read in self.settings_sources:
            read()
        try:
            inputs, target = capture(live.document, self.settings, source=source, saved=self.saved_selections)
            preset = pick_preset(self.session.features.speed_presets, self.settings.live_preset)
            settings = live_settings(self.settings, preset, target.width, target.height)
            self.session.submit(settings, self._within_limits(inputs), target, live=True)
        except (CanvasError, SubmitError) as error:
            self.stop_live(f"live mode stopped: {error}")
        except Exception as error:  # never a traceback for the artist; the log keeps it
            log.exception("could not send a live job")
            self.stop_live(f"live mode stopped: {error}")

    def apply(self, job: Job, index: int = 0) -> None:
        self._safely(self.canvas.apply_result, job, index)

    def keep_cell(self, job: Job, index: int) -> str | None:
        """Keep one picture of a sweep as a layer; the sweep's group goes."""
        name = self._attempt("keep the picture", self.canvas.keep_cell, job, index)
        if name is not False:
            self._say(f"kept '{name}'" if name else "the sweep's group is gone (closed or deleted)")
        return name or None

    def discard(self, job: Job) -> None:
        self.session.discard(job)
        self.changed.emit()

    # ------------------------------------------------------------------ events

    def tick(self) -> None:
        # Krita runs nested event loops (saving, exporting, modal dialogs) that fire this timer
        # inside another tick or inside Krita's own document work: never re-enter.
        if self._in_tick:
            return
        self._in_tick = True
        try:
            updates = self.session.update()
            for update in drop_stale_previews(updates):
                self._safely(self._handle, update)
            if updates:
                self.changed.emit()
            self._check_live()
            self.link.follow()
        except Exception:
            log.exception("processing backend events failed")
        finally:
            self._in_tick = False

    def _handle(self, update: JobUpdate) -> None:
        job = update.job
        if update.kind is UpdateKind.CONNECTION:
            self.message = update.message
            if self.live is not None and not self.session.connected:
                self.stop_live("live mode stopped: the connection to the backend was lost")
        elif job is not None and job.live:
            self._handle_live(update, job)
        elif job is None:
            self._say(update.message)
        elif update.kind is UpdateKind.PREVIEW:
            self.canvas.show_preview(job, update.preview)
        elif update.kind is UpdateKind.RESULT_PART and update.part is not None and not job.is_sweep:
            self.canvas.write_result_part(job, update.part)
        elif update.kind is UpdateKind.RESULT and job.is_sweep:
            name = self.canvas.apply_sweep(job)
            self._say(
                f"added group '{name}': pick a picture in the results and press Keep"
                if name
                else "the job's document was closed; the pictures are in the results"
            )
        elif update.kind is UpdateKind.RESULT:
            if job.search is not None:
                self.auto_job = job
            name = self.canvas.apply_result(job, 0)
            found = FOUND if job.search is not None else ""  # the reason is under the map
            self._say(
                f"added layer '{name}'{found}"
                if name
                else f"the job's document was closed; the result is in the history{found}"
            )
        elif update.kind in (UpdateKind.CANCELLED, UpdateKind.FAILED):
            self.canvas.remove_preview(job)
            self.canvas.remove_arriving(job)
            self._say(update.message)

    def _handle_live(self, update: JobUpdate, job: Job) -> None:
        """Live jobs show only their result, in the live layer; a replaced one ends quietly."""
        live = self.live
        if live is None:
            return
        if update.kind is UpdateKind.RESULT and job.target.document_id == live.document:
            live.show(job)
            self._say(f"live: updated in {job.result.seconds:.1f} s" if job.result else "live: updated")
        elif update.kind is UpdateKind.FAILED:
            self._say(f"live: {update.message} (the next change tries again)")

    def _say(self, message: str) -> None:
        self.message = message
        self.changed.emit()

    def _attempt(self, what: str, function, *args):
        """``function(*args)``, or False after saying in one line that it could not ``what``."""
        try:
            return function(*args)
        except Exception as error:  # never a traceback for the artist; the log keeps it
            log.exception("could not %s", what)
            self._say(f"could not {what}: {error}")
            return False

    def _safely(self, function, *args) -> None:
        """A canvas change that may fail (e.g. its document closed between two events)."""
        self._attempt("update the canvas", function, *args)


_controller: Controller | None = None


def controller() -> Controller:
    """The one controller of this Krita session (created on first use)."""
    global _controller
    if _controller is None:
        _controller = Controller()
        _controller.start()
        Krita.instance().notifier().applicationClosing.connect(_controller.shutdown)
    return _controller
