"""The file helper's threads, which run its requests (fileserver.py).

Standard library only, like the helper.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable


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
