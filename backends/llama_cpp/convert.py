"""Run llama.cpp's own converter (convert_hf_to_gguf.py of the built source) on one checkpoint:
`python -m backends.llama_cpp.convert SOURCE_DIR MODEL_DIR OUTFILE`.

MXFP4 experts stay MXFP4 (the converter repacks `*_blocks`/`*_scales` as GGML_TYPE_MXFP4); every
other tensor is written as bf16, the checkpoint's own type. One thing is set here: the converter
names the pre-tokenizer by hashing the ids its test text encodes to, and knows only published
tokenizers; for the tokenizer written for synthetic checkpoints (backends.llama_cpp.tokenizer,
marked in its tokenizer_config.json) the name is the one that tokenizer was built with.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(source: str, model: str, outfile: str) -> None:
    sys.path[:0] = [source, str(Path(source) / "gguf-py")]
    import convert_hf_to_gguf
    from conversion.base import TextModel

    from backends.llama_cpp.tokenizer import MARKER, PRE_TOKENIZER

    config = Path(model) / "tokenizer_config.json"
    if config.is_file() and json.loads(config.read_text()).get(MARKER):
        TextModel.get_vocab_base_pre = lambda self, tokenizer: PRE_TOKENIZER
    sys.argv = ["convert_hf_to_gguf.py", model, "--outfile", outfile, "--outtype", "bf16"]
    convert_hf_to_gguf.main()


if __name__ == "__main__":
    main(*sys.argv[1:])
