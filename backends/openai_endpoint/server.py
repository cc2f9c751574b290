"""An inference server run as a child for the serve modes (`vllm serve`, `trtllm-serve`): bound
to 127.0.0.1 on a free port, in its own process group so that stopping it stops every process it
spawned, its output in a log file whose last lines become the error when it fails.
"""

from __future__ import annotations

import collections
import ctypes
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from harness.engine import engine_log_dir

HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


class ServerError(RuntimeError):
    pass


_ERROR = re.compile(r"error|exception|traceback|fatal|killed|out of memory", re.IGNORECASE)
# A line that says why an engine refused to start, wherever it stands in a long log; the generic
# wrappers around it ("Engine core initialization failed") say nothing of the cause.
_REASON = re.compile(r"\b(No \w[\w ]* supports|[A-Z]\w*(Error|Exception): \S)")
_WRAPPER = re.compile(r"initialization failed|Failed core proc|see root cause above|Traceback|WARNING", re.IGNORECASE)


def log_reason(text: str) -> str | None:
    """The first line of an engine's log that says why it failed, or None."""
    for line in text.splitlines():
        if _REASON.search(line) and not _WRAPPER.search(line):
            return line.strip()
    return None


def log_summary(tail: str, lines: int = 2) -> str:
    """The lines of a log's tail most likely to say why it failed, on one line: its last error
    lines, else its last lines (a point's error column holds one line)."""
    text = [line.strip() for line in tail.splitlines() if line.strip()]
    return " | ".join(([line for line in text if _ERROR.search(line)] or text)[-lines:])


def _die_with_parent() -> None:
    """Linux: SIGTERM to the server when the worker that started it dies. The server has a group
    of its own, so a killed worker's group would not take it along."""
    if sys.platform == "linux":
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class ServerProcess:
    """`command` must bind to `self.port` on HOST; start() returns once GET /health answers 200."""

    def __init__(self, name: str, command: list[str], port: int, env: dict[str, str] | None = None,
                 ready_timeout_s: float = 600.0, log_dir: str | Path | None = None, tail_lines: int = 30):
        self.name, self.command, self.port = name, [str(c) for c in command], port
        self.env = {**os.environ, **(env or {})}
        self.ready_timeout_s, self.tail_lines = ready_timeout_s, tail_lines
        self.log_path = Path(tempfile.mkstemp(prefix=f"{name}-", suffix=".log", dir=log_dir or engine_log_dir())[1])
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def start(self) -> None:
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                         stdin=subprocess.DEVNULL, start_new_session=True,
                                         preexec_fn=_die_with_parent)
        deadline = time.monotonic() + self.ready_timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.fail(f"exited with code {self.proc.returncode} before it was ready")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=5) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.5)
        self.fail(f"not ready after {self.ready_timeout_s:.0f} s")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def tail(self) -> str:
        with open(self.log_path, errors="replace") as f:
            return "".join(collections.deque(f, self.tail_lines)).strip()

    def fail(self, what: str):
        """Stop the server and raise with the log's line that says why (else its telling last
        lines) first, the whole tail after it."""
        tail, reason = self.tail(), log_reason(self.log_text())
        self.stop()
        raise ServerError(f"{self.name} {what}: {reason or log_summary(tail)}\nlast log lines:\n{tail}")

    def check(self) -> None:
        """After failed requests: raise if the server died (mid-point), then it is the reason.
        It is given a moment, as one that just dropped its connections may still be exiting."""
        if self.proc is None:
            return
        try:
            self.proc.wait(timeout=3.0)
        except subprocess.TimeoutExpired:
            return
        self.fail(f"died with code {self.proc.returncode}")

    def stop(self, grace_s: float = 20.0) -> None:
        """SIGTERM to the group, SIGKILL to whatever the server left behind, then wait until the
        group is gone: the next server must not find the GPU memory still held."""
        if self.proc is None:
            return
        pgid = self.proc.pid
        _signal_group(pgid, signal.SIGTERM)
        try:
            self.proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            pass
        _signal_group(pgid, signal.SIGKILL)
        self.proc.wait()
        deadline = time.monotonic() + grace_s
        while _signal_group(pgid, 0) and time.monotonic() < deadline:
            time.sleep(0.1)
        self.proc = None
        # The server's log moves into the worker's (the group's log) and leaves no file behind.
        sys.stderr.write(self.log_text())
        sys.stderr.flush()
        self.log_path.unlink(missing_ok=True)


def _signal_group(pgid: int, sig: int) -> bool:
    """Send `sig` to the group; False when no process of it is left."""
    try:
        os.killpg(pgid, sig)
        return True
    except ProcessLookupError:
        return False
