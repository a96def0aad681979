"""The managed backend's helper processes, run from Krita: their environment, and the two that run on
a thread while the docker stays responsive (what a model needs, and *Check*)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Hashable
from pathlib import Path

from .model_plan import ModelPlan, PlanError, ask_plan

NO_WINDOW = getattr(subprocess, "CREATE_NO_WINDOW", 0) if sys.platform == "win32" else 0
"""On Windows a console-less child: no black window pops up beside Krita."""


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment for a child: without Krita's own Python settings (an AppImage's
    PYTHONHOME would break any other Python), its output in UTF-8 (read as such here, whatever the
    locale: Windows children would write cp1252)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    return {**env, "PYTHONUTF8": "1", **(extra or {})}


class PlanAsker:
    """Asks the installed backend what a model needs, one question at a time, on a thread; the answer
    is kept with the choice it answers, so that a late answer never passes for another choice's."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._answer: tuple[Hashable, ModelPlan | None, str] | None = None
        self._asking: Hashable | None = None

    @property
    def busy(self) -> bool:
        return self._asking is not None

    def answer(self, choice: Hashable) -> tuple[ModelPlan | None, str] | None:
        """(plan, why there is none) for ``choice``, or None: not asked yet."""
        with self._lock:
            if self._answer is None or self._answer[0] != choice:
                return None
            return self._answer[1], self._answer[2]

    def forget(self) -> None:
        """What a model needs changed (a download, an uninstall): ask again next time."""
        with self._lock:
            self._answer = None

    def ask(
        self, choice: Hashable, python: Path, code: Path, arguments: list[str], env: dict[str, str]
    ) -> None:
        with self._lock:
            if self._asking is not None or (self._answer is not None and self._answer[0] == choice):
                return  # one question at a time; a new choice is asked once this one is answered
            self._asking = choice

        def work() -> None:
            try:
                plan, note = ask_plan(python, code, arguments, env), ""
            except PlanError as error:
                plan, note = None, str(error)
            except Exception as error:  # never stuck "checking": the docker says what happened
                plan, note = None, f"could not ask what the model needs: {type(error).__name__}: {error}"
            with self._lock:
                self._answer, self._asking = (choice, plan, note), None

        threading.Thread(target=work, name="instantstyle-model-plan", daemon=True).start()


class DoctorCheck:
    """*Check*: the installed backend's ``python -m backend doctor``, on a thread; its text to copy."""

    def __init__(self) -> None:
        self.running = False
        self.report: str | None = None

    def start(self, command: list[str], cwd: Path, env: dict[str, str]) -> None:
        if self.running:
            return
        self.running, self.report = True, None

        def work() -> None:
            try:
                done = subprocess.run(
                    command, cwd=cwd, env=env, capture_output=True, encoding="utf-8", errors="replace",
                    timeout=900, stdin=subprocess.DEVNULL, creationflags=NO_WINDOW,
                )  # fmt: skip
                said = [line for line in done.stderr.splitlines() if line.startswith("error")]
                self.report = (done.stdout + "\n".join(said[-1:])).strip() or "the check said nothing"
            except (OSError, subprocess.SubprocessError) as error:
                self.report = f"the check could not run: {error}"
            finally:
                self.running = False

        threading.Thread(target=work, name="instantstyle-check", daemon=True).start()
