"""Several worker processes sharing the listening sockets (``server.workers``).

The parent binds the sockets, forks the workers, and then only supervises:
it restarts a worker that dies, passes SIGHUP (reload) and SIGTERM/SIGINT
(graceful stop) on to every worker, and exits once they have all stopped.
Sessions live in encrypted cookies (or Redis) and every worker verifies
tokens itself, so any worker can answer any request. Metrics from all
workers are merged by prometheus-client's multiprocess mode, which
``server`` switches on before the workers create their metrics.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from typing import Callable

log = logging.getLogger("gateway.workers")

RESTART_BACKOFF = 1.0  # seconds between restarts of a worker that keeps dying
MAX_RAPID_RESTARTS = 20


def _stop_with_parent(parent: int) -> None:
    """Ask Linux to send this worker SIGTERM when the supervisor dies, even by SIGKILL."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        return
    if os.getppid() != parent:  # the supervisor died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def supervise(count: int, run_worker: Callable[[int], int], on_exit: Callable[[int], None] = lambda pid: None) -> int:
    """Fork ``count`` workers running ``run_worker(index)``; return the exit status for the parent."""
    children: dict[int, int] = {}  # pid -> worker index
    stopping = False
    rapid_restarts = 0

    parent = os.getpid()

    def spawn(index: int) -> None:
        pid = os.fork()
        if pid == 0:  # the worker
            for sig in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
                signal.signal(sig, signal.SIG_DFL)
            _stop_with_parent(parent)
            status = 1
            try:
                status = run_worker(index)
            except BaseException:  # pragma: no cover - reported by the parent
                log.exception("worker %d crashed", index)
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(status)
        children[pid] = index

    def forward(sig: int, _frame: object) -> None:
        nonlocal stopping
        if sig in (signal.SIGTERM, signal.SIGINT):
            stopping = True
        for pid in list(children):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass

    for sig in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, forward)
    for index in range(count):
        spawn(index)
    log.info("started %d workers", count)
    worst = 0
    while children:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        except InterruptedError:  # pragma: no cover - PEP 475 retries for us
            continue
        index = children.pop(pid, None)
        if index is None:
            continue
        code = os.waitstatus_to_exitcode(status)
        on_exit(pid)
        if stopping:
            worst = max(worst, code if code > 0 else 0)
            continue
        log.warning("worker %d (pid %d) exited with %d; restarting it", index, pid, code)
        rapid_restarts += 1
        if rapid_restarts > MAX_RAPID_RESTARTS:
            log.error("workers keep dying; giving up")
            forward(signal.SIGTERM, None)
            stopping = True
            worst = 1
            continue
        time.sleep(RESTART_BACKOFF)
        spawn(index)
    return worst
