"""Builds an offline bundle of Python packages for an air-gapped GPU host.

The bundle is a tree pre-installed for the host's interpreter (`pip install --target`), packed as
tar.xz and split into chunks small enough to carry (`bundle.tar.xz.part000`, ...), with
`SHA256SUMS`, `CONTENTS.txt` (what is in it, what was left out and why) and `install.sh TARGET_DIR`,
which verifies, unpacks and prints the environment to use.

Resolution is against what the host already has: its `pip freeze` (`--constraints`) pins the
resolve, and no distribution named there is downloaded or bundled, so the host's torch and CUDA
libraries are never replaced. pip resolves for the host's interpreter and platform from metadata
alone (`pip install --dry-run --report`; PyPI serves wheel metadata apart, PEP 658), then downloads
only the wheels the bundle keeps. docs/offline-bundles.md has the vLLM 0.26.0 recipe and why each
part it leaves out is never reached on Hopper.

    python scripts/offline_bundle.py --python 3.12 --platform manylinux_2_28_x86_64 \
        --constraints HOST_FREEZE.txt --chunk-mb 60 --out DIR PACKAGE==VERSION...

Needs pip >= 22.2 in the interpreter that runs it; nothing else.
"""
import argparse
import fnmatch
import hashlib
import json
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ARCHIVE = "bundle.tar.xz"
TIKTOKEN_FOLDER = "tiktoken_encodings"  # inside the tree, beside the packages
# Switches an air-gapped engine host needs or is better off with (docs/offline-bundles.md).
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1",
               "VLLM_USE_FLASHINFER_SAMPLER": "0"}


FREEZE = "HOST_FREEZE.txt"  # the --constraints file, in the bundle: install.sh compares the host with it
# install.sh's comparison of the host's `pip freeze` with FREEZE: a bundle resolved against other
# versions than the host has may not import there, so it says which (a warning: the unpack goes on).
COMPARE_FREEZE = r"""
import re, subprocess, sys

def pins(text):
    found = {}
    for line in text.splitlines():
        m = re.match(r"([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:==|@)\s*(\S+)", line.strip())
        if m:
            found[re.sub(r"[-_.]+", "-", m.group(1)).lower()] = m.group(2)
    return found

freeze, name = sys.argv[1], sys.argv[2]
try:
    host = pins(subprocess.run([sys.executable, "-m", "pip", "freeze"], capture_output=True, text=True,
                               check=True).stdout)
except (OSError, subprocess.CalledProcessError) as e:
    sys.exit(f"install.sh: the host's pip freeze failed ({e}): not compared with {name}")
frozen = pins(open(freeze).read())
differ = [f"{n} {v} -> {host[n]}" if n in host else f"{n} {v} missing"
          for n, v in sorted(frozen.items()) if host.get(n) != v]
if differ:
    shown = ", ".join(differ[:8]) + (", ..." if len(differ) > 8 else "")
    print(f"install.sh: warning: the host differs from {name}, the freeze this bundle was resolved against, "
          f"in {len(differ)} of {len(frozen)}: {shown}; if an import fails, rebuild the bundle from this "
          f"host's pip freeze")
else:
    print(f"install.sh: the host has the {len(frozen)} distributions of {name}, the freeze this bundle was "
          f"resolved against")
"""


class BundleError(Exception):
    """A problem with the input or a failed step, said in one line."""


def canonical_name(name):
    """PEP 503 normalised project name: `Foo_Bar.baz` -> `foo-bar-baz`."""
    return re.sub(r"[-_.]+", "-", name).lower()


def read_host_freeze(path, unpin=()):
    """The host's `pip freeze` -> (names of every distribution on it, constraint lines for pip).

    `name==1.0+cu130` is loosened to `name==1.0`: a local build (PyTorch's index) is not on PyPI,
    and only its public release's metadata is needed to resolve; the host's copy is what runs.
    `name @ url` and editable lines name a distribution the host has but pin nothing. Names in
    `unpin` are left out of the constraints but are still the host's (never bundled).
    """
    if not path.is_file():
        raise BundleError(f"--constraints: no such file: {path}")
    unpin = {canonical_name(n) for n in unpin}
    names, constraints = set(), []
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line or line.startswith("-"):  # comments, options, `-e` checkouts
            continue
        pinned = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?\s*==\s*([^\s;+]+)(\+\S*)?", line)
        named = re.match(r"([A-Za-z0-9][A-Za-z0-9._-]*)", line)
        if not named:
            raise BundleError(f"--constraints {path}: cannot read the line {line!r}")
        name = canonical_name(named.group(1))
        names.add(name)
        if pinned and name not in unpin:
            constraints.append(f"{name}=={pinned.group(3)}")
    return names, constraints


