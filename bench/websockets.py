#!/usr/bin/env python3
"""Memory of 1,000 idle authenticated WebSockets through one gateway process.

    python bench/websockets.py [--connections 1000] [--idle 5] [--limit-mb 150]

What it does (see bench/README.md, "WebSockets"):

1. starts, on 127.0.0.1 and free ports, a WebSocket echo upstream (a small Tornado
   app, CPU 1) and one ``gateway serve`` process (CPU 0, open-files limit raised to
   8192) with an HS256 token issuer and a route ``/ws`` with ``auth: token``;
2. a client process (CPU 1; asyncio + ``tornado.websocket.websocket_connect``) opens
   one warm-up WebSocket and closes it, then opens ``--connections`` WebSockets
   through the gateway, each with ``Authorization: Bearer <HS256 token>``, and sends
   one message on each, which must come back (the upstream echoes it);
3. leaves them idle ``--idle`` seconds and reads the gateway's VmRSS and VmHWM from
   /proc/PID/status: RSS before the connections (after the warm-up), with every
   connection open and idle, the peak, the per-connection cost, and RSS after they close;
4. PASS when the idle RSS is under ``--limit-mb`` MB (10^6 bytes) and every connection
   opened and relayed; exit status 0 on PASS, 1 otherwise; ``--rounds N`` repeats the
   open/idle/close cycle N times on the same gateway process (each round must pass);
5. stops every process it started, by PID, and removes its temporary directory.

Results are also written to bench/results/websockets.json.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import resource
import select
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Dict, Optional

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run as bench  # noqa: E402  (bench/run.py: process handling, ports, /proc readers)

UPSTREAM_CPU = bench.CLIENT_CPU  # the echo upstream and the client
GATEWAY_CPU = bench.GATEWAY_CPU
NOFILE = 8192  # open-files limit given to the gateway, the upstream and the client
WS_ISSUER = "bench-ws"

ECHO_UPSTREAM = r'''
"""WebSocket echo upstream for bench/websockets.py."""
import asyncio, sys
import tornado.web, tornado.websocket

class Echo(tornado.websocket.WebSocketHandler):
    def check_origin(self, origin):
        return True
    def on_message(self, message):
        self.write_message(message, binary=isinstance(message, bytes))

async def main():
    app = tornado.web.Application([(r".*", Echo)])
    app.listen(int(sys.argv[1]), address="127.0.0.1", backlog=4096)
    print("ready", flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
'''

CLIENT = r'''
"""WebSocket client for bench/websockets.py: one process, asyncio + tornado.websocket.

Protocol on stdin/stdout, one JSON object per line: after the warm-up connection it
prints {"phase": "warm"} and waits for a command; on "open" it opens COUNT connections,
sends one message on each, awaits the echo, prints {"phase": "open", ...} and waits for
"close"; it closes them all, prints {"phase": "closed", ...} and waits for the next
command; anything else (or end of input) makes it exit.
"""
import asyncio, json, resource, sys, time
from tornado.httpclient import HTTPRequest
from tornado.websocket import websocket_connect

url, token, count, concurrency, nofile = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
try:
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, nofile), max(hard, nofile)))
except (ValueError, OSError):
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

def say(**kw):
    print(json.dumps(kw), flush=True)

async def line():
    return (await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)).strip()

async def one(i, sem, errors):
    async with sem:
        try:
            req = HTTPRequest(url, headers={"Authorization": "Bearer " + token},
                              connect_timeout=30, request_timeout=60)
            conn = await websocket_connect(req, ping_interval=None)
            text = f"hello {i}"
            await conn.write_message(text)
            echo = await asyncio.wait_for(conn.read_message(), 30)
            if echo != text:
                errors.append(f"{i}: echo {echo!r}")
                conn.close()
                return None
            return conn
        except Exception as exc:
            errors.append(f"{i}: {type(exc).__name__}: {exc}")
            return None

async def main():
    errors = []
    warm = await one(-1, asyncio.Semaphore(1), errors)
    if warm is not None:
        warm.close()
        await asyncio.sleep(0.5)
    say(phase="warm", ok=warm is not None, errors=errors[:5], nofile=resource.getrlimit(resource.RLIMIT_NOFILE)[0])
    while await line() == "open":
        errors = []
        sem = asyncio.Semaphore(concurrency)
        t0 = time.monotonic()
        conns = await asyncio.gather(*(one(i, sem, errors) for i in range(count)))
        conns = [c for c in conns if c is not None]
        say(phase="open", opened=len(conns), failed=count - len(conns), seconds=time.monotonic() - t0, errors=errors[:10])
        if await line() != "close":
            return
        for c in conns:
            c.close()
        await asyncio.sleep(1.0)
        say(phase="closed", closed=len(conns))

asyncio.run(main())
'''


def raise_nofile() -> None:
    """preexec_fn: raise the open-files limit of the child (and so of what it execs)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, NOFILE), max(hard, NOFILE)))
    except (ValueError, OSError):  # not allowed to raise the hard limit: go as high as it is
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def nofile_of(pid: int) -> Optional[int]:
    try:
        with open(f"/proc/{pid}/limits") as fh:
            for line in fh:
                if line.startswith("Max open files"):
                    return int(line.split()[3])
    except (OSError, ValueError, IndexError):
        pass
    return None


