"""Stop cleanly on SIGTERM/SIGINT: the loop checkpoints the current step, then raises Preempted."""
from __future__ import annotations

import signal
import threading

import jax

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Preempted(Exception):
    """Raised after the checkpoint of `step` is on disk; rerunning the command resumes there."""

    def __init__(self, step: int, signal_name: str):
        super().__init__(f"stopped by {signal_name} after step {step}; its checkpoint is saved, "
                         f"rerun the same command to resume")
        self.step, self.signal_name = step, signal_name


class StopRequest:
    """Within `with StopRequest() as stop:`, the signals set a flag instead of killing us.

    With several processes they must agree on the step to save at (checkpointing is
    collective), so there the decision is JAX's preemption sync point, which the coordination
    service raises on every process at the same step when any of them is being preempted.
    """

    def __init__(self):
        self.signal_name: str | None = None
        self._previous = {}

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        self.signal_name = signal.Signals(signum).name

    def requested(self, step: int) -> bool:
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils
            if multihost_utils.reached_preemption_sync_point(step):
                self.signal_name = self.signal_name or "preemption notice"
                return True
            return False
        return self.signal_name is not None

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