def run_pip(args, what):
    """Runs `python -m pip ARGS`; a failure becomes one line with pip's last error."""
    done = subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True)
    if done.returncode == 0:
        return
    output = (done.stdout + done.stderr).splitlines()
    lines = [ln.strip() for ln in output if ln.strip()]
    # The last ERROR line that says something: pip ends a conflict with a help link only.
    errors = [ln for ln in lines if ln.startswith("ERROR:") and "ResolutionImpossible: for help" not in ln]
    message = (errors or lines or [f"exit status {done.returncode}"])[-1].removeprefix("ERROR: ")
    if "The conflict is caused by:" in output:  # which requirements collide (a host pin?): the fix
        after = [ln.strip() for ln in output[output.index("The conflict is caused by:") + 1:]]
        message = message.rstrip(".") + ": " + "; ".join(after[:after.index("")] if "" in after else after)
    raise BundleError(f"pip {what} failed: {message}")


def platform_tags(platforms):
    """Every wheel platform tag a host with these tags installs.

    With `--platform`, pip takes exactly the tags given, while on the host itself it accepts every
    older glibc too: `manylinux_2_39_x86_64` alone would miss wheels tagged `manylinux_2_28` or
    `manylinux2014` (blake3's). A `manylinux_2_X_ARCH` tag is expanded to 2_X ... 2_17 and the
    legacy aliases, as the host's pip would accept them.
    """
    legacy = {17: "manylinux2014", 12: "manylinux2010", 5: "manylinux1"}
    tags = []
    for platform in platforms:
        glibc = re.fullmatch(r"manylinux_2_(\d+)_(\w+)", platform)
        if not glibc:
            tags.append(platform)
            continue
        minor, arch = int(glibc.group(1)), glibc.group(2)
        for m in range(minor, 4, -1):
            tags.append(f"manylinux_2_{m}_{arch}")
            if m in legacy:
                tags.append(f"{legacy[m]}_{arch}")
    return list(dict.fromkeys(tags))


def target_options(python, platforms):
    """pip's options that select wheels for the host's interpreter instead of this one."""
    options = ["--only-binary=:all:", "--python-version", python, "--implementation", "cp"]
    for platform in platform_tags(platforms):
        options += ["--platform", platform]
    return options


def resolve(requirements, constraints_file, python, platforms, work):
    """[(name, version)] of every distribution the requirements need on the host, from metadata."""
    report = work / "resolve.json"
    run_pip(["install", "--dry-run", "--report", str(report), "--target", str(work / "unused"),
             *target_options(python, platforms), "-c", str(constraints_file), *requirements], "resolve")
    return [(canonical_name(item["metadata"]["name"]), item["metadata"]["version"])
            for item in json.loads(report.read_text())["install"]]


def select(resolved, host_names, drop_patterns):
    """Splits the resolve into (kept, left_out): left_out pairs each dropped pin with its reason."""
    drop_patterns = [canonical_name(p) for p in drop_patterns]
    unused = [p for p in drop_patterns if not any(fnmatch.fnmatch(n, p) for n, _ in resolved)]
    for pattern in unused:
        print(f"note: --drop-package {pattern} matches no distribution of the resolve", file=sys.stderr)
    kept, left_out = [], []
    for name, version in sorted(resolved):
        if name in host_names:
            left_out.append((f"{name}=={version}", "on the host"))
        elif any(fnmatch.fnmatch(name, p) for p in drop_patterns):
            left_out.append((f"{name}=={version}", "--drop-package"))
        else:
            kept.append((name, version))
    return kept, left_out


