"""YaRN rotary frequencies of GPT-OSS: one definition for the oracle and every engine of ours."""

from __future__ import annotations

import math

import torch

from harness.model.spec import ModelSpec


def yarn(spec: ModelSpec) -> tuple[float, torch.Tensor]:
    """(concentration, inv_freq [head_dim/2]) of YaRN, as openai/gpt-oss computes them: NTK by parts,
    dimensions below `low` keep their frequency (extrapolation), those above `high` are slowed by
    `factor` (interpolation), with a linear ramp between."""
    r, d = spec.rope_scaling, spec.head_dim
    freq = spec.rope_theta ** (torch.arange(0, d, 2, dtype=torch.float32) / d)
    if r.factor <= 1.0:
        return 1.0, 1.0 / freq
    d_half = d / 2
    low = d_half * math.log(r.original_max_position_embeddings / (r.beta_fast * 2 * math.pi)) / math.log(spec.rope_theta)
    high = d_half * math.log(r.original_max_position_embeddings / (r.beta_slow * 2 * math.pi)) / math.log(spec.rope_theta)
    if not 0 < low < high < d_half - 1:
        raise ValueError(f"{spec.name}: YaRN correction range low={low:.3f}, high={high:.3f} is outside "
                         f"(0, head_dim/2 - 1 = {d_half - 1}); check rope_scaling and head_dim")
    ramp = ((torch.arange(d_half, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
    mask = 1 - ramp  # 1 where the dimension extrapolates
    inv_freq = 1.0 / (r.factor * freq) * (1 - mask) + 1.0 / freq * mask
    return 0.1 * math.log(r.factor) + 1.0, inv_freq
