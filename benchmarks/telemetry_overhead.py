"""What telemetry costs a decode step: telemetry off, NVML sampling on, the profiler on, in one run.

    python benchmarks/telemetry_overhead.py                           # a decode-like stand-in
    python benchmarks/telemetry_overhead.py --backend torch_ref --model gpt-oss-20b

Each round runs one generate per mode through StepBackend.generate with the point's phases, the
harness's own timing path (CUDA events per step); modes alternate within a round so drift on a
shared GPU hits them alike. Prints the median step time per mode and its ratio to `off`; the
design asks NVML-on to stay within 1% of off. Needs a CUDA GPU; imports only torch, pynvml, pandas
and this repository (no hydra, no nvtx required).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backends.base import LoadRequest, StepBackend  # noqa: E402
from harness.telemetry import Telemetry  # noqa: E402

MODES = {
    "off": {"nvml": False, "nvtx": False},
    "nvml": {"nvml": True, "nvtx": True},
    "profiler": {"nvml": True, "nvtx": True},
}


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
    from backends.torch_ref import TorchRef
    from harness.model.spec import get_spec

    backend = TorchRef()
    backend.load(LoadRequest(get_spec(args.model), args.quant, None, max_batch_size=args.batch,
                             max_seq_len=args.context + args.steps + 1))
    return backend


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--backend", choices=["decode_like", "torch_ref"], default="decode_like")
    p.add_argument("--model", default="gpt-oss-20b")
    p.add_argument("--quant", default="mxfp4")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--context", type=int, default=128)
    p.add_argument("--steps", type=int, default=200, help="decode steps per generate")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--period-ms", type=float, default=20.0)
    args = p.parse_args()
    if not torch.cuda.is_available():
        sys.exit("telemetry_overhead: needs a CUDA GPU")

    backend = make_backend(args)
    prompts = torch.randint(0, 1000, (args.batch, args.context))
    backend.generate(prompts, 8)  # warm-up: allocator, cuBLAS handles, autotuning
    steps: dict[str, list[float]] = {m: [] for m in MODES}
    info = {}
    for r in range(args.rounds):
        for mode, cfg in MODES.items():
            tel = Telemetry({**cfg, "period_ms": args.period_ms, "profile_steps": args.steps})
            with tel.point(f"{mode}-{r}") as pt:
                if mode == "profiler":
                    with pt.profile():
                        gen = backend.generate(prompts, args.steps + 1, phases=pt.phases)
                else:
                    gen = backend.generate(prompts, args.steps + 1, phases=pt.phases)
            steps[mode] += gen.step_ms
            if mode == "nvml":
                samples = pt.samples()
                info = {"gpu": tel.env().get("gpu_name"), "power_valid": pt.columns()["power_valid"],
                        "sample_period_ms": 1e3 * samples.t_s.diff().median() if len(samples) > 1 else None}
            tel.close()

    off = statistics.median(steps["off"])
    print(f"# telemetry overhead: {info.get('gpu') or torch.cuda.get_device_name()}, torch {torch.__version__}, "
          f"{args.backend}{' ' + args.model if args.backend != 'decode_like' else ''}, batch {args.batch}, "
          f"{args.steps} steps x {args.rounds} rounds, period {args.period_ms} ms")
    print(f"# sampler: median period {info.get('sample_period_ms')} ms, power_valid {info.get('power_valid')}")
    print("| mode | step ms (median) | step ms (mean) | ratio to off |")
    print("| --- | --- | --- | --- |")
    for mode, ms in steps.items():
        med = statistics.median(ms)
        print(f"| {mode} | {med:.4f} | {statistics.fmean(ms):.4f} | {med / off:.4f} |")
    backend.close()


if __name__ == "__main__":
    main()
