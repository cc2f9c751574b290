"""The tokenizer a synthetic checkpoint is given for llama.cpp: synthetic checkpoints carry none,
and llama.cpp's converter builds the GGUF's vocabulary from the checkpoint's HF tokenizer.

Not o200k_harmony: a byte-level BPE made to fit the model's vocabulary exactly, whose every
token is ASCII text. The harness only ever sends and reads token ids, so which text a token
stands for does not matter, except in one place: llama-server holds back a token whose text ends
inside a UTF-8 character and never streams its id, so a vocabulary with byte tokens (o200k has
them) would lose tokens from the stream the moment a random model samples one. With ASCII tokens
every generated id is streamed.

Layout, for any vocab_size: ids 0-127 the ASCII bytes (so any ASCII text tokenizes), then merged
tokens (each the concatenation of two earlier ones, with its merge rule) up to the first of the
spec's bos/eos/pad ids, those three as control tokens, and any id left over after them an unused
placeholder. The pre-tokenizer is o200k's, the split that llama.cpp calls "gpt-4o".
"""

from __future__ import annotations

import json
from pathlib import Path

from harness.model.spec import ModelSpec

PRE_TOKENIZER = "gpt-4o"  # llama.cpp's name for o200k's pre-tokenizer (tokenizer.ggml.pre)
MARKER = "gptoss_bench_synthetic_tokenizer"  # in tokenizer_config.json: the converter may trust our pre-tokenizer
# o200k's split pattern (tiktoken's pat_str for o200k_base), as HF tokenizers spells a Split pre-tokenizer.
O200K_PATTERN = "|".join([
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
    r"\p{N}{1,3}", r" ?[^\s\p{L}\p{N}]+[\r\n/]*", r"\s*[\r\n]+", r"\s+(?!\S)", r"\s+",
])


def _byte_chars() -> list[str]:
    """GPT-2's byte-level alphabet, for bytes 0-127: printable ASCII stands for itself, the others
    for the characters 256 + n that byte-level BPE uses in their place."""
    out, n = [], 0
    for b in range(128):
        if 33 <= b <= 126:
            out.append(chr(b))
        else:
            out.append(chr(256 + n))
            n += 1
    return out


def vocabulary(spec: ModelSpec) -> tuple[list[str], list[tuple[str, str]]]:
    """The normal tokens (ids 0 .. first special - 1, in the byte-level alphabet) and their merges."""
    n = min(spec.bos_token_id, spec.eos_token_id, spec.pad_token_id)
    if n < 128:
        raise ValueError(f"{spec.name}: the special token ids start at {n}; the synthetic tokenizer needs 128 "
                         f"ids below them for the ASCII bytes")
    # Letters and the space (Ġ) first, so that the merged tokens are word-like; then every pair of
    # tokens so far, in order, until the vocabulary is full: deterministic for every size.
    tokens = _byte_chars()
    seen, merges = set(tokens), []
    alphabet = [c for c in tokens if c.isalnum()] + ["Ġ"]
    bases = list(alphabet)
    while len(tokens) < n:
        for a in list(bases):
            for b in alphabet:
                if len(tokens) == n:
                    break
                if a + b not in seen:
                    seen.add(a + b)
                    tokens.append(a + b)
                    merges.append((a, b))
            if len(tokens) == n:
                break
        bases = tokens[128:]
    return tokens, merges


def write_tokenizer(spec: ModelSpec, directory: Path) -> None:
    """tokenizer.json and tokenizer_config.json for `spec`'s vocabulary, into `directory`."""
    tokens, merges = vocabulary(spec)
    specials = {spec.bos_token_id: "<|startoftext|>", spec.eos_token_id: "<|return|>",
                spec.pad_token_id: "<|endoftext|>"}
    vocab = {t: i for i, t in enumerate(tokens)}
    added = [{"id": i, "content": text, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": True} for i, text in sorted(specials.items())]
    tokenizer = {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added, "normalizer": None,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": O200K_PATTERN}, "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]},
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": vocab, "merges": [[a, b] for a, b in merges]},
    }
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": specials[spec.bos_token_id],
              "eos_token": specials[spec.eos_token_id], "pad_token": specials[spec.pad_token_id],
              "model_max_length": spec.max_position_embeddings, MARKER: True}
    (directory / "tokenizer.json").write_text(json.dumps(tokenizer, ensure_ascii=False))
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=1))
