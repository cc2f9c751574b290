"""What telemetry costs a decode step, and how well a profiled window accounts for the step.

    python benchmarks/telemetry_overhead.py                                   # a launch-bound stand-in
    python benchmarks/telemetry_overhead.py --backend triton_mxfp4 --model gpt-oss-20b

Modes: `off` (no NVML, no NVTX), `nvtx` (ranges only), `nvml` (the default telemetry: NVML
sampling process and NVTX), `nvml_thread` (the same NVML reads from a thread of this process, the
design the sampling process replaced), `profiler` (default telemetry plus torch.profiler). Each
round runs one generate per mode through StepBackend.generate with the point's phases, the
harness's own timing path (CUDA events per step); the order of modes rotates from round to round
so that drift on a shared GPU and host hits them alike. Prints per mode the median over rounds of
each round's median step time, its ratio to `off`, and the median of the per-round ratios to the
same round's `off` (robust to drift between rounds; the design asks NVML-on to stay within 1%),
then, per profiled window of --profile-steps decode steps, kernels.parquet's decode
rows per step by category against the unprofiled step. Needs a CUDA GPU; imports only torch,
pynvml, pandas and this repository (no hydra; nvtx optional).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.engine import LoadRequest, StepBackend  # noqa: E402
from harness.telemetry import Telemetry, nvml_sampler  # noqa: E402

MODES = {
    "off": {"nvml": False, "nvtx": False},
    "nvtx": {"nvml": False, "nvtx": True},
    "nvml": {"nvml": True, "nvtx": True},
    "nvml_thread": {"nvml": False, "nvtx": True},
    "profiler": {"nvml": True, "nvtx": True},
}


@contextlib.contextmanager
def sampler_thread(period_s: float):
    """The sampling process's reads, every period_s, from a thread of this process."""
    handles = nvml_sampler.open_devices([torch.cuda.current_device()])
    readers = [nvml_sampler.supported_readers(h) for h in handles]
    stop, ticks = threading.Event(), []

    def run():
        next_t = time.perf_counter()
        while not stop.wait(max(0.0, next_t - time.perf_counter())):
            ticks.append(nvml_sampler.tick(handles, readers))
            next_t = max(next_t + period_s, time.perf_counter())

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield ticks
    finally:
        stop.set()
        thread.join()
        nvml_sampler.pynvml.nvmlShutdown()


class DecodeLike(StepBackend):
    """Per layer an RMSNorm, three bf16 GEMMs and an activation: a step of many small, launch-bound
    kernels, like an eager decode step."""

    def __init__(self, layers: int = 24, hidden: int = 2880):
        super().__init__(layers=layers, hidden=hidden)
        self.device = torch.device("cuda")
        g = torch.Generator(device="cuda").manual_seed(0)
        self.w = [torch.randn(3, hidden, hidden, device="cuda", dtype=torch.bfloat16, generator=g) * hidden**-0.5
                  for _ in range(layers)]

    def load(self, request):
        pass

    def _layers(self, x):
        for w in self.w:
            h = torch.nn.functional.rms_norm(x, (x.shape[-1],))
            x = x + torch.nn.functional.silu(h @ w[0]) * (h @ w[1]) @ w[2]
        return x

    @torch.inference_mode()
    def prefill(self, prompts):
        x = torch.randn(*prompts.shape, self.w[0].shape[-1], device="cuda", dtype=torch.bfloat16)
        return self._layers(x)[:, -1].float().argmax(-1)

    @torch.inference_mode()
    def decode(self, tokens):
        x = torch.randn(tokens.shape[0], self.w[0].shape[-1], device="cuda", dtype=torch.bfloat16)
        return self._layers(x).float().argmax(-1)


def make_backend(args) -> StepBackend:
    if args.backend == "decode_like":
        return DecodeLike()
    from harness.model.spec import get_spec

    if args.backend == "torch_ref":
        from backends.torch_ref import TorchRef as Engine
    else:
        from backends.triton_mxfp4 import TritonMxfp4 as Engine
    backend = Engine()
    backend.load(LoadRequest(get_spec(args.model), args.quant, None, max_batch_size=args.batch,
                             max_seq_len=args.context + max(args.steps, *args.profile_steps) + 2))
    return backend


