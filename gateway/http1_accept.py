"""Accepting connections for the ``httptools`` engine (``gateway.http1``).

uvloop's ``create_server`` accepted too slowly under load here: with a thousand
busy connections, hundreds of new ones waited in the kernel's accept queue for
seconds (wrk counted them as timeouts). A ``Listener`` accepts from a reader
callback of the loop's own, as Tornado's ``HTTPServer`` does, up to
``ACCEPTS_PER_WAKEUP`` connections per wakeup; each becomes a protocol through
``connect_accepted_socket``, which also does the TLS handshake.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from typing import Any, Callable, Optional

log = logging.getLogger("gateway")

ACCEPTS_PER_WAKEUP = 256
ACCEPT_RETRY = 0.5  # seconds without accepting after the process ran out of file descriptors or memory


class Listener:
    """One listening socket, accepted from until ``close`` (which closes it: new connections are refused)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: socket.socket,
                 protocol: Callable[[], asyncio.Protocol], tls: Optional[ssl.SSLContext]):
        self.loop = loop
        self.sock = sock
        self.protocol = protocol
        self.tls = tls
        self._retry: Optional[asyncio.TimerHandle] = None
        sock.setblocking(False)
        loop.add_reader(sock.fileno(), self._accept)

    def _accept(self) -> None:
        for _ in range(ACCEPTS_PER_WAKEUP):
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue  # the client gave up while it waited in the queue
            except OSError as exc:  # EMFILE, ENFILE, ENOBUFS, ENOMEM: wait before trying again
                log.warning("cannot accept connections for now: %s", exc.strerror or exc)
                self.loop.remove_reader(self.sock.fileno())
                self._retry = self.loop.call_later(ACCEPT_RETRY, self._resume)
                return
            try:
                conn.setblocking(False)
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:  # the client already left
                conn.close()
                continue
            task = asyncio.ensure_future(self.loop.connect_accepted_socket(self.protocol, conn, ssl=self.tls))
            task.add_done_callback(_connected)

    def _resume(self) -> None:
        self._retry = None
        if self.sock.fileno() != -1:
            self.loop.add_reader(self.sock.fileno(), self._accept)

    def close(self) -> None:
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        if self.sock.fileno() != -1:
            self.loop.remove_reader(self.sock.fileno())
            self.sock.close()


def _connected(task: "asyncio.Future[Any]") -> None:
    """A failed TLS handshake (or a client gone before it) is the client's business: a debug line."""
    if not task.cancelled() and task.exception() is not None:
        log.debug("connection not set up: %s", task.exception())
