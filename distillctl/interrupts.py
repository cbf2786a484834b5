"""Ctrl-C and SIGTERM during a run: both stop it the same way, and stay known for what they were.

Python delivers a signal by running its handler between two bytecodes of the main thread, wherever that is.
When it lands in a callback that a library calls and guards (a pydantic serializer, for one), the library
catches the raised interrupt and raises its own error instead (``PydanticSerializationError: Error calling
function `_flatten`: Interrupted``). So the handler installed here also notes the signal, and
:func:`interrupt_signal` tells from that note that such an error is really the interrupt.
"""

from __future__ import annotations

import contextlib
import signal
from typing import Iterator

from distillctl.errors import Interrupted

#: names of the signals received inside :func:`signals_interrupt` (process-wide, like the handlers themselves)
_received: list[str] = []


@contextlib.contextmanager
def signals_interrupt() -> Iterator[None]:
    """SIGINT and SIGTERM (a scheduler's cancel, ``kill``) raise :class:`Interrupted` in the main thread, with
    the signal's name, and are noted for :func:`interrupt_signal`. Outside the main thread (a library caller
    running a command in a thread) the signals are left alone."""
    def interrupt(signum: int, frame) -> None:
        name = signal.Signals(signum).name
        _received.append(name)
        raise Interrupted("", signal_name=name)

    try:
        before = {s: signal.signal(s, interrupt) for s in (signal.SIGINT, signal.SIGTERM)}
    except ValueError:  # not the main thread
        yield
        return
    _received.clear()
    try:
        yield
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)
        _received.clear()


def interrupt_signal(exc: BaseException) -> str | None:
    """The signal that ``exc`` stands for: its own name for an interrupt (``SIGINT`` for a plain Ctrl-C), the
    signal received for another error raised after one arrived (an interrupt a library re-raised as its own
    error), else None (a real failure)."""
    if isinstance(exc, KeyboardInterrupt):
        return getattr(exc, "signal_name", None) or "SIGINT"
    return _received[-1] if _received else None
