"""The parent's handle on a worker process (harness.runner.worker): start, ask, time out, kill.

The child runs in a session of its own, so killing it takes its children (engine servers,
compile workers) with it. Records are read by a thread into a queue, so the parent can wait on
them with a deadline.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

import harness
from harness.engine import ENGINE_LOG_DIR
from harness.runner import messages as M

REPO_ROOT = Path(harness.__file__).resolve().parents[1]


class WorkerTimeout(Exception):
    pass


class WorkerDied(Exception):
    pass


def describe_exit(returncode: int) -> str:
    if returncode < 0:
        name = signal.Signals(-returncode).name
        hint = " (the kernel's OOM killer sends it too)" if -returncode == signal.SIGKILL else ""
        return f"killed by {name}{hint}"
    return f"exited with code {returncode}"


class WorkerProcess:
    def __init__(self, python: str | None, log_path: Path):
        cmd_r, cmd_w = os.pipe()
        rec_r, rec_w = os.pipe()
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
        env["PYTHONUNBUFFERED"] = "1"
        env[ENGINE_LOG_DIR] = str(log_path.parent)
        with open(log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [python or sys.executable, "-m", "harness.runner.worker", str(cmd_r), str(rec_w)],
                pass_fds=(cmd_r, rec_w), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env=env, start_new_session=True)
        os.close(cmd_r)
        os.close(rec_w)
        self.commands = os.fdopen(cmd_w, "w")
        self.records: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, args=(os.fdopen(rec_r, "r"),), daemon=True).start()

    def _read(self, stream) -> None:
        for line in stream:
            self.records.put(M.decode(line))
        self.records.put(None)  # the child closed its end: it exited or died

    def request(self, msg=None, timeout_s: float = 60, on_record: Callable = lambda r: None):
        """Send `msg` (a harness.runner.messages command; None: only wait for Hello) and return its
        Result, passing the other records to `on_record`. Raises WorkerTimeout after `timeout_s`,
        WorkerDied naming the exit signal."""
        if msg is not None:
            try:
                self.commands.write(M.encode(msg) + "\n")
                self.commands.flush()
            except BrokenPipeError:
                raise WorkerDied(self.exit_reason()) from None
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                rec = self.records.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise WorkerTimeout(f"no result after {timeout_s:g} s") from None
            if rec is None:
                raise WorkerDied(self.exit_reason())
            if isinstance(rec, (M.Result, M.Hello)):
                return rec
            on_record(rec)

    def exit_reason(self) -> str:
        try:
            returncode = self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.kill()
            return "stopped answering and was killed"
        self.kill()  # whatever the worker started dies with it
        return describe_exit(returncode)

    def kill(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()

    def close(self, timeout_s: float = 60) -> None:
        """Ask the worker to release its engine and exit; kill it if it does not within `timeout_s`."""
        try:
            self.commands.write(M.encode(M.Close()) + "\n")
            self.commands.close()
            self.proc.wait(timeout=timeout_s)
        except (BrokenPipeError, subprocess.TimeoutExpired):
            pass
        self.kill()