def install_tree(kept, python, platforms, work):
    """Downloads the kept wheels and installs them, without dependencies, into a tree for the host."""
    wheels, tree = work / "wheels", work / "tree"
    wheels.mkdir()
    tree.mkdir()
    if not kept:
        return tree
    pins = [f"{name}=={version}" for name, version in kept]
    run_pip(["download", "--quiet", "--no-deps", "-d", str(wheels), *target_options(python, platforms), *pins],
            "download")
    # --no-compile: bytecode of this interpreter is no use to the host's; the host writes its own.
    run_pip(["install", "--quiet", "--no-deps", "--no-index", "--no-compile", "--target", str(tree),
             *target_options(python, platforms), *sorted(str(w) for w in wheels.glob("*.whl"))], "install")
    # Console scripts carry this machine's interpreter in their shebang: useless on the host.
    shutil.rmtree(tree / "bin", ignore_errors=True)
    # direct_url.json names the wheel's path in this machine's scratch folder: it would show the
    # host's `pip freeze` a file URL that does not exist there, and make two builds differ.
    for direct_url in tree.glob("*.dist-info/direct_url.json"):
        direct_url.unlink()
        record = direct_url.with_name("RECORD")
        lines = record.read_text().splitlines(keepends=True)
        record.write_text("".join(ln for ln in lines if not ln.startswith(f"{direct_url.parent.name}/direct_url.json,")))
    return tree


def remove_excluded(tree, globs):
    """Deletes files of the tree whose path (relative, with /) matches a glob; returns [(path, bytes)]."""
    removed = []
    for glob in globs:
        hits = [p for p in sorted(tree.rglob("*")) if p.is_file() and fnmatch.fnmatch(p.relative_to(tree).as_posix(), glob)]
        if not hits:
            print(f"note: --exclude {glob} matches no file of the tree", file=sys.stderr)
        for path in hits:
            removed.append((path.relative_to(tree).as_posix(), path.stat().st_size))
            path.unlink()
    return removed


def pack(tree, archive):
    """tar.xz of the tree with sorted members and fixed owners and times: same tree, same bytes."""

    def entries(folder):
        for path in sorted(folder.iterdir(), key=lambda p: p.name):
            yield path
            if path.is_dir() and not path.is_symlink():
                yield from entries(path)

    def normalise(info):
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        info.mtime = 0
        return info

    with tarfile.open(archive, "w:xz") as tar:
        for path in entries(tree):
            tar.add(path, arcname=path.relative_to(tree).as_posix(), recursive=False, filter=normalise)


def split(archive, chunk_bytes, out):
    """Cuts the archive into `ARCHIVE.partNNN` files of chunk_bytes (the last one shorter)."""
    parts = []
    with open(archive, "rb") as src:
        while block := src.read(chunk_bytes):
            part = out / f"{ARCHIVE}.part{len(parts):03d}"
            part.write_bytes(block)
            parts.append(part)
    return parts


def write_sha256sums(parts, out):
    lines = [f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.name}\n" for p in parts]
    (out / "SHA256SUMS").write_text("".join(lines))


def install_script(with_tiktoken):
    """install.sh: verify every chunk, unpack into TARGET_DIR, print the environment (stdout only)."""
    env = " ".join(f"{k}={v}" for k, v in OFFLINE_ENV.items())
    tiktoken = f'echo "export TIKTOKEN_ENCODINGS_BASE=$target/{TIKTOKEN_FOLDER}"\n' if with_tiktoken else ""
    return f"""#!/usr/bin/env bash
# Installs this offline bundle: bash install.sh TARGET_DIR
# Verifies every chunk against SHA256SUMS, unpacks into TARGET_DIR with the host's python3 (no xz
# binary needed) and prints the environment to use on stdout, so that
#   eval "$(bash install.sh /opt/bundle)"
# installs and sets it in one line. Written by scripts/offline_bundle.py.
set -euo pipefail
if [ $# -ne 1 ]; then echo "usage: bash install.sh TARGET_DIR" >&2; exit 2; fi
here=$(cd "$(dirname "${{BASH_SOURCE[0]}}")" && pwd)
parts=()
while read -r sum name; do
  [ -f "$here/$name" ] || {{ echo "install.sh: chunk $name is missing from $here" >&2; exit 1; }}
  (cd "$here" && echo "$sum  $name" | sha256sum -c --status -) \\
    || {{ echo "install.sh: chunk $name does not match SHA256SUMS (damaged or incomplete copy): copy it again" >&2; exit 1; }}
  parts+=("$here/$name")
done < "$here/SHA256SUMS"
echo "install.sh: ${{#parts[@]}} chunks verified" >&2
"${{PYTHON:-python3}}" - "$here/{FREEZE}" {FREEZE} >&2 <<'COMPARE' || true
{COMPARE_FREEZE.strip()}
COMPARE
mkdir -p "$1"
target=$(cd "$1" && pwd)
cat "${{parts[@]}}" | "${{PYTHON:-python3}}" -c '
import sys, tarfile
with tarfile.open(fileobj=sys.stdin.buffer, mode="r|xz") as tar:
    tar.extractall(sys.argv[1], **({{"filter": "data"}} if hasattr(tarfile, "data_filter") else {{}}))
' "$target"
echo "install.sh: unpacked into $target" >&2
echo "export PYTHONPATH=$target:\\$PYTHONPATH"
echo "export {env}"
{tiktoken}"""


