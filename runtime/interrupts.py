"""Ctrl-C and SIGTERM end a command the same way: the work stops, outputs are finalized, the exit code says why.

SIGTERM is what systemd, Docker and Kubernetes send to stop a process; it raises ``Terminated``, a
``KeyboardInterrupt``, so every path that finalizes outputs after Ctrl-C does so after SIGTERM too. Only the first
signal interrupts: later ones are noted and ignored until the process has exited, so pressing Ctrl-C twice never
abandons a half-written file nor changes the exit code (SIGKILL still stops at once). A short step that must finish
whole (writing a frame and counting it, a training step) runs inside ``signals_held``: a signal arriving there
interrupts as the step ends.

An interrupt raised where Python discards exceptions (a weakref callback or ``__del__`` inside a library: seen in
onnxslim) would let the command run on as if no signal came. So the interrupt stays pending until a handler that
finalizes outputs ``take``s it: ``raise_pending`` (called before an output takes its final name, and when the
command returns) raises it again if nobody did.

Helper processes (DataLoader workers) ignore both signals: a signal to the process group (what ``timeout``,
systemd and ``docker stop`` send) reaches them too, and only the main process may decide how the command ends.
"""
from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Iterator

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Terminated(KeyboardInterrupt):
    """SIGTERM was received."""


class _Pending:
    """The interrupt raised for the stop signal, until a handler takes it."""
    interrupt: KeyboardInterrupt | None = None


def _raise(signum: int):
    _Pending.interrupt = _interrupt(signum)
    raise _Pending.interrupt


def take(interrupt: KeyboardInterrupt) -> None:
    """Mark ``interrupt`` as handled: the caller stops the work and finalizes the outputs itself."""
    if _Pending.interrupt is interrupt:
        _Pending.interrupt = None


def raise_pending() -> None:
    """Raise the stop signal's interrupt again if no handler has taken it (it was swallowed on its way)."""
    interrupt, _Pending.interrupt = _Pending.interrupt, None
    if interrupt is not None:
        raise interrupt


class _Hold:
    """Whether the main thread is inside ``signals_held``, and the signal that arrived there."""
    active = False
    signum: int | None = None


def _interrupt(signum: int) -> KeyboardInterrupt:
    return Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


def signal_of(interrupt: KeyboardInterrupt) -> signal.Signals:
    """The signal behind ``interrupt``: SIGTERM or SIGINT (Ctrl-C)."""
    return signal.SIGTERM if isinstance(interrupt, Terminated) else signal.SIGINT


def exit_code(interrupt: KeyboardInterrupt) -> int:
    """The shell convention 128 + signal number: 143 for SIGTERM, 130 for Ctrl-C."""
    return 128 + signal_of(interrupt)


def describe(interrupt: KeyboardInterrupt) -> str:
    """"terminated (SIGTERM)" or "interrupted (Ctrl-C)", then the notes added on the way out (``add_note``)."""
    said = "terminated (SIGTERM)" if isinstance(interrupt, Terminated) else "interrupted (Ctrl-C)"
    return "; ".join([said, *getattr(interrupt, "__notes__", ())])


def _ignore_repeat(signum: int, frame) -> None:
    print(f"{signal.Signals(signum).name} again: still finishing the outputs", file=sys.stderr, flush=True)


def _interrupt_once(signum: int, frame) -> None:
    for stop_signal in STOP_SIGNALS:
        signal.signal(stop_signal, _ignore_repeat)
    if _Hold.active:
        _Hold.signum = signum
        return
    _raise(signum)


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """Within: a first SIGINT/SIGTERM waits and interrupts on exit, so the step inside finishes whole. Main thread
    only (Python runs signal handlers there, so elsewhere this is a no-op); not reentrant."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _Hold.active, _Hold.signum = True, None
    try:
        yield
    finally:
        _Hold.active = False  # first: a signal from here on raises at once, one before it is read below
        signum, _Hold.signum = _Hold.signum, None
        if signum is not None:
            _raise(signum)


@contextlib.contextmanager
def stop_signals() -> Iterator[None]:
    """Within: the first SIGINT/SIGTERM raises KeyboardInterrupt/Terminated, later ones are ignored. On exit the
    previous handlers come back if no signal came; after one, repeats stay ignored by the operating system (the
    command is ending: a second Ctrl-C just after the outputs are finalized must not turn exit code 130 into a death
    by SIGINT, and CPython drops Python-level handlers to the default, fatal one while the interpreter shuts down).
    A no-op outside the main thread (Python delivers signals only there)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {stop_signal: signal.getsignal(stop_signal) for stop_signal in STOP_SIGNALS}
    for stop_signal in STOP_SIGNALS:
        signal.signal(stop_signal, _interrupt_once)
    _Pending.interrupt = None
    try:
        yield
    except KeyboardInterrupt as interrupt:
        take(interrupt)  # it reached the command's edge: whoever catches it there ends the command
        raise
    finally:
        interrupted = any(signal.getsignal(stop_signal) is not _interrupt_once for stop_signal in STOP_SIGNALS)
        for stop_signal, handler in previous.items():
            signal.signal(stop_signal, signal.SIG_IGN if interrupted else handler)


def ignore_stop_signals(*_: object) -> None:
    """Make this process ignore SIGINT/SIGTERM, then unblock them: for helper processes, which the main process
    stops (usable as a DataLoader ``worker_init_fn``). A signal pending since ``stop_signals_blocked`` is dropped."""
    for stop_signal in STOP_SIGNALS:
        signal.signal(stop_signal, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


@contextlib.contextmanager
def stop_signals_blocked() -> Iterator[None]:
    """Within: SIGINT/SIGTERM wait (blocked) and are delivered on exit. Processes started within inherit the block,
    so a signal to the process group cannot stop a helper before it calls ``ignore_stop_signals``."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
