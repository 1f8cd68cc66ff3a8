"""boxd's threads: the one that reaps every child in the box, and those that run requests.

Standard library only, like boxd (which imports this at start-up).
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
import time
from collections.abc import Callable


class Reaper:
    """The one place that waits for children: ours and every orphan in the box.

    Its thread starts with the first child and, with no child left, sleeps until the
    next: an idle box is one process with one thread, which never wakes."""

    def __init__(self) -> None:
        self._status: dict[int, int] = {}
        self._cond = threading.Condition()
        self._spawns = 0  # children started so far
        self._started = False

    def spawned(self) -> None:
        """Called after each child is started."""
        with self._cond:
            self._spawns += 1
            self._cond.notify_all()
            if not self._started:
                self._started = True
                threading.Thread(target=self._loop, daemon=True).start()

    def _loop(self) -> None:
        while True:
            with self._cond:
                seen = self._spawns
            try:
                pid, status = os.waitpid(-1, 0)
            except ChildProcessError:
                # None now. A child started after ``seen`` was read counted itself
                # first, so this cannot sleep through it.
                with self._cond:
                    while self._spawns == seen:
                        self._cond.wait()
                continue
            with self._cond:
                self._status[pid] = os.waitstatus_to_exitcode(status)
                self._cond.notify_all()

    def wait(self, pid: int, timeout: float | None) -> int | None:
        """The exit code of ``pid`` (negative: killed by that signal), or None on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while pid not in self._status:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return None
                self._cond.wait(remaining)
            return self._status.pop(pid)

    def exited(self, pid: int) -> bool:
        with self._cond:
            return pid in self._status


class Workers:
    """Each request runs on a thread of its own, so requests proceed concurrently; a
    thread that finished one waits a while for the next rather than a thread being
    started for every request (a start and a wake-up cost ~0.1 ms of a warm exec).

    ``answer`` runs a request and returns its final frame (None: nothing to send), which
    ``send`` writes."""

    IDLE_SECONDS = 30.0

    def __init__(self, answer: Callable[[dict], dict | None],
                 send: Callable[[dict], None]) -> None:
        self._answer = answer
        self._send = send
        self._jobs: queue.SimpleQueue[dict] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._idle = 0

    def submit(self, req: dict) -> None:
        with self._lock:
            if self._idle:
                self._idle -= 1  # that thread is now this request's
                self._jobs.put(req)
                return
        threading.Thread(target=self._run, args=(req,), daemon=True).start()

    def warm(self, prepare: Callable[[], object]) -> None:
        """Before the first request: a thread waiting for it, after ``prepare()``."""
        threading.Thread(target=self._run, args=(None, prepare), daemon=True).start()

    def _run(self, req: dict | None, prepare: Callable[[], object] | None = None) -> None:
        if prepare is not None:
            # A failure here is met again by the first request, which reports it.
            with contextlib.suppress(Exception):
                prepare()
        while True:
            final = self._answer(req) if req is not None else None
            # Idle before the final frame goes: the host's next request may follow it at
            # once, and this thread then takes it rather than a new one.
            with self._lock:
                self._idle += 1
            if final is not None:
                self._send(final)
            try:
                req = self._jobs.get(timeout=self.IDLE_SECONDS)
            except queue.Empty:
                with self._lock:
                    try:  # a request handed to this thread just as it timed out
                        req = self._jobs.get_nowait()
                    except queue.Empty:
                        self._idle -= 1
                        return


class Credit:
    """Flow control of one request's output: at most ``window`` characters of data sent
    and not yet credited back by the host. The thread that sends waits for credit; the
    host's ``credit`` frames (read by the main thread) give it."""

    def __init__(self, window: int) -> None:
        self._left = window
        self._closed = False
        self._cond = threading.Condition()

    def take(self, size: int, deadline: float) -> bool:
        """Wait until ``size`` may be sent, and count it as sent. False if the request
        was cancelled (send nothing more) or ``deadline`` (monotonic) passed first."""
        with self._cond:
            while self._left < size and not self._closed:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
            if self._closed:
                return False
            self._left -= size
            return True

    def give(self, size: int) -> None:
        with self._cond:
            self._left += size
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
