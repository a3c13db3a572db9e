"""The ledger's spool: what the database does not hold yet, on disk, so that neither a kill -9
nor a database outage loses a row.

Each serving process appends JSON lines to its own files in $TOKENPAK_HOME/spool/:

- ``{"r": {...}}``: a finished request's facts, written on the event loop before its response
  completes. A write() into the page cache, about 10 µs: a kill -9 cannot take it back (only a
  power cut could, like any write SQLite makes in WAL mode with synchronous=NORMAL). No prompt
  text and no header goes in, so nothing private lands on disk that the ledger would not hold.
- ``{"w": [...]}``: a request's finished rows, written by the ledger writer when the database
  refused them. They win over the request's ``r`` line, which lacks what needs the prompt
  (compression savings, the token estimate of a cut stream).

A file holds lines until every request in it is in the database; then it is emptied or deleted.
A row the database refuses even with its text cleaned, or a line no row can be made of, is set
aside in ``rejected.ndjson`` (0600): one JSON line each, with the reason; `status` counts them.
Each process holds an flock on its ``.state`` file for as long as it lives, and keeps its state
there (in step, or failing since when and why: `status` reads it). A state file nobody holds is a
stopped process's, and the next process that serves claims it and writes what its files hold.
The state file is written in place, never grown: it still says why on a full disk.

The design, and why it is safe: docs/design/spool.md.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger("tokenpak.ledger")

SEGMENT_BYTES = 4 * 1024 * 1024  # a file this big takes no more lines: the next one starts
STATE_BYTES = 1024
# Not *.jsonl: no process owns it, and nothing replays it.
REJECTED = "rejected.ndjson"


@dataclass
class Segment:
    seq: int
    path: Path
    fd: int
    size: int = 0
    pending: int = 0  # requests appended and not yet known to be in the database


@dataclass
class Spool:
    """This process's spool files. Thread-safe; the ledger writer owns the only instance."""

    directory: Path
    name: str = field(default_factory=lambda: f"{os.getpid()}-{int(time.time() * 1000)}")
    segments: dict[int, Segment] = field(default_factory=dict)
    current: Segment | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)
    state_fd: int | None = None
    broken: str = ""  # why the last append failed; empty while appends work
    next_seq: int = 1

    def start(self) -> None:
        """Create the directory and this process's state file, locked until the process ends."""
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.directory / f"{self.name}.state", os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.ftruncate(fd, STATE_BYTES)  # allocated now, rewritten in place from here on
        self.state_fd = fd
        self.set_state({})

    def set_state(self, state: dict[str, Any]) -> None:
        if self.state_fd is None:
            return
        data = json.dumps({"pid": os.getpid(), **state}).encode()[:STATE_BYTES]
        try:
            os.pwrite(self.state_fd, data.ljust(STATE_BYTES), 0)
        except OSError as e:
            log.error("ledger: could not write the spool state file: %s", e)

    def append(self, line: bytes) -> int:
        """Add one line to the current file; its sequence number, 0 when the disk refused it."""
        with self.lock:
            seg = self.current
            try:
                if seg is None or seg.size >= SEGMENT_BYTES:
                    seg = self._open()
                _write(seg, line)
            except OSError as e:
                if not self.broken:
                    log.error("ledger: the spool cannot be written (%s): rows of requests "
                              "answered from now until it can are kept in memory only", e)
                self.broken = str(e)
                return 0
            if self.broken:
                log.warning("ledger: the spool can be written again")
                self.broken = ""
            seg.pending += 1
            return seg.seq

    def write_into(self, seq: int, lines: list[bytes]) -> bool:
        """Add the writer's lines to a closed file (rotate() returned it): False on failure."""
        with self.lock:
            seg = self.segments.get(seq)
            if seg is None:
                return False
            try:
                _write(seg, b"".join(lines))
            except OSError as e:
                log.error("ledger: the spool cannot be written (%s); %d rows are kept in "
                          "memory only", e, len(lines))
                self.broken = str(e)
                return False
            return True

    def done(self, seqs: list[int]) -> None:
        """These requests' rows are committed: a file with nothing left pending goes."""
        with self.lock:
            for seq in seqs:
                seg = self.segments.get(seq)
                if seg is not None:
                    seg.pending -= 1
            for seg in list(self.segments.values()):
                if seg.pending > 0:
                    continue
                if seg is self.current:
                    if seg.size:  # appends go on at offset 0 (O_APPEND)
                        os.ftruncate(seg.fd, 0)
                        seg.size = 0
                else:
                    self._close(seg)

    def rotate(self) -> tuple[int, list[Path]]:
        """Close every file to new requests: (the newest closed file's seq, all closed paths).

        The caller holds the writer's lock, so that no request is appended meanwhile."""
        with self.lock:
            self.current = None
            closed = sorted(self.segments.values(), key=lambda s: s.seq)
            return (closed[-1].seq if closed else 0), [s.path for s in closed]

    def forget(self, paths: list[Path]) -> None:
        """These closed files are written to the database: delete them."""
        with self.lock:
            for seg in [s for s in self.segments.values() if s.path in paths]:
                self._close(seg)

    def close(self) -> None:
        """At a clean stop: with every request in the database, the files and state file go;
        otherwise they stay for the next process that serves."""
        with self.lock:
            if self.state_fd is None or any(s.pending > 0 for s in self.segments.values()):
                return
            for seg in list(self.segments.values()):
                self._close(seg)
            (self.directory / f"{self.name}.state").unlink(missing_ok=True)
            os.close(self.state_fd)
            self.state_fd = None

    def _open(self) -> Segment:
        seq = self.next_seq
        self.next_seq += 1
        path = self.directory / f"{self.name}.{seq:06d}.jsonl"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        seg = self.current = self.segments[seq] = Segment(seq, path, fd)
        return seg

    def _close(self, seg: Segment) -> None:
        os.close(seg.fd)
        seg.path.unlink(missing_ok=True)
        del self.segments[seg.seq]
        if seg is self.current:
            self.current = None


