"""What TokenPak adds to a request: the same load direct to a fake provider and through the proxy.

    .venv/bin/python bench/overhead.py [--rounds 3] [--requests 1000] [--seconds 3]
                                       [--workers 1] [--vs URL] [--soak 100000]

Starts a fast fake provider (bench/fastprovider.py) on 127.0.0.1, then the proxy as a user runs
it in production (`tokenpak serve --workers N`, ledger on a fresh SQLite file in a temporary
TOKENPAK_HOME, a global and an agent budget set, `safe` compression, logging on), and drives
both from this process with a keep-alive HTTP/1.1 load generator written on raw sockets, so the
generator costs as little as it can. Each round measures, for OpenAI and Anthropic shapes, JSON
and SSE: sequential latency (p50, p99) and a stream's time to first byte, then throughput at 1,
8 and 32 concurrent connections. Prints the medians over the rounds, what the proxy adds, and
proxy/direct ratios; exits non-zero only when a request fails.

--vs URL runs the same load against another proxy already started against the fake provider
(its port is printed, or fix it with --provider-port) in the same rounds. --soak N sends N
requests after the rounds and prints the proxy's RSS after 10 % of them and after all.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit

import httpx

ROOT = Path(__file__).resolve().parent.parent

OPENAI_BODY: dict[str, Any] = {"model": "gpt-4o-mini", "max_tokens": 64,
               "messages": [{"role": "user", "content": "Say hello in five words."}]}
ANTHROPIC_BODY: dict[str, Any] = {"model": "claude-haiku-4-5", "max_tokens": 64,
                  "messages": [{"role": "user", "content": "Say hello in five words."}]}
SHAPES = {
    "openai": ("/v1/chat/completions", OPENAI_BODY,
               [("authorization", "Bearer sk-bench-0000")]),
    "anthropic": ("/v1/messages", ANTHROPIC_BODY,
                  [("x-api-key", "sk-ant-bench-0000"), ("anthropic-version", "2023-06-01")]),
}
KINDS = [(shape, stream) for shape in SHAPES for stream in (False, True)]


def request_parts(shape: str, stream: bool) -> tuple[str, list[tuple[str, str]], bytes]:
    path, body, headers = SHAPES[shape]
    payload = json.dumps({**body, "stream": True} if stream else body).encode()
    return path, [("content-type", "application/json"), ("accept", "application/json"),
                  ("x-tokenpak-agent", "bench"), *headers], payload


def request_bytes(host: str, shape: str, stream: bool) -> bytes:
    path, headers, payload = request_parts(shape, stream)
    lines = [f"POST {path} HTTP/1.1", f"host: {host}", f"content-length: {len(payload)}",
             *(f"{k}: {v}" for k, v in headers)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + payload


class Failed(Exception):
    pass


class Connection:
    """One keep-alive HTTP/1.1 connection on a bare socket (--client raw): the cheapest client
    Python has; `send` returns (ttfb, total) in seconds."""

    def __init__(self, target: Target) -> None:
        self.host, self.port = target.host, target.port
        self.raws = target.raws
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def send(self, kind: tuple[str, bool]) -> tuple[float, float]:
        raw = self.raws[kind]
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
            self.writer.transport.get_extra_info("socket").setsockopt(
                socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        reader = self.reader
        assert reader is not None
        started = time.perf_counter()
        self.writer.write(raw)
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        lower = head.lower()
        first = None
        if b"transfer-encoding: chunked" in lower:
            body = []
            while True:
                size = int((await reader.readuntil(b"\r\n"))[:-2].split(b";")[0], 16)
                if first is None:
                    first = time.perf_counter()
                if size == 0:
                    await reader.readuntil(b"\r\n")
                    break
                body.append(await reader.readexactly(size + 2))
            data = b"".join(b[:-2] for b in body)
        else:
            at = lower.find(b"content-length:")
            length = int(lower[at + 15:].split(b"\r\n", 1)[0]) if at >= 0 else 0
            data = await reader.readexactly(length)
            first = time.perf_counter()
        done = time.perf_counter()
        if status != 200:
            raise Failed(f"HTTP {status}: {data[:300]!r}")
        if b"connection: close" in lower:
            await self.close()  # the next request opens a new connection
        return first - started, done - started

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


class HttpxConnection:
    """The same through httpx.AsyncClient (--client httpx, the default): the HTTP client both
    official SDKs are built on, so "direct" is what an SDK user's program can push."""

    def __init__(self, target: Target) -> None:
        self.url = target.url
        self.parts = {k: request_parts(*k) for k in KINDS}
        self.client = httpx.AsyncClient(timeout=60, trust_env=False)

    async def send(self, kind: tuple[str, bool]) -> tuple[float, float]:
        path, headers, payload = self.parts[kind]
        started = time.perf_counter()
        first = None
        async with self.client.stream("POST", self.url + path, headers=headers,
                                      content=payload) as response:
            async for _ in response.aiter_raw():
                if first is None:
                    first = time.perf_counter()
            if response.status_code != 200:
                raise Failed(f"HTTP {response.status_code} from {self.url + path}")
        done = time.perf_counter()
        return (first or done) - started, done - started

    async def close(self) -> None:
        await self.client.aclose()


