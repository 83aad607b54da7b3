#!/usr/bin/env python3
"""Scale figures of one gateway process: memory per route, start-up time, p99 at many connections.

    python bench/scale.py [--routes 10000] [--connections 1000] [--duration 10] [--baseline DIR]

1. starts a gateway with one route, then one with ``--routes`` routes (public, each its own
   path prefix, one upstream), timing from exec to "listening" and reading VmRSS once started:
   (RSS(N) - RSS(1)) / (N - 1) is the memory per route;
2. runs wrk with ``--connections`` connections on a public route of the large gateway (wrk on
   CPU 1, the gateway on CPU 0, the nginx upstream on CPU 1) and reports p50 / p99;
3. with ``--baseline DIR`` (a checkout of an earlier commit, e.g. from ``git worktree add``), does
   the same for that checkout's gateway in the same run, under ``"before"``;
4. stops what it started, by PID, and prints one JSON object.

Uses bench/run.py's helpers (nginx upstream, wrk, process handling).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run as bench  # noqa: E402


def write_many_routes(tmp: str, name: str, count: int, upstream_port: int) -> str:
    lines = ["routes:"]
    for i in range(count):
        lines += [f"  - name: r{i}", f"    path: /r{i}/", f"    upstream: http://127.0.0.1:{upstream_port}",
                  "    auth: public"]
    path = os.path.join(tmp, name)
    with open(path, "w") as fh:
        fh.write("\n".join(lines) + "\n")
    return path


def rss_kb(pid: int) -> int:
    return bench.read_status(pid).get("VmRSS", 0) // 1024


def start_timed(procs: "bench.Processes", tmp: str, routes: str, tag: str, repo: str = bench.REPO) -> tuple:
    port = bench.free_port()
    began = time.monotonic()
    proc, _ = bench.start_gateway(procs, tmp, routes, port, tag, repo=repo)
    started = time.monotonic() - began
    time.sleep(0.5)  # let start-up garbage settle before reading RSS
    return proc, port, started, rss_kb(proc.pid)


def measure(procs: "bench.Processes", tmp: str, one: str, many: str, args: argparse.Namespace, repo: str) -> dict:
    """Start-up, memory per route and wrk at many connections, for the gateway of the checkout ``repo``."""
    small, _, t1, rss1 = start_timed(procs, tmp, one, "scale-1", repo)
    procs.stop(small)
    big, port, tn, rssn = start_timed(procs, tmp, many, "scale-n", repo)
    out = {"start_s_1_route": round(t1, 2), f"start_s_{args.routes}_routes": round(tn, 2),
           "rss_mib_1_route": round(rss1 / 1024, 1), f"rss_mib_{args.routes}_routes": round(rssn / 1024, 1),
           "kib_per_route": round((rssn - rss1) / max(1, args.routes - 1), 2)}
    url = f"http://127.0.0.1:{port}/r{args.routes - 1}/x"
    res = bench.run_wrk(url, args.duration, args.connections, None, 2.0, [big.pid], focus=[big.pid])
    out.update({"rps": round(res["rps"]), "p50_ms": res.get("p50_ms"), "p99_ms": res.get("p99_ms"),
                "non_2xx": res.get("non_2xx"), "socket_errors": res.get("socket_errors"),
                "rss_mib_after_load": round(rss_kb(big.pid) / 1024, 1)})
    procs.stop(big)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--routes", type=int, default=10_000)
    ap.add_argument("--connections", type=int, default=1000)
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--baseline", default="", help="a checkout of an earlier commit, measured the same way in the same "
                                                    "run (its figures under \"before\")")
    args = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, max(soft, 4 * args.connections + 256))
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))  # wrk and the gateway inherit it
    procs = bench.Processes()
    tmp = tempfile.mkdtemp(prefix="gateway-scale-")
    out: dict = {"routes": args.routes, "connections": args.connections}
    try:
        upstream_port = bench.free_port()
        bench.start_nginx(procs, tmp, "upstream", bench.UPSTREAM_BODY.format(port=upstream_port), upstream_port,
                          bench.CLIENT_CPU)
        one = write_many_routes(tmp, "routes-1.yaml", 1, upstream_port)
        many = write_many_routes(tmp, "routes-n.yaml", args.routes, upstream_port)
        out.update(measure(procs, tmp, one, many, args, bench.REPO))
        if args.baseline:
            out["before"] = {"commit": bench.checkout_name(args.baseline),
                             **measure(procs, tmp, one, many, args, args.baseline)}
    finally:
        procs.stop_all()
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
