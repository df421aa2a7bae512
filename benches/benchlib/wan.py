"""The WAN scenario: hyperfill copy with the source behind a delaying proxy
(wanproxy.py, a separate process on loopback), at several round-trip times,
against the same copy with the source reached directly, in the same run.

Per cell: wall time, WAN/LAN ratio (the direct run of the same repetition
and parallelism is the LAN), the workers hyperfill chose (`auto` = no
--parallelism), source round trips per task counted by the proxy (every
client->server burst that follows server->client traffic, so pipelined
statements count once; connection start-up included), peak RSS.
The 0 ms row goes through the proxy without delay: it shows what the proxy
itself costs."""

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time

from .common import HERE, ROOT, die, log

PROXY_PY = os.path.join(HERE, "benchlib", "wanproxy.py")
# The same proxy in Rust (benches/wanproxy/main.rs; run.sh builds it with
# `cargo build --release --example wanproxy`): a Python proxy costs the
# servers' two cores enough CPU to inflate every WAN time.
PROXY_RS = os.path.join(ROOT, "target", "release", "examples", "wanproxy")


def proxy_command():
    """The Rust proxy when it is built, else the Python one (said loudly)."""
    if os.access(PROXY_RS, os.X_OK):
        return [PROXY_RS]
    log(f"NOTE: {PROXY_RS} is not built (cargo build --release --example wanproxy); using the "
        "Python proxy, whose own CPU inflates the WAN times (see the 0 ms row)")
    return [sys.executable, PROXY_PY]


class Proxy:
    """wanproxy.py in front of `target` (host:port) with `rtt_ms`."""

    def __init__(self, target, rtt_ms):
        self.target, self.rtt_ms = target, rtt_ms
        self.stats = None

    def __enter__(self):
        fd, self.port_file = tempfile.mkstemp(prefix="hfbench-proxy-port.")
        os.close(fd)
        os.unlink(self.port_file)
        fd, self.stats_file = tempfile.mkstemp(prefix="hfbench-proxy-stats.")
        os.close(fd)
        self.proc = subprocess.Popen(
            proxy_command() + ["--to", self.target, "--rtt-ms", str(self.rtt_ms),
             "--port-file", self.port_file, "--stats-file", self.stats_file])
        deadline = time.monotonic() + 10
        while not (os.path.exists(self.port_file) and open(self.port_file).read().strip()):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                die("the WAN proxy did not start")
            time.sleep(0.05)
        self.port = int(open(self.port_file).read())
        return self

    def __exit__(self, *exc):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        try:
            with open(self.stats_file) as f:
                self.stats = json.load(f)
        except (OSError, ValueError):
            self.stats = None
        for f in (self.port_file, self.stats_file):
            try:
                os.unlink(f)
            except OSError:
                pass
        return False


def host_port(url):
    m = re.match(r"^[a-z]+://(?:[^@/]*@)?([^:/?]+):(\d+)", url)
    if not m:
        die(f"cannot find host:port in {url}")
    return m.group(1), int(m.group(2))


def with_port(url, port):
    return re.sub(r"^([a-z]+://(?:[^@/]*@)?[^:/?]+):\d+", lambda m: f"{m.group(1)}:{port}", url, count=1)


def workers_from_log(path):
    try:
        with open(path) as f:
            m = re.search(r"with (\d+) worker", f.read())
        return int(m.group(1)) if m else None
    except OSError:
        return None


