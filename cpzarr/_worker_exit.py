"""A worker plugin for local clusters: workers that have closed end without finalizers."""

from __future__ import annotations

import logging
import os
from typing import Any

from distributed import WorkerPlugin


class QuietExit(WorkerPlugin):
    """Worker plugin: a worker process that has closed ends at once, skipping finalizers.

    A process that ran TensorFlow takes 5-8 s to finalize after its last Python line (its
    C++ thread pools and libraries unwind); the nanny waits 4 s, then kills the worker with
    a warning ("Worker process still alive after 4.0 seconds, killing") after every run. Once
    the worker has closed (plugin teardown), this process's exit skips those finalizers.
    Restarted workers get the plugin again from the scheduler.
    """

    name = "cpzarr-quiet-exit"

    def setup(self, worker: Any) -> None:
        import atexit
        import signal
        import threading

        self.closed = False
        atexit.register(self._exit)
        if threading.current_thread() is threading.main_thread():  # a restarted worker, too
            signal.signal(signal.SIGINT, signal.SIG_IGN)

    def teardown(self, worker: Any) -> None:
        self.closed = True

    def _exit(self) -> None:
        import sys

        if not self.closed:
            return
        logging.shutdown()
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # a closed stream has nothing left to write
                pass
        os._exit(0)