def write_contents(out, requirements, kept, left_out, removed):
    lines = [f"# requested: {' '.join(requirements)}", "# bundled:"]
    lines += [f"{name}=={version}" for name, version in kept]
    lines += ["# left out:"] + [f"# {pin}  ({why})" for pin, why in left_out]
    lines += [f"# {path}  (--exclude, {size} bytes)" for path, size in removed]
    (out / "CONTENTS.txt").write_text("\n".join(lines) + "\n")


def build(args):
    if args.chunk_mb <= 0:
        raise BundleError(f"--chunk-mb must be > 0, got {args.chunk_mb}")
    chunk_bytes = int(args.chunk_mb * 2**20)
    if chunk_bytes < 1:
        raise BundleError(f"--chunk-mb {args.chunk_mb} is less than one byte")
    if not re.fullmatch(r"\d+\.\d+", args.python):
        raise BundleError(f"--python must be MAJOR.MINOR such as 3.12, got {args.python!r}")
    if args.tiktoken_dir and not any(args.tiktoken_dir.glob("*.tiktoken")):
        raise BundleError(f"--tiktoken-dir {args.tiktoken_dir}: no *.tiktoken file there")
    host_names, constraints = read_host_freeze(args.constraints, args.unpin)
    out = args.out
    if out.exists() and any(out.iterdir()):
        raise BundleError(f"--out {out} is not empty: name a new folder")

    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".build-", dir=out) as scratch:
        work = Path(scratch)
        constraints_file = work / "host-constraints.txt"
        constraints_file.write_text("".join(c + "\n" for c in constraints))
        resolved = resolve(args.requirements, constraints_file, args.python, args.platform, work)
        kept, left_out = select(resolved, host_names, args.drop_package)
        tree = install_tree(kept, args.python, args.platform, work)
        removed = remove_excluded(tree, args.exclude)
        if args.tiktoken_dir:
            shutil.copytree(args.tiktoken_dir, tree / TIKTOKEN_FOLDER)
        pack(tree, work / ARCHIVE)
        parts = split(work / ARCHIVE, chunk_bytes, out)
    write_sha256sums(parts, out)
    shutil.copyfile(args.constraints, out / FREEZE)
    install = out / "install.sh"
    install.write_text(install_script(with_tiktoken=bool(args.tiktoken_dir)))
    install.chmod(0o755)
    write_contents(out, args.requirements, kept, left_out, removed)
    size = sum(p.stat().st_size for p in parts)
    print(f"{out}: {len(kept)} distributions bundled, {len(left_out)} left out "
          f"({sum(why == 'on the host' for _, why in left_out)} on the host), {len(removed)} files excluded; "
          f"{size / 2**20:.1f} MiB in {len(parts)} chunks; CONTENTS.txt lists them")


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("requirements", nargs="+", metavar="PACKAGE==VERSION")
    parser.add_argument("--python", required=True, help="the host's interpreter version, e.g. 3.12")
    parser.add_argument("--platform", action="append", required=True,
                        help="a wheel platform tag of the host, e.g. manylinux_2_28_x86_64 (repeatable)")
    parser.add_argument("--constraints", type=Path, required=True,
                        help="the host's `pip freeze`: pins the resolve; nothing named there is bundled")
    parser.add_argument("--chunk-mb", type=float, default=60.0, help="chunk size in MiB (default 60)")
    parser.add_argument("--exclude", action="append", default=[], metavar="GLOB",
                        help="delete files of the installed tree whose relative path matches (repeatable)")
    parser.add_argument("--drop-package", action="append", default=[], metavar="NAME",
                        help="leave a distribution (or a glob of names) out of the bundle (repeatable)")
    parser.add_argument("--unpin", action="append", default=[], metavar="NAME",
                        help="resolve without the host's pin of NAME; the host's copy still runs (repeatable)")
    parser.add_argument("--tiktoken-dir", type=Path,
                        help="a folder of *.tiktoken encodings to bundle (install.sh prints TIKTOKEN_ENCODINGS_BASE)")
    parser.add_argument("--out", type=Path, required=True, help="a new or empty folder for the bundle")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    try:
        build(args)
    except BundleError as error:
        print(f"offline_bundle: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