def fd_count(pid: int) -> Optional[int]:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def write_routes(tmp: str, gw_port: int, upstream_port: int) -> str:
    text = f"""\
# Written by bench/websockets.py; removed with its temporary directory.
server:
  listen: 127.0.0.1:{gw_port}
  public_url: http://127.0.0.1:{gw_port}
  admin_listen: "off"

session:
  secret: {bench.SESSION_SECRET}

tokens:
  - issuer: {WS_ISSUER}
    secret: {bench.HS_SECRET}
    algorithms: [HS256]
    audience: any

routes:
  - name: ws
    path: /ws
    upstream: http://127.0.0.1:{upstream_port}
    auth: token
"""
    path = os.path.join(tmp, "routes.yaml")
    with open(path, "w") as fh:
        fh.write(text)
    return path


def mint_token() -> str:
    import jwt

    now = int(time.time())
    return jwt.encode({"iss": WS_ISSUER, "aud": "bench", "sub": "bench-user", "email": "bench@example.com",
                       "iat": now, "nbf": now - 5, "exp": now + 3600}, bench.HS_SECRET, algorithm="HS256")


def read_line(proc: subprocess.Popen, timeout: float, what: str) -> Dict[str, object]:
    """The client's next JSON line on stdout, within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"client: no {what!r} line within {timeout:.0f} s")
        ready, _, _ = select.select([proc.stdout], [], [], min(left, 1.0))
        if ready:
            line = proc.stdout.readline()
            if not line:
                raise RuntimeError(f"client exited (status {proc.poll()}) before {what!r}")
            return json.loads(line)
        if proc.poll() is not None:
            raise RuntimeError(f"client exited with status {proc.returncode} before {what!r}")


def send(proc: subprocess.Popen, word: str) -> None:
    proc.stdin.write(word + "\n")
    proc.stdin.flush()


def mb(v: Optional[int]) -> str:
    return bench.mb(v)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--connections", type=int, default=1000, help="WebSockets to open (default 1000)")
    ap.add_argument("--idle", type=float, default=5.0, help="seconds idle before RSS is read (default 5)")
    ap.add_argument("--limit-mb", type=float, default=150.0, help="RSS limit with every connection open, MB (default 150)")
    ap.add_argument("--rounds", type=int, default=1,
                    help="open/idle/close cycles on the same gateway process (default 1; 2+ shows whether memory is reused)")
    ap.add_argument("--concurrency", type=int, default=100, help="handshakes in flight at once in the client (default 100)")
    ap.add_argument("--output", default=os.path.join(bench.RESULTS_DIR, "websockets.json"), help="where to write the JSON results")
    args = ap.parse_args(argv)
    if shutil.which("taskset") is None:
        print("missing: taskset (apt-get install -y util-linux)", file=sys.stderr)
        return 2
    limit = args.limit_mb * 1e6
    n = args.connections

    procs = bench.Processes()
    tmp = tempfile.mkdtemp(prefix="gateway-bench-ws-")
    results: Dict[str, object] = {
        "time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "cpu_model": bench.cpu_model()},
        "settings": {"connections": n, "idle_s": args.idle, "limit_bytes": limit, "concurrency": args.concurrency,
                     "rounds": args.rounds,
                     "gateway_cpu": GATEWAY_CPU, "upstream_and_client_cpu": UPSTREAM_CPU},
    }
    exit_code = 1
    client = None
    try:
        up_port, gw_port = bench.free_port(), bench.free_port()
        bench.log(f"temp dir {tmp}")
        script = os.path.join(tmp, "echo_upstream.py")
        with open(script, "w") as fh:
            fh.write(ECHO_UPSTREAM)
        up_log = os.path.join(tmp, "echo_upstream.log")
        upstream = procs.start(["taskset", "-c", UPSTREAM_CPU, sys.executable, script, str(up_port)],
                               stdout=subprocess.DEVNULL, stderr=open(up_log, "w"), preexec_fn=raise_nofile)
        if not bench.wait_port(up_port, 15, upstream):
            raise RuntimeError(f"echo upstream did not start:\n{bench.tail(up_log)}")
        bench.log(f"echo upstream on :{up_port} (CPU {UPSTREAM_CPU}, pid {upstream.pid})")

        routes = write_routes(tmp, gw_port, up_port)
        bench.check_gateway_config(routes)
        gw, gw_log = bench.start_gateway(procs, tmp, routes, gw_port, "ws", cpus=GATEWAY_CPU, preexec_fn=raise_nofile)
        gw_nofile = nofile_of(gw.pid)
        results["gateway_nofile"] = gw_nofile
        bench.log(f"gateway on :{gw_port} (CPU {GATEWAY_CPU}, pid {gw.pid}, open-files limit {gw_nofile})")
        need = 2 * n + 64  # one socket to the client and one to the upstream per WebSocket
        if gw_nofile is not None and gw_nofile < need:
            hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
            raise RuntimeError(f"the gateway's open-files limit is {gw_nofile}; {n} WebSockets need about {need}, and "
                               f"the hard limit ({hard}) could not be raised to {NOFILE} (needs root with "
                               f"CAP_SYS_RESOURCE): run it from a shell where `ulimit -Hn` is at least {need}, "
                               f"or with fewer --connections")
        time.sleep(1.0)
        results["rss_at_start_bytes"] = bench.read_status(gw.pid).get("VmRSS")

        token = mint_token()
        client_script = os.path.join(tmp, "ws_client.py")
        with open(client_script, "w") as fh:
            fh.write(CLIENT)
        client_log = os.path.join(tmp, "ws_client.log")
        client = procs.start(
            ["taskset", "-c", UPSTREAM_CPU, sys.executable, client_script, f"ws://127.0.0.1:{gw_port}/ws/echo",
             token, str(n), str(args.concurrency), str(NOFILE)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=open(client_log, "w"), text=True,
        )
        warm = read_line(client, 60, "warm")
        if not warm.get("ok"):
            raise RuntimeError(f"warm-up WebSocket failed: {warm.get('errors')}\ngateway log:\n{bench.tail(gw_log)}")
        results["client_nofile"] = warm.get("nofile")
        time.sleep(1.0)
        before = bench.read_status(gw.pid)
        results["rss_before_bytes"] = before.get("VmRSS")
        results["fds_before"] = fd_count(gw.pid)
        hwm_reset = bench.reset_hwm(gw.pid)
        bench.log(f"gateway RSS {mb(before.get('VmRSS'))} after one warm-up WebSocket; opening {n}")

        rounds = []
        for rnd in range(args.rounds):
            if rnd:
                bench.reset_hwm(gw.pid)
            send(client, "open")
            opened = read_line(client, 300, "open")
            bench.log(f"round {rnd + 1}: {opened['opened']} WebSockets open and echoed in {opened['seconds']:.1f} s"
                      + (f", {opened['failed']} failed: {opened['errors'][:3]}" if opened["failed"] else "")
                      + f"; idle {args.idle:.0f} s")
            time.sleep(args.idle)
            idle = bench.read_status(gw.pid)
            r: Dict[str, object] = {
                "client_open": opened,
                "rss_idle_bytes": idle.get("VmRSS"),
                "vmhwm_bytes": idle.get("VmHWM") if hwm_reset else None,
                "fds_idle": fd_count(gw.pid),
                "upstream_fds_idle": fd_count(upstream.pid),
                "upstream_rss_idle_bytes": bench.read_status(upstream.pid).get("VmRSS"),
                "gateway_alive": gw.poll() is None,
            }
            send(client, "close")
            r["client_closed"] = read_line(client, 120, "closed")
            time.sleep(2.0)
            r["rss_after_close_bytes"] = bench.read_status(gw.pid).get("VmRSS")
            r["fds_after_close"] = fd_count(gw.pid)
            rss_b, rss_i = results["rss_before_bytes"], r["rss_idle_bytes"]
            r["per_connection_bytes"] = (rss_i - rss_b) / max(1, opened["opened"]) if rss_b and rss_i else None
            r["pass"] = bool(rss_i) and rss_i < limit and opened["opened"] == n and r["gateway_alive"]
            rounds.append(r)
            if not r["gateway_alive"]:
                break
        results["rounds"] = rounds
        client.stdin.close()
        client.wait(timeout=30)
        results["gateway_log_tail"] = bench.tail(gw_log, 20)
        passed = bool(rounds) and all(r["pass"] for r in rounds) and len(rounds) == args.rounds
        results["pass"] = passed

        def row(label: str, value: str) -> None:
            print(f"  {label:<34} {value}")

        print()
        print(f"{n} idle authenticated WebSockets through one gateway process (HS256 bearer token, "
              f"echo upstream; gateway on CPU {GATEWAY_CPU}, client and upstream on CPU {UPSTREAM_CPU}):")
        row("gateway open-files limit", str(gw_nofile))
        row("RSS at start", mb(results["rss_at_start_bytes"]))
        row("RSS before the connections", f"{mb(results['rss_before_bytes'])}  (after one warm-up WebSocket; "
            f"{results['fds_before']} fds)")
        for i, r in enumerate(rounds):
            o = r["client_open"]
            tag = f"round {i + 1}: " if len(rounds) > 1 else ""
            per = r["per_connection_bytes"]
            row(f"{tag}opened and echoed", f"{o['opened']} of {n} in {o['seconds']:.1f} s"
                + (f" ({o['failed']} failed: {o['errors'][:2]})" if o["failed"] else ""))
            row(f"{tag}RSS with {n} idle ({args.idle:.0f} s)", f"{mb(r['rss_idle_bytes'])}  "
                f"({r['fds_idle']} fds in the gateway)")
            row(f"{tag}peak RSS (VmHWM)", mb(r["vmhwm_bytes"]))
            row(f"{tag}per connection", "-" if per is None else f"{per / 1e3:.1f} kB  ((idle RSS - RSS before) / {o['opened']})")
            row(f"{tag}RSS after closing them", f"{mb(r['rss_after_close_bytes'])}  ({r['fds_after_close']} fds)")
        if rounds:
            row("(echo upstream, for comparison)", f"{mb(rounds[0]['upstream_rss_idle_bytes'])} with "
                f"{rounds[0]['upstream_fds_idle']} fds")
        print()
        for i, r in enumerate(rounds):
            o = r["client_open"]
            tag = f" (round {i + 1})" if len(rounds) > 1 else ""
            print(f"{'PASS' if r['pass'] else 'FAIL'}  gateway RSS < {args.limit_mb:.0f} MB with {n} idle WebSockets{tag}: "
                  f"{mb(r['rss_idle_bytes'])}" + ("" if o["opened"] == n else f"; only {o['opened']} of {n} opened and relayed")
                  + ("" if r["gateway_alive"] else "; the gateway exited"))
        exit_code = 0 if passed else 1
    except KeyboardInterrupt:
        bench.log("interrupted")
        exit_code = 130
    except Exception as exc:  # noqa: BLE001
        bench.log(f"error: {exc}")
        results["error"] = str(exc)
        exit_code = 1
    finally:
        if client is not None and client.stdin and not client.stdin.closed:
            try:
                client.stdin.close()
            except OSError:
                pass
        procs.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w") as fh:
        json.dump(results, fh, indent=2)
    bench.log(f"results written to {os.path.relpath(args.output)}")
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
