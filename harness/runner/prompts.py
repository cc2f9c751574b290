"""Synthetic prompts: seeded token ids, no special tokens.

Row i depends only on (seed, context_len, i), never on the batch size, so the first rows of a
batch of 64 are the rows of a batch of 2 and one agreement reference serves every batch size.
"""

from __future__ import annotations

import numpy as np
import torch

from harness.model.spec import ModelSpec


def prompts(spec: ModelSpec, seed: int, context_len: int, batch: int) -> torch.Tensor:
    """[batch, context_len] int64 token ids below the lowest special id (bos, eos, pad): GPT-OSS
    places its special tokens at the top of the vocabulary."""
    high = min(spec.bos_token_id, spec.eos_token_id, spec.pad_token_id, spec.vocab_size)
    rows = [np.random.default_rng([seed, context_len, i]).integers(0, high, context_len) for i in range(batch)]
    return torch.from_numpy(np.stack(rows)).long()
