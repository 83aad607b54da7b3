"""A running ``gateway serve``: listeners, reload, drain, signals and workers.

The process lifecycle around the proxy: bind the proxy and admin sockets
(with ``server.max_connections`` enforced at accept), build the ``Gateway``,
reload the config on SIGHUP or a change of the file (a new ``Runtime`` for
new requests, the old one kept for those in flight), and on SIGTERM stop
accepting, let requests finish within ``shutdown_grace``, then cut the rest
with 503. ``cli`` calls ``serve``; the demo runs a ``Server`` of its own.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import socket
import ssl
import sys
from dataclasses import replace
from typing import Any, Callable, Optional

from tornado import netutil
from tornado.httpserver import HTTPServer

from .admin import make_admin_app
from .app import make_app
from .config import Config, ConfigError
from .config import load, parse_listen
from .runtime import Gateway
from .revocations import ENV_FILE as REVOCATIONS_FILE
from .signing import prepare as prepare_signing
from .telemetry import enable_multiprocess, use_log_format

log = logging.getLogger("gateway")

RELOAD_POLL_SECONDS = 2.0


def serve(path: str, listen: Optional[str] = None, admin_listen: Optional[str] = None) -> int:
    """``gateway serve``: load, bind, then run one process or supervise the workers; the exit status."""
    try:
        from_file = load(path)
        config = _override_listen(from_file, listen, admin_listen)
    except ConfigError as exc:
        for line in exc.errors:
            print(line, file=sys.stderr)
        return 1
    use_log_format(config.server.log_format)
    for warning in config.warnings:
        log.warning("%s", warning)
    prepare_signing(config)  # an ephemeral key is made now, before workers fork, so they all sign with it
    server = config.server
    try:
        sockets = bind(server.listen, reuse_port=server.workers > 1 and server.reuse_port)
    except OSError as exc:
        return _cannot_listen(path, "--listen" if listen else "server.listen", server.listen, exc)
    admin_sockets = None
    if server.admin_listen is not None:
        try:
            admin_sockets = bind(server.admin_listen)
        except OSError as exc:
            for sock in sockets:
                sock.close()
            return _cannot_listen(path, "--admin-listen" if admin_listen else "server.admin_listen",
                                  server.admin_listen, exc)
    if config.server.workers <= 1:
        return run(Server(config, path, sockets, admin_sockets, file_config=from_file).serve)
    # Several workers: metrics go through prometheus-client's multiprocess files, merged on /metrics.
    import tempfile

    from .workers import supervise

    metrics_dir = tempfile.mkdtemp(prefix="gateway-metrics-")
    enable_multiprocess(metrics_dir)
    # Ended sessions reach every worker through one append-only file (gateway.revocations).
    os.environ[REVOCATIONS_FILE] = os.path.join(metrics_dir, "revocations")

    def on_exit(pid: int) -> None:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid, metrics_dir)

    # With server.reuse_port each worker listens on a socket of its own (SO_REUSEPORT), so the kernel
    # spreads new connections evenly; with one shared socket (the default) whichever worker wakes
    # first takes a whole burst, but connections waiting to be accepted survive a worker's crash.
    host, port = config.server.listen[0], sockets[0].getsockname()[1]
    own_sockets = config.server.reuse_port and _reuse_port_supported(host, port)
    if own_sockets:
        for sock in sockets:
            sock.close()

    def worker(index: int) -> int:
        # A restarted worker reads the file as it is now (it may have been reloaded since start).
        worker_sockets = sockets
        if own_sockets:
            worker_sockets = netutil.bind_sockets(port, address=host, backlog=1024, reuse_port=True)
        current_file, current = from_file, config
        try:
            current_file = load(path)
            current = _override_listen(current_file, listen, admin_listen)
        except ConfigError as exc:
            log.error("worker %d: %s is invalid now; starting with the last good config:\n  %s",
                      index, path, "\n  ".join(exc.errors))
        return run(Server(current, path, worker_sockets, admin_sockets, worker=index,
                          file_config=current_file).serve)

    try:
        return supervise(config.server.workers, worker, on_exit)
    finally:
        import shutil

        shutil.rmtree(metrics_dir, ignore_errors=True)


def run(coro_factory: Callable[[], "asyncio.Future[int] | object"]) -> int:
    """Run on uvloop when it is installed, else the default asyncio loop."""
    loop_factory = None
    try:
        import uvloop

        loop_factory = uvloop.new_event_loop
    except ImportError:  # pragma: no cover
        pass
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(coro_factory())  # type: ignore[arg-type]


def _override_listen(config: Config, listen: Optional[str], admin_listen: Optional[str]) -> Config:
    server = config.server
    errors = []
    if listen:
        try:
            server = replace(server, listen=parse_listen(listen))
        except ValueError as exc:
            errors.append(f"--listen: {exc}")
    if admin_listen:
        try:
            server = replace(server, admin_listen=None if admin_listen == "off" else parse_listen(admin_listen))
        except ValueError as exc:
            errors.append(f"--admin-listen: {exc}")
    if errors:
        raise ConfigError(errors)
    return replace(config, server=server)


def _reuse_port_supported(host: str, port: int) -> bool:
    """Whether workers can each bind (host, port) with SO_REUSEPORT next to the parent's socket."""
    try:
        probe = netutil.bind_sockets(port, address=host, reuse_port=True)
    except (OSError, ValueError):
        return False
    for sock in probe:
        sock.close()
    return True