@dataclass
class Target:
    name: str
    url: str
    host: str = ""
    port: int = 0
    raws: dict[tuple[str, bool], bytes] = field(default_factory=dict)

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.raws = {k: request_bytes(parts.netloc, *k) for k in KINDS}


class SdkConnection:
    """The official SDKs (--client sdk, the default): AsyncOpenAI and AsyncAnthropic, each
    request a typed call and streams read event by event, as the programs TokenPak serves do."""

    def __init__(self, target: Target) -> None:
        import anthropic
        import openai

        self.openai = openai.AsyncOpenAI(base_url=target.url + "/v1", api_key="sk-bench-0000",
                                         max_retries=0,
                                         default_headers={"x-tokenpak-agent": "bench"})
        self.anthropic = anthropic.AsyncAnthropic(base_url=target.url,
                                                  api_key="sk-ant-bench-0000", max_retries=0,
                                                  default_headers={"x-tokenpak-agent": "bench"})

    async def send(self, kind: tuple[str, bool]) -> tuple[float, float]:
        shape, stream = kind
        started = time.perf_counter()
        first = None
        # (The casts: with stream=True the SDKs answer a stream; mypy sees stream as any bool.)
        if shape == "openai":
            chat = await self.openai.chat.completions.create(**OPENAI_BODY, stream=stream)
            if stream:
                async for _ in cast(AsyncIterator[Any], chat):
                    first = first or time.perf_counter()
        else:
            message = await self.anthropic.messages.create(**ANTHROPIC_BODY, stream=stream)
            if stream:
                async for _ in cast(AsyncIterator[Any], message):
                    first = first or time.perf_counter()
        done = time.perf_counter()
        return (first or done) - started, done - started

    async def close(self) -> None:
        await self.openai.close()
        await self.anthropic.close()


CLIENTS: dict[str, type] = {"sdk": SdkConnection, "httpx": HttpxConnection, "raw": Connection}
CLIENT: type = SdkConnection


async def sequential(target: Target, kind: tuple[str, bool], n: int) -> tuple[list, list]:
    conn = CLIENT(target)
    ttfbs, totals = [], []
    try:
        for _ in range(n):
            ttfb, total = await conn.send(kind)
            ttfbs.append(ttfb * 1000)
            totals.append(total * 1000)
    finally:
        await conn.close()
    return ttfbs, totals


async def throughput(target: Target, stream: bool, concurrency: int, seconds: float) -> float:
    """Requests per second with `concurrency` connections busy; OpenAI and Anthropic alternate.
    Clients are made before the clock starts: an SDK client takes milliseconds to build."""
    done = 0
    conns = [CLIENT(target) for _ in range(concurrency)]

    async def worker(i: int) -> None:
        nonlocal done
        kind = ("openai" if i % 2 == 0 else "anthropic", stream)
        while time.perf_counter() < stop_at:
            await conns[i].send(kind)
            done += 1

    started = time.perf_counter()
    stop_at = started + seconds
    try:
        await asyncio.gather(*(worker(i) for i in range(concurrency)))
    finally:
        for conn in conns:
            await conn.close()
    return done / (time.perf_counter() - started)


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * q))]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(port: int, proc: subprocess.Popen, what: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited early with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"{what} did not listen within 60 s")


def rss_kb(pid: int) -> int:
    """Resident memory of a process and its children (the workers), in kB."""
    total = 0
    pids = [pid]
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        pids += [int(c) for c in children]
    except OSError:
        pass
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total