def _write(seg: Segment, data: bytes) -> None:
    """Append whole lines or nothing: a short write (a full disk) is cut back off, so the next
    line does not run on from half a line."""
    n = os.write(seg.fd, data)
    if n != len(data):
        os.ftruncate(seg.fd, seg.size)
        raise OSError(errno.ENOSPC, "no space left for the spool")
    seg.size += n


# --- reading: recovery and `status` --------------------------------------------------------


def lines(paths: list[Path]) -> Iterator[dict[str, Any]]:
    """Every whole line of these files, in order. A line cut short (a full disk) is skipped."""
    for path in paths:
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            continue
        for raw in data.splitlines():
            try:
                entry = json.loads(raw)
            except ValueError:
                log.warning("ledger: skipped an unreadable spool line in %s", path.name)
                continue
            if isinstance(entry, dict):
                yield entry


def trace_id(entry: dict[str, Any]) -> str | None:
    """The trace id a line is about; None for a line too broken to say."""
    try:
        found = entry["r"]["trace_id"] if "r" in entry else entry["w"][0]["trace_id"]
    except (KeyError, IndexError, TypeError):
        return None
    return found if isinstance(found, str) else None


def count(paths: list[Path]) -> int:
    """Requests in these files (an upper bound: the writer may have committed some already)."""
    return len({trace_id(e) for e in lines(paths)})


def set_aside(directory: Path, entry: dict[str, Any]) -> Path:
    """Keep a row (or a line) the ledger cannot take, with why, where `status` finds it.
    Raises OSError when the disk takes nothing."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = directory / REJECTED
    data = json.dumps({"at": time.time(), **entry}, separators=(",", ":"), default=str)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.write(fd, data.encode() + b"\n")
    finally:
        os.close(fd)
    return path


def set_aside_so_far(directory: Path) -> tuple[int, str]:
    """How many rows were set aside here, and the last one's reason."""
    path = directory / REJECTED
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return 0, ""
    found = data.splitlines()
    try:
        last = json.loads(found[-1]).get("reason", "") if found else ""
    except (ValueError, AttributeError):
        last = ""
    return len(found), str(last)


def files_of(directory: Path, name: str) -> list[Path]:
    return sorted(directory.glob(f"{name}.*.jsonl"))


@dataclass
class Owner:
    """One process's spool, as another process sees it."""

    name: str
    alive: bool
    state: dict[str, Any]
    files: list[Path]

    def waiting(self) -> int:
        return count(self.files)


def owners(directory: Path, me: str = "") -> list[Owner]:
    """Every process with a state file here, live or stopped; `me` is left out."""
    found = []
    for state_path in sorted(directory.glob("*.state")):
        name = state_path.name.removesuffix(".state")
        if name == me:
            continue
        try:
            fd = os.open(state_path, os.O_RDONLY)
        except FileNotFoundError:
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                alive = False
                fcntl.flock(fd, fcntl.LOCK_UN)
            except BlockingIOError:
                alive = True
            raw = os.pread(fd, STATE_BYTES, 0).strip()
        finally:
            os.close(fd)
        try:
            state = json.loads(raw) if raw else {}
        except ValueError:
            state = {}
        found.append(Owner(name, alive, state, files_of(directory, name)))
    # Files whose state file is gone: their process stopped between deleting the two.
    named = {o.name for o in found} | {me}
    for path in sorted(directory.glob("*.jsonl")):
        name = path.name.split(".")[0]
        if name not in named:
            named.add(name)
            found.append(Owner(name, False, {}, files_of(directory, name)))
    return found


def claim(directory: Path, name: str) -> int | None:
    """Lock a stopped process's state file for this process: the fd, or None when it lives on
    (or another process claimed it first)."""
    path = directory / f"{name}.state"
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        # Only files, no state file: claim through a lock file of our own making.
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def release(directory: Path, name: str, fd: int) -> None:
    """A claimed spool is in the database: its files and state file go."""
    for path in files_of(directory, name):
        path.unlink(missing_ok=True)
    (directory / f"{name}.state").unlink(missing_ok=True)
    os.close(fd)