def bind(address: tuple[str, int], reuse_port: bool = False) -> list[socket.socket]:
    if reuse_port:
        try:
            return netutil.bind_sockets(address[1], address=address[0], backlog=1024, reuse_port=True)
        except ValueError:  # the platform has no SO_REUSEPORT: the workers share one socket
            pass
    return netutil.bind_sockets(address[1], address=address[0], backlog=1024)


def _cannot_listen(path: str, key: str, address: tuple, exc: OSError) -> int:
    host, port = address[0], address[1]
    shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    print(f"{path}: cannot listen on {shown} ({key}): {exc.strerror or exc}", file=sys.stderr)
    return 1


def tls_context(tls: Any) -> ssl.SSLContext:
    """HTTPS for the proxy port: TLS 1.2 at least, the certificate chain and key of server.tls."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(tls.cert, tls.key)
    context.set_alpn_protocols(["http/1.1"])
    return context


def url_of(sockets: list[socket.socket], scheme: str = "http") -> str:
    host, port = sockets[0].getsockname()[:2]
    return f"{scheme}://{'[' + host + ']' if ':' in host else host}:{port}"


class CappedHTTPServer(HTTPServer):
    """An HTTPServer that answers 503 and closes when ``max_connections`` are already open."""

    def initialize(self, *args: Any, max_connections: int = 0, **kwargs: Any) -> None:  # type: ignore[override]
        self.max_connections = max_connections
        super().initialize(*args, **kwargs)

    def handle_stream(self, stream: Any, address: tuple) -> None:
        if self.max_connections and len(self._connections) >= self.max_connections:
            log.warning("connection from %s refused: %d connections open (server.max_connections)",
                        address[0] if address else "?", len(self._connections))
            stream.write(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\n"
                         b"Content-Length: 20\r\nRetry-After: 1\r\nConnection: close\r\n\r\n"
                         b"too many connections").add_done_callback(lambda _f: stream.close())
            return
        super().handle_stream(stream, address)


class Server:
    """A running `gateway serve`: the two listeners, reload on SIGHUP or file change, drain on SIGTERM."""

    def __init__(self, config: Config, path: str, sockets: Optional[list[socket.socket]] = None,
                 admin_sockets: Optional[list[socket.socket]] = None, worker: Optional[int] = None,
                 file_config: Optional[Config] = None, on_listening: Optional[Callable[[], None]] = None):
        self.config = config
        self.on_listening = on_listening
        # What the file said (before --listen overrides), to tell a real change of address on reload.
        self.file_server = (file_config or config).server
        self.path = path
        self.sockets = sockets
        self.admin_sockets = admin_sockets
        self.worker = worker
        self.stopping: Optional[asyncio.Event] = None
        self._stat = _stamps(path, config)

    async def serve(self) -> int:
        self.stopping = asyncio.Event()
        self.gateway = gateway = Gateway(self.config, log_stream=sys.stdout)
        await gateway.start()
        # Everything built so far (modules, config, route table) lives as long as the process: keep it out
        # of the collector's generations, so a full collection walks only what requests allocate.
        gc.freeze()
        # Requests allocate many short-lived objects: collect the young generation every 20,000
        # allocations rather than every 700 (a few requests), which costs CPU and tail latency.
        gc.set_threshold(20_000, 20, 20)
        server = self.config.server
        # Tornado has one timer for "waiting for the next request head"; the fast delegate keeps the idle
        # and the header timeouts apart (fastpath.HeadWatch), so Tornado's is only the backstop.
        self.tls = tls_context(server.tls) if server.tls is not None else None
        sockets = self.sockets or bind(self.config.server.listen)
        if server.http_engine == "httptools":
            from .http1 import EngineServer

            def timeouts() -> tuple[float, float]:
                live = gateway.runtime.config.server
                return live.idle_timeout, live.header_timeout

            self.http_server = EngineServer(make_app(gateway), max_header_size=server.max_header_size,
                                            max_connections=server.max_connections, tls=self.tls,
                                            timeouts=timeouts)
            await self.http_server.add_sockets(sockets)
        else:
            self.http_server = CappedHTTPServer(
                make_app(gateway), xheaders=False, max_body_size=1 << 62, max_header_size=server.max_header_size,
                idle_connection_timeout=server.idle_timeout + server.header_timeout, body_timeout=None,
                max_connections=server.max_connections, ssl_options=self.tls,
            )
            self.http_server.add_sockets(sockets)
        admin_url = "off"
        self.admin_server: Optional[HTTPServer] = None
        if self.config.server.admin_listen is not None:
            self.admin_server = HTTPServer(make_admin_app(gateway))
            admin_sockets = self.admin_sockets or bind(self.config.server.admin_listen)
            self.admin_server.add_sockets(admin_sockets)
            admin_url = url_of(admin_sockets)
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(self.reload("SIGHUP")))
        loop.add_signal_handler(signal.SIGTERM, self.stopping.set)
        loop.add_signal_handler(signal.SIGINT, self.stopping.set)
        watcher = asyncio.ensure_future(self._watch_file())
        who = f" [worker {self.worker}]" if self.worker is not None else ""
        log.info("gateway listening on %s (admin: %s, config: %s)%s", url_of(sockets, "https" if self.tls else "http"),
                 admin_url, self.path, who)
        if self.on_listening is not None:
            self.on_listening()
        await self.stopping.wait()
        watcher.cancel()
        await self._drain()
        return 0

    async def reload(self, why: str) -> None:
        gateway = self.gateway
        try:
            config = _override_listen(load(self.path), None, None)
        except ConfigError as exc:
            gateway.metrics.count_reload("error")
            log.error("config reload (%s) failed; keeping the running config:\n  %s", why, "\n  ".join(exc.errors))
            return
        except Exception as exc:  # never let a reload take the process down
            gateway.metrics.count_reload("error")
            log.error("config reload (%s) failed; keeping the running config: %s", why, exc)
            return
        new_server = config.server
        if (new_server.listen, new_server.admin_listen) != (self.file_server.listen, self.file_server.admin_listen):
            log.warning("listen addresses changed in %s: restart the gateway for them to take effect", self.path)
        if new_server.workers != self.file_server.workers:
            log.warning("server.workers changed in %s: restart the gateway for it to take effect", self.path)
        if new_server.http_engine != self.file_server.http_engine:
            log.warning("server.http_engine changed in %s: restart the gateway for it to take effect", self.path)
        if (new_server.tls is None) != (self.tls is None):
            log.warning("server.tls was turned %s in %s: restart the gateway for it to take effect",
                        "on" if new_server.tls else "off", self.path)
        elif new_server.tls is not None and self.tls is not None:
            try:  # new handshakes get the new certificate; open connections keep theirs
                self.tls.load_cert_chain(new_server.tls.cert, new_server.tls.key)
            except (OSError, ssl.SSLError) as exc:
                log.error("server.tls: the new certificate or key cannot be used (%s); keeping the old one", exc)
        self.file_server = new_server
        config = replace(config, server=replace(new_server, listen=self.config.server.listen,
                                                admin_listen=self.config.server.admin_listen))
        runtime = gateway.new_runtime(config)
        await runtime.start()
        old, gateway.runtime = gateway.runtime, runtime
        self.config = config
        self._stat = _stamps(self.path, config)  # the watcher must not load these same files again
        gateway.metrics.count_reload("ok")
        log.info("config reloaded (%s): %d routes", why, len(config.routes))
        asyncio.get_running_loop().call_later(
            self.config.server.shutdown_grace, lambda: asyncio.ensure_future(old.close())
        )

    async def _watch_file(self) -> None:
        while True:
            await asyncio.sleep(RELOAD_POLL_SECONDS)
            stamp = _stamps(self.path, self.config)
            if stamp != self._stat:
                self._stat = stamp
                await self.reload("file changed")

    async def _drain(self) -> None:
        """Stop accepting, let in-flight requests finish within the grace period, then close."""
        self.http_server.stop()
        if self.admin_server is not None:
            self.admin_server.stop()
        self.gateway.close_websockets(1001, "gateway shutting down")
        grace = self.config.server.shutdown_grace
        log.info("shutting down: waiting up to %.0fs for in-flight requests", grace)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while (self.gateway.active or self.gateway.websockets) and loop.time() < deadline:
            await asyncio.sleep(0.05)
        if self.gateway.active:
            log.warning("shutdown grace over: cutting %d request(s)", len(self.gateway.active))
            for handler in list(self.gateway.active):
                handler.cut_for_shutdown()
            await asyncio.sleep(0.1)  # let the 503s reach their clients
        await self.gateway.close()
        log.info("gateway stopped")


def _stamps(path: str, config: Config) -> tuple:
    """routes.yaml and every TLS file it names: a change of any is a reload."""
    files = [path]
    if config.server.tls is not None:
        files += [config.server.tls.cert, config.server.tls.key]
    for route in config.routes:
        if route.tls is not None:
            files += [f for f in (route.tls.ca, route.tls.cert, route.tls.key) if f]
    return tuple(_file_stamp(f) for f in dict.fromkeys(files))


def _file_stamp(path: str) -> Optional[tuple[float, int]]:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime, st.st_size)
