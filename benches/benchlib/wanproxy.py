"""A TCP proxy on loopback that delays every byte by half a round-trip time
in each direction: the source link of the WAN scenario.  Standard library
only; run as its own process:

    python3 wanproxy.py --listen 127.0.0.1:0 --to 127.0.0.1:5432 --rtt-ms 50 \
        --port-file P --stats-file S

It prints nothing; the port it listens on goes to --port-file, and on
SIGTERM it writes its counters to --stats-file as JSON:

  connections   accepted client connections
  round_trips   client->server bursts that follow server->client traffic on
                the same connection (or open it): the sequential round trips
                the client waited for, pipelined requests counting once
  bytes_up / bytes_down

Each direction holds at most WINDOW bytes in flight (like a TCP window on a
long fat pipe); the reader waits while that much is queued.
"""

import argparse
import asyncio
import collections
import json
import signal
import time

WINDOW = 16 * 1024 * 1024
READ = 256 * 1024


class Stats:
    def __init__(self):
        self.connections = 0
        self.round_trips = 0
        self.bytes_up = 0
        self.bytes_down = 0

    def as_dict(self):
        return dict(connections=self.connections, round_trips=self.round_trips,
                    bytes_up=self.bytes_up, bytes_down=self.bytes_down)


async def pump(reader, writer, delay, on_data):
    """Copy reader to writer, each piece delivered `delay` seconds after it
    was read."""
    queue = collections.deque()
    queued = 0
    more = asyncio.Event()
    room = asyncio.Event()
    room.set()
    done = False

    async def read_side():
        nonlocal queued, done
        try:
            while True:
                await room.wait()
                data = await reader.read(READ)
                if not data:
                    break
                on_data(len(data))
                queue.append((time.monotonic() + delay, data))
                queued += len(data)
                if queued >= WINDOW:
                    room.clear()
                more.set()
        except (ConnectionError, OSError):
            pass
        finally:
            done = True
            more.set()

    async def write_side():
        nonlocal queued
        try:
            while True:
                while not queue:
                    if done:
                        return
                    more.clear()
                    await more.wait()
                at, data = queue.popleft()
                wait = at - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                writer.write(data)
                queued -= len(data)
                if queued < WINDOW:
                    room.set()
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            try:
                writer.close()
            except Exception:
                pass

    await asyncio.gather(read_side(), write_side())


async def main(args):
    host, port = args.listen.rsplit(":", 1)
    to_host, to_port = args.to.rsplit(":", 1)
    delay = args.rtt_ms / 2000.0
    stats = Stats()

    async def handle(c_reader, c_writer):
        try:
            s_reader, s_writer = await asyncio.open_connection(to_host, int(to_port))
        except OSError:
            c_writer.close()
            return
        stats.connections += 1
        last = {"dir": "down"}  # the client speaks first

        def up(n):
            stats.bytes_up += n
            if last["dir"] == "down":
                stats.round_trips += 1
            last["dir"] = "up"

        def down(n):
            stats.bytes_down += n
            last["dir"] = "down"

        await asyncio.gather(pump(c_reader, s_writer, delay, up),
                             pump(s_reader, c_writer, delay, down))

    server = await asyncio.start_server(handle, host, int(port), limit=READ)
    actual = server.sockets[0].getsockname()[1]
    if args.port_file:
        with open(args.port_file, "w") as f:
            f.write(str(actual))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()
    if args.stats_file:
        with open(args.stats_file, "w") as f:
            json.dump(stats.as_dict(), f)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--listen", default="127.0.0.1:0")
    ap.add_argument("--to", required=True)
    ap.add_argument("--rtt-ms", type=float, default=50)
    ap.add_argument("--port-file")
    ap.add_argument("--stats-file")
    asyncio.run(main(ap.parse_args()))
