"""Save once more when the scheduler preempts the job (SIGTERM)."""

from __future__ import annotations

import logging
import signal
import sys
from typing import Callable

log = logging.getLogger("ckptd")


def on_preemption(run, state_fn: Callable[[], dict], signals=(signal.SIGTERM,), exit_code: int = 143):
    """Installs a handler that, on SIGTERM, force-saves `state_fn()` (a dict
    with step, model, optimizer, extra, metrics: the arguments of Run.save),
    waits until the checkpoint is durable and committed, and exits with
    `exit_code` (128 + SIGTERM by default). The handler runs in the main
    thread between Python bytecodes, so the training step in progress is
    interrupted at a consistent point of the interpreter, not of the model:
    have state_fn return the state as of the last completed step. Returns
    the previous handlers."""
    previous = {}

    def handler(signum, frame):
        for s in signals:  # a second signal while saving: do not re-enter
            signal.signal(s, signal.SIG_IGN)
        st = dict(state_fn())
        step = st.pop("step")
        log.warning("ckptd: signal %d: saving step %d of run %s before exiting", signum, step, run.id)
        try:
            run.save(step, force=True, overwrite=True, **st)
            run.wait()
            log.warning("ckptd: step %d of run %s is committed", step, run.id)
        except Exception:  # noqa: BLE001 - report and still exit
            log.exception("ckptd: the preemption save of step %d failed", step)
            sys.exit(1)
        sys.exit(exit_code)

    for s in signals:
        previous[s] = signal.signal(s, handler)
    return previous
