"""What a profiled kernel is for: one of CATEGORIES.

A kernel's category is, in order: what the backend says (Backend.kernel_category), the first
rule that matches its name, the first rule that matches the spans its launch sat in, innermost
first: torch operators (aten::rms_norm, aten::topk) and record_function ranges (an engine that
names its phases "attention", "routing", "w1+swiglu" gets its cuBLAS GEMMs and elementwise
kernels sorted too), else 'other'. No kernel is dropped.
"""

from __future__ import annotations

import re
from typing import Callable, Sequence

CATEGORIES = ("moe_gemm", "attention", "router", "norm", "rope", "lm_head", "sampling", "memcpy", "other")
LAUNCH_GAP = "launch_gap"  # the kernel and category of the idle-GPU line of a phase

# Earlier rules win: a MoE routing kernel ("topkGatingSoftmax" in a moe namespace) is the router.
RULES: list[tuple[str, re.Pattern]] = [(c, re.compile(p, re.IGNORECASE)) for c, p in [
    ("memcpy", r"\bmem(cpy|set)\b|^memcpy|^memset"),
    ("router", r"router|routing|top_?k|gating"),
    ("moe_gemm", r"moe|expert|matmul_ogs|mxfp4|swiglu|grouped_gemm"),
    ("attention", r"attn|attention|flash|fmha|sdpa|scaled_dot_product|\bmha\b|xqa|paged_kv"),
    ("rope", r"rope\b|rope_|rotary"),
    ("norm", r"rms_?norm|layer_?norm|\bnorm\b"),
    ("lm_head", r"lm_head|unembed|logits"),
    ("sampling", r"argmax|sampl|multinomial"),
]]


def rule_category(text: str) -> str | None:
    for category, pattern in RULES:
        if pattern.search(text):
            return category
    return None


def categorize(name: str, ranges: Sequence[str] = (), backend: Callable[[str], str | None] | None = None) -> str:
    """`ranges`: the record_function ranges around the kernel's launch, outermost first."""
    if backend is not None:
        category = backend(name)
        if category is not None:
            if category not in CATEGORIES:
                raise ValueError(f"backend put kernel {name!r} in category {category!r}; "
                                 f"categories are {', '.join(CATEGORIES)}")
            return category
    for text in (name, *reversed(ranges)):
        category = rule_category(text)
        if category is not None:
            return category
    return "other"
