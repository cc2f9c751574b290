"""Rebuilds tiktoken's `o200k_base.tiktoken` byte for byte from the npm package `tiktoken`.

An air-gapped host cannot download the encoding that openai-harmony (vLLM's gpt_oss serving path)
and llama.cpp's tokenizer tooling look for; a machine with npm can fetch the package
(`npm pack tiktoken@1.0.22`), whose `encoders/o200k_base.json` carries the same ranks in a compact
form: lines `<text> <first rank> <base64 token> <base64 token> ...`, ranks consecutive from the first.
The `.tiktoken` form is one `<base64 token> <rank>` line per token; openai-harmony checks its sha256.

    python scripts/tiktoken_from_npm.py tiktoken-1.0.22.tgz encodings/
"""
import argparse
import hashlib
import json
import sys
import tarfile
from pathlib import Path

SHA256 = {"o200k_base": "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d"}


def tiktoken_bytes(ranks: str) -> bytes:
    lines = []
    for line in ranks.splitlines():
        if not line:
            continue
        _, first, *tokens = line.split(" ")
        lines += [f"{token} {int(first) + i}\n" for i, token in enumerate(tokens)]
    return "".join(lines).encode()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("package", type=Path, help="the npm package: its .tgz or its unpacked folder")
    parser.add_argument("out", type=Path, help="folder for <encoding>.tiktoken")
    parser.add_argument("--encoding", default="o200k_base", choices=sorted(SHA256))
    args = parser.parse_args(argv)
    member = f"package/encoders/{args.encoding}.json"
    try:
        if args.package.is_dir():
            text = (args.package / "encoders" / f"{args.encoding}.json").read_text()
        else:
            with tarfile.open(args.package) as tar:
                text = tar.extractfile(member).read().decode()
        data = tiktoken_bytes(json.loads(text)["bpe_ranks"])
    except (OSError, KeyError, tarfile.TarError, json.JSONDecodeError, AttributeError) as e:
        print(f"tiktoken_from_npm: cannot read {member} from {args.package}: {e}", file=sys.stderr)
        return 2
    digest = hashlib.sha256(data).hexdigest()
    if digest != SHA256[args.encoding]:
        print(f"tiktoken_from_npm: {args.encoding} rebuilt with sha256 {digest}, expected "
              f"{SHA256[args.encoding]}: another package version? (1.0.22 is known to match)", file=sys.stderr)
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.encoding}.tiktoken").write_bytes(data)
    print(f"{args.out / f'{args.encoding}.tiktoken'}: {len(data):,} bytes, sha256 {digest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
