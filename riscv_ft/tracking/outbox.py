"""The outbox: a run's tracking calls journaled to RUN/tracking_outbox.jsonl and sent in
order by a background thread, so training never waits on a tracking server.

With a remote `tracking.uri` every call of a run goes through it, retried while the server is
away (the log says so once when it goes and once when it is back). What is still unsent when
the run ends (after `tracking.flush_timeout_s`) stays in that file, and
`python -m riscv_ft.tracking push RUN` sends it later. With `tracking.offline=true` nothing is
sent: the same file journals every call, naming the experiment and run instead of a run id.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import deque
from pathlib import Path

from riscv_ft.tracking.calls import _deliver, _rejected
from riscv_ft.tracking.store import _first_line, client

log = logging.getLogger(__name__)

OUTBOX = "tracking_outbox.jsonl"  # every call of a run, in order; the first line names the server and run
OUTBOX_SENT = "tracking_outbox.sent"  # the number of the last call the server took

def _write_header(path: Path, header: dict, calls: str = "") -> None:
    """The outbox's first line (which server and run its calls are for), then `calls`."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"seq": 0, "op": "run", "args": header}) + "\n" + calls)
    os.replace(tmp, path)


def _read_outbox(run_dir: Path) -> tuple[dict | None, list[dict]]:
    """(first line: uri and run id, or None) and the calls not yet sent, oldest first."""
    path = Path(run_dir) / OUTBOX
    if not path.is_file():
        return None, []
    sent_file = Path(run_dir) / OUTBOX_SENT
    sent = int(sent_file.read_text() or 0) if sent_file.is_file() else 0
    header, pending = None, []
    for line in path.read_text().splitlines():
        try:
            call = json.loads(line)
        except json.JSONDecodeError:  # the last line of a process killed mid-write
            continue
        if call["op"] == "run":
            header = call["args"]
        elif call["seq"] > sent:
            pending.append(call)
    return header, pending


class _Outbox:
    """A run's tracking calls, journaled to RUN/tracking_outbox.jsonl and sent in order by a
    background thread, so the training loop never waits on the server.

    While the server is away the thread retries (pauses of 1 s growing to 10 s); the log says
    so once when it goes and once when it is back. `close` waits a bounded time for the rest.
    """

    def __init__(self, run_dir: Path, uri: str | None, run_id: str | None, offline_run: dict | None = None):
        """offline_run: {experiment, run_name, tags} of a run that `push` creates later; then
        nothing is sent and MLflow is not imported."""
        self.run_dir, self.uri, self.run_id = Path(run_dir), uri, run_id
        self.path, self.sent_path = self.run_dir / OUTBOX, self.run_dir / OUTBOX_SENT
        self.offline = offline_run is not None
        header, pending = _read_outbox(self.run_dir)
        if self.offline:  # a resumed offline run appends to its outbox
            fresh = header is None or not header.get("offline")
            header = {"uri": uri, "run_id": None, "offline": True, "run_dir": str(self.run_dir.resolve()),
                      "start_time": int(time.time() * 1000), **offline_run}
        else:
            fresh = header is None or header.get("run_id") != run_id
            header = {"uri": uri, "run_id": run_id}
        if fresh:
            _write_header(self.path, header)
            self.sent_path.write_text("0")
            pending = []
        self.seq = max([int(self.sent_path.read_text() or 0)] + [c["seq"] for c in pending])
        # Calls a previous process of this run (stopped, now resumed) did not send; not its end.
        self.queue: deque = deque(c for c in pending if c["op"] != "end")
        self.lock = threading.Condition()
        self.closing = threading.Event()
        self.deadline = float("inf")
        self.away_since: float | None = None
        if self.offline:
            return
        self.client = client(uri)
        self.thread = threading.Thread(target=self._send_all, name="mlflow-outbox", daemon=True)
        self.thread.start()

    def put(self, op: str, **args) -> None:
        with self.lock:
            self.seq += 1
            call = {"seq": self.seq, "op": op, "args": args}
            with open(self.path, "a") as f:
                f.write(json.dumps(call) + "\n")
            if self.offline:
                return
            self.queue.append(call)
            self.lock.notify()

    def _send_all(self) -> None:
        pause = 1.0
        while True:
            with self.lock:
                while not self.queue and not self.closing.is_set():
                    self.lock.wait()
                if not self.queue or time.monotonic() > self.deadline:
                    return
                call = self.queue[0]
            try:
                _deliver(self.client, self.run_id, call["op"], call["args"])
            except Exception as err:  # noqa: BLE001 - MLflow and requests raise many kinds
                if not _rejected(err):
                    if self.away_since is None:
                        self.away_since = time.monotonic()
                        log.warning("MLflow at %s is unreachable (%s); training goes on, and every tracking call is kept "
                                    "in %s and sent when the server is back", self.uri, _first_line(err), self.path)
                    self.closing.wait(pause)  # wakes early when the run ends
                    pause = min(pause * 2, 10.0)
                    continue
                log.warning("MLflow refused a tracking call (%s: %s); it stays in %s", call["op"], _first_line(err), self.path)
            if self.away_since is not None:
                log.info("MLflow at %s is reachable again after %.0f s; sending the calls kept meanwhile",
                         self.uri, time.monotonic() - self.away_since)
                self.away_since = None
            pause = 1.0
            with self.lock:
                self.queue.popleft()
                tmp = self.sent_path.with_suffix(".tmp")
                tmp.write_text(str(call["seq"]))
                os.replace(tmp, self.sent_path)

    def close(self, timeout_s: float) -> int:
        """Wait up to timeout_s for every call to be sent; returns how many were not."""
        if self.offline:
            log.info("tracking.offline: this run's MLflow calls are kept in %s; send them with: "
                     "python -m riscv_ft.tracking push %s", self.path, self.run_dir)
            return self.seq - int(self.sent_path.read_text() or 0)
        with self.lock:
            self.deadline = time.monotonic() + timeout_s
            self.closing.set()
            self.lock.notify_all()
        self.thread.join(timeout_s + 5)
        with self.lock:
            left = len(self.queue)
        if left:
            log.warning("%d tracking calls could not be sent to MLflow at %s; they are kept in %s. "
                        "Send them later with: python -m riscv_ft.tracking push %s", left, self.uri, self.path, self.run_dir)
        return left