def ensure_database(url: str) -> None:
    """Create the PostgreSQL database --database-url names when it does not exist yet."""
    import psycopg
    from psycopg import sql

    parts = urlsplit(url)
    name = parts.path.lstrip("/")
    server = parts._replace(path="/postgres").geturl()
    with psycopg.connect(server, autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone() is None:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def start_proxy(args: argparse.Namespace, provider_url: str, home: Path) -> tuple:
    if args.database_url:
        ensure_database(args.database_url)
    env = {**os.environ, "TOKENPAK_HOME": str(home), "DJANGO_SETTINGS_MODULE":
           "tokenpak_site.settings", "DATABASE_URL": args.database_url,
           "TOKENPAK_OPENAI_BASE_URL": provider_url,
           "TOKENPAK_ANTHROPIC_BASE_URL": provider_url,
           "TOKENPAK_COMPRESSION_PROFILE": "safe", "PYTHONUNBUFFERED": "1"}
    env.pop("TOKENPAK_DB", None)
    manage = [sys.executable, "-m", "tokenpak_site.cli"]
    subprocess.run([*manage, "migrate", "--verbosity", "0"], cwd=ROOT, env=env, check=True)
    # Budgets on, far from their limits: every request is checked and held, none refused.
    for spec in (["--monthly", "1000000"], ["--daily", "1000000", "--agent", "bench"]):
        subprocess.run([*manage, "budget", "set", *spec], cwd=ROOT, env=env, check=True,
                       stdout=subprocess.DEVNULL)
    port = free_port()
    log = open(home / "server.out", "wb")  # noqa: SIM115 - the server writes it until the end
    proc = subprocess.Popen(
        [*manage, "serve", "--port", str(port), "--workers", str(args.workers)],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    wait_listening(port, proc, "the proxy")
    return proc, f"http://127.0.0.1:{port}"


def ledger_rows(args: argparse.Namespace, home: Path) -> int:
    if args.database_url:
        import psycopg

        with psycopg.connect(args.database_url) as conn:
            row = conn.execute("SELECT count(*) FROM tp_events").fetchone()
            assert row is not None  # count(*) is one row
            return row[0]
    import sqlite3

    with sqlite3.connect(home / "monitor.db") as conn:
        return conn.execute("SELECT count(*) FROM tp_events").fetchone()[0]


async def round_(targets: list[Target], args: argparse.Namespace) -> dict:
    out: dict = {}
    for kind in KINDS:
        for t in targets:  # interleaved: drift in the machine hits every target alike
            ttfbs, totals = await sequential(t, kind, args.requests)
            out[(t.name, "p50", kind)] = statistics.median(totals)
            out[(t.name, "p99", kind)] = pct(totals, 0.99)
            out[(t.name, "ttfb", kind)] = statistics.median(ttfbs)
    for stream in (False, True):
        for c in (1, 8, 32):
            for t in targets:
                out[(t.name, "rps", stream, c)] = await throughput(t, stream, c, args.seconds)
    return out


async def soak(target: Target, n: int, pid: int) -> tuple[int, int]:
    conns = [CLIENT(target) for _ in range(8)]
    sent = 0
    marks = {}

    async def worker(i: int) -> None:
        nonlocal sent
        kind = KINDS[i % len(KINDS)]
        while sent < n:
            sent += 1
            await conns[i].send(kind)
            if sent in (n // 10, n):
                marks[sent] = rss_kb(pid)

    await asyncio.gather(*(worker(i) for i in range(len(conns))))
    for c in conns:
        await c.close()
    return marks.get(n // 10, 0), marks.get(n, rss_kb(pid))


TARGETS = {"p50": "<= 1.5", "p99": "<= 5", "ttfb": "<= 1.5"}


def report(results: list[dict], targets: list[Target], args: argparse.Namespace) -> None:
    def med(*key: Any) -> float:
        return statistics.median(r[key] for r in results)

    names = [t.name for t in targets]
    others = names[1:]
    print(f"\nclient: {args.client}; medians of {len(results)} rounds; sequential: "
          f"{args.requests} requests per kind; throughput: {args.seconds:g} s per point")
    head = "".join(f"{n:>11}" for n in names) + "".join(f"{'+' + n:>11}" for n in others)
    print(f"\n{'added latency, ms':<26}{head}{'target':>9}")
    labels = {"p50": "p50", "p99": "p99", "ttfb": "first byte"}
    for shape, stream in KINDS:
        for what in ("p50", "p99", "ttfb") if stream else ("p50", "p99"):
            label = f"{shape} {'SSE' if stream else 'JSON'} {labels[what]}"
            vals = [med(n, what, (shape, stream)) for n in names]
            print(f"{label:<26}" + "".join(f"{v:>11.3f}" for v in vals)
                  + "".join(f"{v - vals[0]:>+11.3f}" for v in vals[1:]) + f"{TARGETS[what]:>9}")
    head = "".join(f"{n:>11}" for n in names) + "".join(f"{n + '/d':>11}" for n in others)
    print(f"\n{'throughput, req/s':<26}{head}{'target':>9}")
    for stream in (False, True):
        for c in (1, 8, 32):
            vals = [med(n, "rps", stream, c) for n in names]
            label = f"{'SSE' if stream else 'JSON'}, {c} concurrent"
            print(f"{label:<26}" + "".join(f"{v:>11.0f}" for v in vals)
                  + "".join(f"{v / vals[0]:>11.0%}" for v in vals[1:])
                  + f"{'>= 60%' if c == 32 else '':>9}")


async def run(args: argparse.Namespace, targets: list[Target], proxy_pid: int) -> int:
    for t in targets:  # warm up: connections, imports, the proxy's caches
        for kind in KINDS:
            await sequential(t, kind, args.requests // 5 + 20)
    results = []
    for i in range(args.rounds):
        results.append(await round_(targets, args))
        print(f"round {i + 1}/{args.rounds} done", file=sys.stderr, flush=True)
    report(results, targets, args)
    if args.soak:
        early, late = await soak(targets[1], args.soak, proxy_pid)
        print(f"\nRSS after {args.soak // 10:,} requests: {early / 1024:.1f} MB; after "
              f"{args.soak:,}: {late / 1024:.1f} MB ({(late - early) / max(early, 1):+.1%})")
    return 0


def _loop_run(coro: Any) -> Any:
    """The generator's own loop: uvloop where installed; the less the generator costs, the
    more of the machine the servers get."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=1000, help="sequential, per kind")
    parser.add_argument("--seconds", type=float, default=3.0, help="per throughput point")
    parser.add_argument("--workers", type=int, default=1, help="proxy server processes")
    parser.add_argument("--vs", metavar="URL", help="another proxy to measure alongside")
    parser.add_argument("--provider-port", type=int, default=0)
    parser.add_argument("--soak", type=int, default=0, metavar="N")
    parser.add_argument("--database-url", default="", help="PostgreSQL ledger instead of SQLite")
    parser.add_argument("--proxy-url", help="measure this running TokenPak instead of starting one")
    parser.add_argument("--client", choices=sorted(CLIENTS), default="sdk",
                        help="load generator: the official SDKs (default), bare httpx, or raw "
                             "sockets (the cheapest Python client: the proxy's cost shows most)")
    args = parser.parse_args()
    global CLIENT
    CLIENT = CLIENTS[args.client]

    home = Path(tempfile.mkdtemp(prefix="tp-bench-overhead-"))
    provider_port = args.provider_port or free_port()
    provider = subprocess.Popen([sys.executable, str(ROOT / "bench" / "fastprovider.py"),
                                 str(provider_port)], start_new_session=True)
    proxy = None
    try:
        wait_listening(provider_port, provider, "the fake provider")
        provider_url = f"http://127.0.0.1:{provider_port}"
        print(f"fake provider on {provider_url}", file=sys.stderr, flush=True)
        if args.proxy_url:
            proxy_url, proxy_pid = args.proxy_url, 0
        else:
            proxy, proxy_url = start_proxy(args, provider_url, home)
            proxy_pid = proxy.pid
        targets = [Target("direct", provider_url), Target("tokenpak", proxy_url)]
        if args.vs:
            targets.append(Target("vs", args.vs))
        code = _loop_run(run(args, targets, proxy_pid))
        if proxy is not None:
            time.sleep(1.5)  # the writer's last batch
            print(f"\nledger rows written: {ledger_rows(args, home):,}")
    except subprocess.CalledProcessError as e:
        print(f"bench/overhead.py: setting up the proxy failed: {e}", file=sys.stderr)
        code = 1
    except Exception as e:  # any failed request: the numbers would be of something else
        print(f"bench/overhead.py: a request failed: {e}", file=sys.stderr)
        code = 1
    finally:
        for p in (proxy, provider):
            if p is not None and p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    os.killpg(p.pid, signal.SIGKILL)
    sys.exit(code)


if __name__ == "__main__":
    main()
