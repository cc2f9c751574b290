"""A worker process: loads one engine once and serves the points of its group.

    python -m harness.runner.worker CMD_FD REC_FD

Commands arrive as JSON lines on CMD_FD and records leave on REC_FD, never on stdout or stderr:
engines print, and both of those go to the group's log. Both are the typed records of
harness.runner.messages: the first record is Hello; every command gets Phase records while it
runs and ends with one Result whose `status` is ok, oom, error or skipped. An exception ends a command, not the worker (the traceback goes to the log);
after an out-of-memory error the worker frees what it can and serves the next point.
"""

from __future__ import annotations

import gc
import importlib.metadata
import os
import sys
import time
import traceback
from pathlib import Path

import torch

from harness.analysis.calibration import calibrate
from harness.engine import Backend, DoesNotFit, LoadRequest
from harness.model.spec import ModelSpec
from harness.results import cpu_model
from harness.runner import messages as M
from harness.runner.measure import agreement, measure
from harness.runner.point import load_class, model_spec
from harness.runner.prompts import prompts
from harness.telemetry import Telemetry


def outcome(exc: BaseException) -> tuple[str, str]:
    """(status, the message on one line) of a failed command."""
    text = str(exc).strip()
    oom = isinstance(exc, torch.OutOfMemoryError) or "out of memory" in text.lower()
    status = "skipped" if isinstance(exc, DoesNotFit) else "oom" if oom else "error"
    lines = "; ".join(line.strip() for line in text.splitlines() if line.strip())
    return status, f"{type(exc).__name__}: {lines}"[:400]


def device_facts(device: torch.device) -> dict:
    cuda = device.type == "cuda"
    props = torch.cuda.get_device_properties(device) if cuda else None
    return {
        "device": str(device), "gpu_name": props.name if cuda else None,
        "gpu_count": torch.cuda.device_count() if torch.cuda.is_available() else 0,
        "device_mem_gib": props.total_memory / 2**30 if cuda else None,
        "compute_capability": f"{props.major}.{props.minor}" if cuda else None,
        "python": sys.version.split()[0], "executable": sys.executable, "torch": torch.__version__,
        "torch_cuda": torch.version.cuda, "cpu_model": cpu_model(),
        "triton": _version("triton"),
    }


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _plain(x):
    """JSON for numpy and torch scalars; NaN stays NaN (Python's json reads it back)."""
    if hasattr(x, "item"):
        return x.item()
    raise TypeError(f"{type(x).__name__} is not JSON serialisable")


def _frame(df) -> dict | None:
    """A DataFrame as JSON (harness.runner.group reads it back)."""
    return None if df is None else {"columns": list(df.columns), "data": df.to_numpy(dtype=object).tolist()}


class Server:
    def __init__(self, send):
        self.send = send
        self.backend: Backend | None = None
        self.spec: ModelSpec | None = None
        self.tel = None

    def phase(self, name: str) -> None:
        self.send(M.Phase(name))

    def handle(self, msg) -> M.Result:
        try:
            return M.Result("ok", data=getattr(self, msg.type)(msg))
        except Exception as e:
            traceback.print_exc()
            status, error = outcome(e)
            out = M.Result(status, error, required_gib=e.required_bytes / 2**30 if isinstance(e, DoesNotFit) else None)
        # Outside the except block: the traceback no longer pins the failed step's tensors.
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return out

    def load(self, msg: M.Load) -> dict:
        """Build the backend from its yaml and load the group's model once, sized for its largest point."""
        w = msg.workload
        device = msg.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        device = torch.device(device)
        if device.type == "cuda":
            if device.index is None:  # set_device and the engines want an index
                device = torch.device("cuda", torch.cuda.current_device())
            torch.cuda.set_device(device)
        self.send(M.Facts(device_facts(device)))
        self.spec = model_spec(msg.model)
        checkpoint = Path(msg.model.path) if msg.model.path else None
        if checkpoint is None and msg.model.synthetic == "disk":
            from harness.model.synthetic import synthetic_checkpoint
            self.phase("synthetic checkpoint")
            checkpoint = synthetic_checkpoint(self.spec, w.seed, w.router_skew,
                                              cache_dir=Path(msg.cache_dir) / "checkpoints", progress=False)
        request = LoadRequest(self.spec, msg.quant, checkpoint, w.seed, w.router_skew, str(device),
                              msg.max_batch_size, msg.max_seq_len, msg.parallel)
        self.phase("load")
        t0 = time.perf_counter()
        cls = load_class(msg.backend.target)
        self.backend = cls(**msg.backend.options)
        self.backend.load(request)
        load_s = time.perf_counter() - t0
        self.tel = Telemetry(msg.telemetry, device_index=msg.parallel.devices(device.index or 0), trace_dir=msg.trace_dir)
        # The device's own ceilings, measured once per GPU and driver (cached): MBU and MFU divide by
        # them. Not in the oracle's worker, whose telemetry is off: nothing of it is measured.
        ceilings = calibrate(device, msg.cache_dir) if device.type == "cuda" and msg.telemetry.nvml else None
        return {"load_s": load_s, "backend_version": self.backend.version(), "telemetry_env": self.tel.env(),
                "columns": dict(cls.columns_schema), "ceilings": ceilings.to_dict() if ceilings else None}

    def point(self, msg: M.RunPoint) -> dict:
        row, samples, pt = measure(self.backend, self.spec, msg.workload, msg.point_id, self.tel, self.phase)
        out = {"row": row, "samples": samples, "telemetry": _frame(pt.samples()), "kernels": _frame(pt.kernels())}
        if msg.reference is not None:
            self.phase("agreement")
            row.update(agreement(self.backend, self.spec, msg.workload, msg.reference))
        return out

    def reference(self, msg: M.Reference) -> dict:
        x = prompts(self.spec, msg.seed, msg.context_len, msg.seqs)
        return {"tokens": self.backend.generate(x, msg.tokens).tokens.tolist()}

    def close(self) -> None:
        if self.tel is not None:
            self.tel.close()
        if self.backend is not None:
            self.backend.close()


def main(argv: list[str]) -> None:
    commands = os.fdopen(int(argv[1]), "r")
    records = os.fdopen(int(argv[2]), "w")

    def send(msg) -> None:
        records.write(M.encode(msg, default=_plain) + "\n")
        records.flush()

    send(M.Hello(os.getpid()))
    server = Server(send)
    for line in commands:
        msg = M.decode(line)
        if isinstance(msg, M.Close):
            break
        send(server.handle(msg))
    server.close()


if __name__ == "__main__":
    main(sys.argv)
