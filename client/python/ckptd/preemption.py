"""Save once more when the scheduler preempts the job (SIGTERM), at a step
boundary.

A signal arrives between two bytecodes, in the middle of a training step:
parameters of step N, BatchNorm statistics and RNG states already moved into
step N+1. Saving there saves a step that never existed. So the handler only
marks the run; the trainer's next `run.maybe_save(step, ...)` (or
`run.save`), which it calls once a step is complete, saves that step with a
force, waits until it is committed and exits. If no step boundary comes
within the grace period, the process exits without a preemption save and
says so: a restart resumes from the last committed step.

    with run.preemptible(grace=60):          # or ckptd.on_preemption(run, grace=60)
        for step in range(first, steps):
            train_one_step()
            run.maybe_save(step, model=model, optimizer=opt)   # the boundary
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Iterable

if TYPE_CHECKING:
    from .client import Run

log = logging.getLogger("ckptd")


class Preemption:
    """A run's preemption state: installed handlers, the signal seen, the
    grace timer. Run.preemptible() and on_preemption() make one."""

    def __init__(self, run, grace: float, signals, exit_code: int):
        if grace <= 0:
            raise ValueError("grace must be > 0 seconds (the time the scheduler gives after SIGTERM)")
        self.run = run
        self.grace = grace
        self.signals = tuple(signals)
        self.exit_code = exit_code
        self.signal_at: float | None = None
        self.signum = 0
        self._timer: threading.Timer | None = None
        self._previous: dict[int, Any] = {}

    def install(self) -> "Preemption":
        for s in self.signals:
            self._previous[s] = signal.signal(s, self._handler)
        self.run._preemption = self
        return self

    def uninstall(self):
        self._cancel()
        for s, h in self._previous.items():
            signal.signal(s, h)
        self._previous.clear()
        if self.run._preemption is self:
            self.run._preemption = None

    def _handler(self, signum, frame):
        if self.signal_at is not None:
            return  # a second signal while waiting for the boundary
        self.signal_at = time.monotonic()
        self.signum = signum
        log.warning("ckptd: run %s: signal %d: the step in progress finishes, then it is saved and "
                    "the trainer exits (grace %g s)", self.run.id, signum, self.grace)
        self._timer = threading.Timer(self.grace, self._deadline)
        self._timer.daemon = True
        self._timer.start()

    def _deadline(self):
        last = None
        try:
            last = self.run.latest()
        except Exception:  # noqa: BLE001 - the daemon may be gone too
            pass
        log.error("ckptd: run %s: no step boundary within the %g s grace period after signal %d: "
                  "exiting without a preemption save; a restart resumes from step %s, the last "
                  "committed", self.run.id, self.grace, self.signum, last[0] if last else "none")
        os._exit(self.exit_code)

    def _cancel(self):
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    @property
    def pending(self) -> bool:
        return self.signal_at is not None

    def save_and_exit(self, step: int, save):
        """At a step boundary after the signal: `save()` (a forced save of
        `step`), wait until it is committed, exit with exit_code."""
        self._cancel()  # the save may take the rest of the grace; the scheduler's kill is the limit
        log.warning("ckptd: run %s: saving step %d at the step boundary, %.2f s after signal %d",
                    self.run.id, step, time.monotonic() - (self.signal_at or time.monotonic()), self.signum)
        try:
            save()
            self.run.wait()
        except Exception:  # noqa: BLE001 - report and still exit
            log.exception("ckptd: run %s: the preemption save of step %d failed", self.run.id, step)
            raise SystemExit(1)
        log.warning("ckptd: run %s: step %d is committed; exiting with %d", self.run.id, step,
                    self.exit_code)
        raise SystemExit(self.exit_code)


def on_preemption(run: Run, state_fn: Callable[[], dict[str, Any]] | None = None,
                  signals: Iterable[int] = (signal.SIGTERM,), exit_code: int = 143,
                  grace: float = 30.0) -> Preemption:
    """Installs the handler for the rest of the process (see the module's
    doc): on SIGTERM, the run's next maybe_save/save saves its step and the
    process exits with `exit_code` (128 + SIGTERM by default), or after
    `grace` seconds without a step boundary it exits unsaved. `state_fn` is
    no longer called from the handler (that saved a step mid-way); it is
    accepted for compatibility and unused. Returns the Preemption."""
    del state_fn
    return Preemption(run, grace, signals, exit_code).install()
