"""vLLM's own log, captured to a file: its engine runs in child processes that write to the
stdout/stderr they inherit, so the descriptors are pointed at the file while the engine starts.
What the file receives is copied on to our stderr (the worker's log) after the start and at the end,
when the file is removed; a worker killed before that leaves the file in the run's logs folder."""

from __future__ import annotations

import collections
import contextlib
import os
import sys
import tempfile

from harness.engine import engine_log_dir


class EngineLog:
    def __init__(self, prefix: str = "vllm-"):
        fd, self.path = tempfile.mkstemp(prefix=prefix, suffix=".log", dir=engine_log_dir())
        os.close(fd)
        self._copied = 0

    @contextlib.contextmanager
    def redirect(self):
        """Descriptors 1 and 2 go to the log; processes started inside keep writing there."""
        sys.stdout.flush()
        sys.stderr.flush()
        saved = os.dup(1), os.dup(2)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        try:
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            yield self
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for d in (fd, *saved):
                os.close(d)
            self.copy_to_stderr()

    def copy_to_stderr(self) -> None:
        """Append what the log received since the last copy to our stderr."""
        with open(self.path, "rb") as f:
            f.seek(self._copied)
            new = f.read()
        self._copied += len(new)
        sys.stderr.buffer.write(new)
        sys.stderr.flush()

    def close(self) -> None:
        """Copy the rest to our stderr and remove the file."""
        if os.path.exists(self.path):
            self.copy_to_stderr()
            os.unlink(self.path)

    def size(self) -> int:
        return os.path.getsize(self.path)

    def text(self, since: int = 0) -> str:
        """The log from byte `since` (a size() taken earlier) on."""
        with open(self.path, "rb") as f:
            f.seek(since)
            return f.read().decode(errors="replace")

    def tail(self, lines: int = 30) -> str:
        with open(self.path, errors="replace") as f:
            return "".join(collections.deque(f, lines)).strip()
