"""The outbox: a run's tracking calls journaled to RUN/tracking_outbox.jsonl and sent in
order by a background thread, so training never waits on a tracking server.

With a remote `tracking.uri` every call of a run goes through it, retried with growing pauses
while the server is away (the log says so once when it goes and once when it is back). What is
still unsent when the run ends (after `tracking.flush_timeout_s`) stays in that file, and
`python -m riscv_ft.tracking push RUN` sends it later. With `tracking.offline=true` nothing is
sent: the same file journals every call, naming the experiment and run instead of a run id.

The format, one JSON object a line: {"key", "seq", "op", "args", "crc"}. Line 0 (op "run")
says whose calls follow: `key` is the MLflow run id, or "offline-<uuid>" for an offline run.
`crc` is the CRC-32 of the rest, so a line torn by a kill, or a line of another run, is
skipped on reading rather than swallowing or mixing calls; an append after a torn line starts
on a fresh line. Paths in calls are relative to the run folder, so a folder can move.

Beside it: tracking_outbox.sent (the seq of the last call done with) and
tracking_outbox.refused (calls the server refused for good, with why: kept, never dropped).
A call that failed for any other reason (server away, 401/403, 429, 5xx) is not done with.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
import zlib
from collections import deque
from pathlib import Path

from riscv_ft.tracking.calls import _deliver, refused
from riscv_ft.tracking.store import _first_line, client

log = logging.getLogger(__name__)

OUTBOX = "tracking_outbox.jsonl"


def _crc(key: str, seq: int, op: str, args: dict) -> int:
    return zlib.crc32(json.dumps([key, seq, op, args], sort_keys=True, separators=(",", ":")).encode())


def encode(key: str, seq: int, op: str, args: dict) -> str:
    return json.dumps({"key": key, "seq": seq, "op": op, "args": args, "crc": _crc(key, seq, op, args)}) + "\n"


def sent_path(path: Path) -> Path:
    return path.with_suffix(".sent")


def refused_path(path: Path) -> Path:
    return path.with_suffix(".refused")


def read_outbox(path: Path) -> tuple[dict | None, list[dict], int]:
    """(line 0's header, or None; the calls not yet done with, oldest first; how many lines
    were skipped as torn, corrupt or another run's)."""
    if not path.is_file():
        return None, [], 0
    done_file = sent_path(path)
    done = int(done_file.read_text() or 0) if done_file.is_file() else 0
    header, pending, skipped = None, [], 0
    for line in path.read_text().splitlines():
        try:
            call = json.loads(line)
            good = call["crc"] == _crc(call["key"], call["seq"], call["op"], call["args"])
        except (json.JSONDecodeError, KeyError, TypeError):
            good = False
        if not good or (header is not None and call["key"] != header["key"]) or (header is None and call["op"] != "run"):
            skipped += line.strip() != ""
            continue
        if call["op"] == "run":
            header = call["args"]
        elif call["seq"] > done:
            pending.append(call)
    return header, pending, skipped


def write_header(path: Path, header: dict, calls: str = "") -> None:
    """Line 0 (whose calls follow), then `calls` (lines already encoded), atomically."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(encode(header["key"], 0, "run", header) + calls)
    os.replace(tmp, path)


def mark_done(path: Path, seq: int) -> None:
    tmp = sent_path(path).with_suffix(".sent-tmp")
    tmp.write_text(str(seq))
    os.replace(tmp, sent_path(path))


def record_refusal(path: Path, call: dict, err: Exception) -> None:
    with open(refused_path(path), "a") as f:
        f.write(json.dumps({**call, "error": _first_line(err)}) + "\n")


def _set_aside(path: Path, header: dict, left: int) -> None:
    """A folder reused by another run: its outbox (and marks) move to tracking_outbox.<key>.*,
    where `push` still finds them."""
    old = path.with_name(f"tracking_outbox.{header['key']}.jsonl")
    for src, dst in ((sent_path(path), sent_path(old)), (refused_path(path), refused_path(old)), (path, old)):
        if src.exists():
            os.replace(src, dst)
    log.warning("%s held run %s's outbox with %d unsent tracking calls: kept as %s (python -m riscv_ft.tracking push %s "
                "sends them); this run starts a fresh outbox", path.parent, header["key"], left, old.name, path.parent)


class Outbox:
    """A run's tracking calls, journaled and (unless offline) sent by a background thread.

    `key`: the MLflow run id, or an offline run's key to continue (resume); a new offline run
    gets a fresh one. An outbox of another run in the same folder is never appended to.
    """

    def __init__(self, run_dir: Path, uri: str | None, run_id: str | None, offline_run: dict | None = None,
                 key: str | None = None):
        self.run_dir, self.uri, self.run_id = Path(run_dir), uri, run_id
        self.path = self.run_dir / OUTBOX
        self.offline = offline_run is not None
        self.key = run_id or key or f"offline-{uuid.uuid4().hex}"
        self.run_dir.mkdir(parents=True, exist_ok=True)
        header, pending, skipped = read_outbox(self.path)
        if skipped:
            log.warning("%s: %d torn or corrupt lines skipped", self.path, skipped)
        if header is not None and header.get("key") != self.key:
            if pending:
                _set_aside(self.path, header, len(pending))
            header, pending = None, []
        if header is None:
            header = {"key": self.key, "uri": uri, "run_id": run_id, "offline": self.offline,
                      "start_time": int(time.time() * 1000), **(offline_run or {})}
            write_header(self.path, header)
            for stale in (sent_path(self.path), refused_path(self.path)):
                stale.unlink(missing_ok=True)
        self.header = header
        done = int(sent_path(self.path).read_text() or 0) if sent_path(self.path).is_file() else 0
        self.seq = max([done] + [c["seq"] for c in pending] + [self._last_seq()])
        # A line torn by a kill has no newline: the next call starts on a line of its own.
        with open(self.path, "rb+") as f:
            f.seek(0, os.SEEK_END)
            if f.tell() and (f.seek(-1, os.SEEK_END) or True) and f.read(1) != b"\n":
                f.write(b"\n")
        # Calls a previous process of this run (stopped, now resumed) did not send; not its end.
        self.queue: deque = deque(c for c in pending if c["op"] != "end")
        self.lock = threading.Condition()
        self.closing = False
        self.deadline = float("inf")
        self.away_since: float | None = None
        self.attempts = 0  # send attempts, for the log and the tests
        if self.offline:
            return
        self.client = client(uri)
        self.thread = threading.Thread(target=self._send_all, name="mlflow-outbox", daemon=True)
        self.thread.start()

    def _last_seq(self) -> int:
        """The highest seq written so far, sent or not (seq numbers never repeat in a file)."""
        last = 0
        for line in self.path.read_text().splitlines():
            try:
                last = max(last, int(json.loads(line)["seq"]))
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                pass
        return last

    def put(self, op: str, **args) -> None:
        with self.lock:
            self.seq += 1
            call = {"key": self.key, "seq": self.seq, "op": op, "args": args}
            with open(self.path, "a") as f:
                f.write(encode(self.key, self.seq, op, args))
            if self.offline:
                return
            self.queue.append(call)
            self.lock.notify()

    def _pause(self, seconds: float) -> None:
        """Sleep between attempts, closing or not (a run's end must not turn the retries into
        a busy loop), but never past the deadline of close()."""
        time.sleep(max(0.0, min(seconds, self.deadline - time.monotonic())))

    def _send_all(self) -> None:
        pause = 1.0
        while True:
            with self.lock:
                while not self.queue and not self.closing:
                    self.lock.wait()
                if not self.queue or time.monotonic() >= self.deadline:
                    return
                call = self.queue[0]
            self.attempts += 1
            try:
                _deliver(self.client, self.run_id, call["op"], call["args"], self.run_dir)
            except Exception as err:  # noqa: BLE001 - MLflow and requests raise many kinds
                if not refused(err):  # away, or not allowed now (401/403/429/5xx): kept, tried again
                    if self.away_since is None:
                        self.away_since = time.monotonic()
                        log.warning("MLflow at %s does not take tracking calls now (%s); training goes on, and every "
                                    "call is kept in %s and sent when it does", self.uri, _first_line(err), self.path)
                    self._pause(pause)
                    pause = min(pause * 2, 10.0)
                    continue
                log.warning("MLflow refused a tracking call for good (%s: %s); it is kept in %s",
                            call["op"], _first_line(err), refused_path(self.path))
                record_refusal(self.path, call, err)
            if self.away_since is not None:
                log.info("MLflow at %s takes calls again after %.0f s; sending the calls kept meanwhile",
                         self.uri, time.monotonic() - self.away_since)
                self.away_since = None
            pause = 1.0
            with self.lock:
                self.queue.popleft()
                mark_done(self.path, call["seq"])

    def close(self, timeout_s: float) -> int:
        """Wait up to timeout_s for every call to be sent; returns how many were not."""
        if self.offline:
            log.info("tracking.offline: this run's MLflow calls are kept in %s; send them with: "
                     "python -m riscv_ft.tracking push %s", self.path, self.run_dir)
            return len(read_outbox(self.path)[1])
        with self.lock:
            self.deadline = time.monotonic() + timeout_s
            self.closing = True
            self.lock.notify_all()
        self.thread.join(timeout_s + 15)
        with self.lock:
            left = len(self.queue)
        refusals = len(refused_path(self.path).read_text().splitlines()) if refused_path(self.path).is_file() else 0
        if refusals:
            log.warning("MLflow refused %d tracking calls of this run for good; they are kept in %s",
                        refusals, refused_path(self.path))
        if left:
            log.warning("%d tracking calls could not be sent to MLflow at %s; they are kept in %s. "
                        "Send them later with: python -m riscv_ft.tracking push %s --uri %s",
                        left, self.uri, self.path, self.run_dir, self.uri)
        return left