def run_wan(runner, args, scenario, src_db, tgt_db, facts, results, rep):
    """One repetition of the WAN cells of a scenario; appends to results."""
    host, port = host_port(runner.src.url(src_db))
    # timescaledb-backfill too when given (P "auto" is its own default), in
    # the opposite order every other repetition (see bench.py).
    tools = [("hyperfill", args.hyperfill_bin)]
    if args.backfill_bin:
        tools.append(("backfill", args.backfill_bin))
    if rep % 2 == 0:
        tools.reverse()
    for p in args.wan_parallelism.split(","):
        p = p.strip()
        for rtt in [None] + [float(x) for x in args.wan_rtt.split(",")]:
            label = "lan" if rtt is None else f"wan{rtt:g}"
            for tool, binary in tools:
                if rtt is None:
                    r = runner.tool_run(tool, binary, scenario, src_db, tgt_db, p, rep, tag_extra=label)
                    stats = None
                else:
                    with Proxy(f"{host}:{port}", rtt) as proxy:
                        url = with_port(runner.src.url(src_db), proxy.port)
                        r = runner.tool_run(tool, binary, scenario, src_db, tgt_db, p, rep,
                                            source_url=url, tag_extra=label)
                    stats = proxy.stats
                runner.check_target(facts["rows"], tgt_db, f"{scenario} {tool} P={p} {label}")
                # timescaledb-backfill's queue is not read: one task per chunk.
                r.setdefault("tasks", facts["chunks"])
                r.update(wan=True, rtt_ms=rtt, proxy=stats,
                         workers=workers_from_log(r.get("copy_log", "")) if tool == "hyperfill" else None)
                results.append(r)
                trips = ""
                if stats and r.get("tasks"):
                    trips = f", {stats['round_trips'] / r['tasks']:.2f} source round trips/task"
                log(f"{scenario} {tool} P={p} {label}: {r['wall_s']:.2f}s wall, {r.get('workers')} workers, "
                    f"{r['client_rss_kib'] / 1024:.1f} MiB peak RSS{trips}")


def wan_table(results):
    """Markdown rows of the WAN table: median over repetitions."""
    cells = {}
    for r in results:
        if not r.get("wan"):
            continue
        cells.setdefault((r["scenario"], r["tool"], str(r["p"]), r["rtt_ms"]), []).append(r)

    def med(xs):
        xs = sorted(x for x in xs if x is not None)
        return None if not xs else xs[len(xs) // 2] if len(xs) % 2 else (xs[len(xs) // 2 - 1] + xs[len(xs) // 2]) / 2

    lines = ["| scenario | tool | P | source RTT | wall s | WAN / LAN | workers | source round trips / task | "
             "source connections | peak RSS MiB | backfill / hyperfill |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    keys = sorted(cells, key=lambda k: (k[0], k[1] != "hyperfill", k[1], k[2], -1 if k[3] is None else k[3]))
    for sc, tool, p, rtt in keys:
        rs = cells[(sc, tool, p, rtt)]
        lan = cells.get((sc, tool, p, None), [])
        # against hyperfill in the same cell, per repetition
        versus = []
        if tool == "backfill":
            for r in rs:
                hf = [h for h in cells.get((sc, "hyperfill", p, rtt), []) if h["rep"] == r["rep"]]
                if hf:
                    versus.append(r["wall_s"] / hf[0]["wall_s"])
        # ratio per repetition (same run), then the median
        ratios = []
        for r in rs:
            same = [l for l in lan if l["rep"] == r["rep"]]
            if same:
                ratios.append(r["wall_s"] / same[0]["wall_s"])
        wall = med([r["wall_s"] for r in rs])
        ratio = med(ratios) if rtt is not None else 1.0
        trips = med([r["proxy"]["round_trips"] / r["tasks"] for r in rs if r.get("proxy") and r.get("tasks")])
        conns = med([r["proxy"]["connections"] for r in rs if r.get("proxy")])
        rss = max(r["client_rss_kib"] for r in rs) / 1024
        workers = med([r.get("workers") for r in rs])
        vs = med(versus)
        lines.append(
            f"| {sc} | {tool} | {p} | {'LAN' if rtt is None else f'{rtt:g} ms'} | {wall:.2f} | "
            f"{'' if ratio is None else f'**{ratio:.2f}**'} | {'' if workers is None else f'{workers:g}'} | "
            f"{'' if trips is None else f'{trips:.2f}'} | {'' if conns is None else f'{conns:g}'} | {rss:.1f} | "
            f"{'' if vs is None else f'{vs:.2f}'} |")
    return "\n".join(lines) if len(lines) > 2 else ""
