"""A server process's CPU time per request, for TokenPaks you started yourself (A/B of two builds).

    .venv/bin/python bench/cpu_per_request.py PORT:PID [PORT:PID ...] [--rounds 6]

Each round sends --requests chat completions on --connections keep-alive connections to each
server in turn (the order alternating between rounds, so neither always goes first), after a
warm-up of the same size, and prints the throughput and the server's user+system CPU per request
from /proc/PID/stat: what the requests cost the machine, ledger writer and budget threads
included. Start each server with the same settings and the same upstream (bench/fastprovider.py).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time

BODY = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})
REQUEST = (
    "POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
    "authorization: Bearer sk-bench\r\nx-tokenpak-agent: bench\r\n"
    f"content-length: {len(BODY)}\r\n\r\n{BODY}"
).encode()
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


async def connection(port: int, n: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    for _ in range(n):
        writer.write(REQUEST)
        await writer.drain()
        head = (await reader.readuntil(b"\r\n\r\n")).lower()
        at = head.find(b"content-length:")
        await reader.readexactly(int(head[at + 15:].split(b"\r\n", 1)[0]))
    writer.close()


async def load(port: int, requests: int, connections: int) -> None:
    await asyncio.gather(*(connection(port, requests // connections)
                           for _ in range(connections)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("servers", nargs="+", help="PORT:PID of a running TokenPak")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--connections", type=int, default=8)
    args = parser.parse_args()
    servers = [tuple(int(x) for x in s.split(":")) for s in args.servers]
    for n in range(args.rounds):
        for port, pid in servers if n % 2 == 0 else servers[::-1]:
            asyncio.run(load(port, args.requests, args.connections))  # warm-up
            cpu, started = cpu_seconds(pid), time.perf_counter()
            asyncio.run(load(port, args.requests, args.connections))
            took = time.perf_counter() - started
            per = (cpu_seconds(pid) - cpu) / args.requests
            print(f"round {n + 1} :{port}  {args.requests / took:6.0f} req/s  "
                  f"{per * 1e6:6.0f} µs CPU per request", flush=True)
            time.sleep(2)  # the ledger writer finishes the round's rows


if __name__ == "__main__":
    main()