def profiled_window(backend, prompts, steps: int, off_ms: float) -> None:
    """One generate of `steps` decode steps under the profiler: its decode rows per step by
    category, their sum (kernels + launch gaps = the profiled phase) against the unprofiled step."""
    tel = Telemetry({"nvml": False, "profile_steps": steps})
    with tel.point(f"window{steps}", categorize=backend.kernel_category) as pt:
        with pt.profile():
            gen = backend.generate(prompts, steps + 1, phases=pt.phases)
    tel.close()
    k = pt.kernels()
    decode = k[k.phase == "decode"]
    per_cat = decode.groupby("category").total_ms.sum().sort_values(ascending=False) / steps
    total = per_cat.sum()
    print(f"\n# profiled window, {steps} decode steps: kernels + gaps {total:.4f} ms a step, "
          f"{total / off_ms - 1:+.1%} against the unprofiled step ({off_ms:.4f} ms); the profiled "
          f"steps' own median {statistics.median(gen.step_ms):.4f} ms")
    print("| category | ms a step | share |")
    print("| --- | --- | --- |")
    for cat, ms in per_cat.items():
        print(f"| {cat} | {ms:.4f} | {ms / total:.1%} |")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--backend", choices=["decode_like", "torch_ref", "triton_mxfp4"], default="decode_like")
    p.add_argument("--model", default="gpt-oss-20b")
    p.add_argument("--quant", default="mxfp4")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--context", type=int, default=128)
    p.add_argument("--steps", type=int, default=200, help="decode steps per generate")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--period-ms", type=float, default=20.0)
    p.add_argument("--profile-steps", type=int, nargs="*", default=[8, 32],
                   help="decode steps of the profiled windows whose kernel sums are compared with the step")
    args = p.parse_args()
    if not torch.cuda.is_available():
        sys.exit("telemetry_overhead: needs a CUDA GPU")

    backend = make_backend(args)
    prompts = torch.randint(0, 1000, (args.batch, args.context))
    backend.generate(prompts, 8)  # warm-up: allocator, cuBLAS handles, autotuning, graph capture
    tels = {mode: Telemetry({**cfg, "period_ms": args.period_ms, "profile_steps": args.steps})
            for mode, cfg in MODES.items()}
    rounds: dict[str, list[float]] = {m: [] for m in MODES}  # per mode, each round's median step
    info = {}
    order = list(MODES)
    for r in range(args.rounds):
        for mode in order[r % len(order):] + order[:r % len(order)]:
            tel = tels[mode]
            with tel.point(f"{mode}-{r}", categorize=backend.kernel_category) as pt:
                if mode == "profiler":
                    with pt.profile():
                        gen = backend.generate(prompts, args.steps + 1, phases=pt.phases)
                elif mode == "nvml_thread":
                    with sampler_thread(args.period_ms / 1e3):
                        gen = backend.generate(prompts, args.steps + 1, phases=pt.phases)
                else:
                    gen = backend.generate(prompts, args.steps + 1, phases=pt.phases)
            rounds[mode].append(statistics.median(gen.step_ms))
            if mode == "nvml":
                samples = pt.samples()
                info = {"gpu": tel.env().get("gpu_name"), "power_valid": pt.columns()["power_valid"],
                        "samples": len(samples),
                        "sample_period_ms": 1e3 * samples.t_s.diff().median() if len(samples) > 1 else None}
    for tel in tels.values():
        tel.close()

    off = statistics.median(rounds["off"])
    print(f"# telemetry overhead: {info.get('gpu') or torch.cuda.get_device_name()}, torch {torch.__version__}, "
          f"{args.backend}{' ' + args.model if args.backend != 'decode_like' else ''}, batch {args.batch}, "
          f"context {args.context}, {args.steps} steps x {args.rounds} rounds, period {args.period_ms} ms")
    print(f"# sampler (last nvml round): {info.get('samples')} samples, median period "
          f"{info.get('sample_period_ms')} ms, power_valid {info.get('power_valid')}")
    print("| mode | step ms (median of rounds) | rounds min / max | ratio to off | per-round ratio (median) |")
    print("| --- | --- | --- | --- | --- |")
    for mode, ms in rounds.items():
        med = statistics.median(ms)
        paired = statistics.median(m / o for m, o in zip(ms, rounds["off"]))
        print(f"| {mode} | {med:.4f} | {min(ms):.4f} / {max(ms):.4f} | {med / off:.4f} | {paired:.4f} |")
    for n in args.profile_steps:
        profiled_window(backend, prompts, n, off)
    backend.close()


if __name__ == "__main__":
    main()
