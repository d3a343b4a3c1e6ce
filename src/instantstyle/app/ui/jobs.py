"""The page's jobs: a step counter for the progress bar and a Cancel that stops the running job between steps.

The one place the page reaches into a denoising call: ``run_with_steps`` prepares the request with
``StylePipeline.prepare`` and runs it with ``StylePipeline.run``, adding a diffusers ``callback_on_step_end`` after
the pipeline's own. Cancelling sets diffusers' ``_interrupt``: the remaining steps are skipped, the call returns
as usual (so everything the pipeline set up for the request is undone as after any run) and the images are
dropped. A sweep stops between cells.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from ...core.pipeline import Result, StylePipeline
from ...core.preflight import Checked
from ...core.request import Request
from ...errors import UserError


class Cancelled(UserError):
    """The visitor cancelled the job; nothing was saved."""


class Jobs:
    """The running job of each browser session (gradio's session hash), so its Cancel button stops that job
    only."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: dict[str, threading.Event] = {}

    @contextmanager
    def running(self, session: str | None) -> Iterator[threading.Event]:
        """The cancel flag of a job while it runs (a session without a hash, e.g. a direct call: never set)."""
        flag = threading.Event()
        if session:
            with self._lock:
                self._running[session] = flag
        try:
            yield flag
        finally:
            if session:
                with self._lock:
                    if self._running.get(session) is flag:
                        del self._running[session]

    def cancel(self, session: str | None) -> bool:
        """Ask the session's running job to stop at its next step; whether one was running."""
        with self._lock:
            flag = self._running.get(session or "")
        if flag is not None:
            flag.set()
        return flag is not None


def run_with_steps(pipe: StylePipeline, request: Request | Checked, on_step: Callable[[int, int], None],
                   cancelled: threading.Event) -> Result:
    """Run a request, calling ``on_step(done, total)`` after each denoising step; ``Cancelled`` when the flag was
    set (checked after every step: the rest are skipped)."""

    def step(done: int, total: int) -> bool:
        on_step(done, total)
        return cancelled.is_set()

    result = pipe(request, on_step=step)
    if cancelled.is_set():
        raise Cancelled("cancelled; nothing was saved")
    return result
