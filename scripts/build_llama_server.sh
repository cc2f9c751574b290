#!/usr/bin/env bash
# Build llama.cpp's llama-server (backend=llama_cpp) from the llama.cpp source that the
# llama-cpp-python sdist vendors, for this host: CUDA for the GPU's own architecture when nvcc and
# a GPU are present, else the CPU build CI uses. Idempotent: a finished build is not redone.
#
#   scripts/build_llama_server.sh [cpu|cuda|auto]   build; prints the llama-server path last
#   scripts/build_llama_server.sh pack              write the stripped source tarball (~12 MB) that
#                                                   an offline host builds from (carry that one file)
#
# Sources, in build/llama.cpp/ (ignored): the stripped tarball llama.cpp-src-<ver>.tar.gz, else the
# sdist llama_cpp_python-<ver>.tar.gz, else the sdist is fetched with pip (needs the network).
# Outputs: build/llama.cpp/src-<ver>/ (the source, without the 75 MB of vocab GGUFs and 38 MB of
# docs), build/llama.cpp-<ver>-<cpu|cuda-smXX>/bin/llama-server and, beside it, build.json (which
# source, which commit, which flags, how long) that the backend reports as its version.
set -euo pipefail
cd "$(dirname "$0")/.."

VER=${LLAMA_CPP_PYTHON_VERSION:-0.3.36}
HERE=build/llama.cpp
SRC=$HERE/src-$VER
SDIST=$HERE/llama_cpp_python-$VER.tar.gz
PACKED=$HERE/llama.cpp-src-$VER.tar.gz
MODE=${1:-auto}
JOBS=${JOBS:-$(nproc)}

die() { echo "build_llama_server: $*" >&2; exit 2; }

case $MODE in cpu|cuda|auto|pack) ;; *) die "unknown mode '$MODE': expected cpu, cuda, auto or pack" ;; esac

unpack() {
    [[ -f $SRC/CMakeLists.txt ]] && return
    mkdir -p "$HERE"
    if [[ ! -f $PACKED && ! -f $SDIST ]]; then
        echo "fetching the llama-cpp-python $VER sdist (76 MB) into $HERE" >&2
        python3 -m pip download -q --no-binary :all: --no-deps "llama-cpp-python==$VER" -d "$HERE" \
            || die "no llama.cpp source: put $SDIST or $PACKED (made by '$0 pack' on a connected host) there"
    fi
    local tmp=$SRC.partial
    rm -rf "$tmp" && mkdir -p "$tmp"
    if [[ -f $PACKED ]]; then
        tar xzf "$PACKED" -C "$tmp" --strip-components=1
    else
        local top=llama_cpp_python-$VER
        # models/ (vocab GGUFs for llama.cpp's tests), docs/ and media/ are not needed to build or convert.
        tar xzf "$SDIST" -C "$tmp" --strip-components=3 \
            --exclude="$top/vendor/llama.cpp/models" --exclude="$top/vendor/llama.cpp/docs" \
            --exclude="$top/vendor/llama.cpp/media" --exclude="$top/vendor/llama.cpp/.git" \
            "$top/vendor/llama.cpp"
        # The sdist's submodule metadata names the vendored commit; keep it, the .git link is gone.
        tar xzOf "$SDIST" "$top/.git/modules/vendor/llama.cpp/HEAD" | cut -c1-12 > "$tmp/COMMIT"
    fi
    rm -rf "$SRC" && mv "$tmp" "$SRC"
}

unpack

if [[ $MODE == pack ]]; then
    rm -f "$PACKED.partial"
    tar czf "$PACKED.partial" -C "$HERE" --transform "s,^src-$VER,llama.cpp-src-$VER," "src-$VER"
    mv "$PACKED.partial" "$PACKED"
    echo "$PACKED ($(du -h "$PACKED" | cut -f1)): carry this file to the offline host, into the same place"
    exit 0
fi

NVCC=${NVCC:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}
if [[ $MODE == auto ]]; then
    if [[ -x $NVCC ]] && command -v nvidia-smi > /dev/null && nvidia-smi -L > /dev/null 2>&1; then MODE=cuda; else MODE=cpu; fi
fi

COMMIT=$(cat "$SRC/COMMIT")
# Release, one static binary, only what llama-server needs; no network at configure time (no prebuilt UI,
# no OpenSSL), and the CPU code for a portable x86-64 (AVX2/FMA) rather than this machine's flags.
ARGS=(-DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF
      -DLLAMA_BUILD_APP=OFF -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_SERVER=ON -DLLAMA_USE_PREBUILT_UI=OFF
      -DLLAMA_BUILD_UI=OFF -DLLAMA_OPENSSL=OFF -DGGML_NATIVE=OFF -DLLAMA_BUILD_COMMIT="$COMMIT")
if [[ $MODE == cuda ]]; then
    [[ -x $NVCC ]] || die "no nvcc at $NVCC: set NVCC=/path/to/nvcc, or build with '$0 cpu'"
    ARCH=${CUDA_ARCH:-$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -1 | tr -d .)}
    [[ $ARCH =~ ^[0-9]+a?$ ]] || die "cannot tell the GPU's architecture (nvidia-smi said '$ARCH'): set CUDA_ARCH, e.g. 90"
    FLAVOR=cuda-sm$ARCH
    # One architecture, no NCCL (single GPU), FlashAttention only for the f16 KV cache we run.
    ARGS+=(-DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES="$ARCH" -DCMAKE_CUDA_COMPILER="$NVCC"
           -DGGML_CUDA_NCCL=OFF -DGGML_CUDA_FA_ALL_QUANTS=OFF)
else
    FLAVOR=cpu
fi

OUT=build/llama.cpp-$VER-$FLAVOR
BIN=$OUT/bin/llama-server
if [[ -x $BIN && -f $OUT/build.json ]]; then
    echo "already built: $BIN" >&2
    echo "$BIN"
    exit 0
fi
command -v cmake > /dev/null || die "cmake is not installed"
GEN=()
command -v ninja > /dev/null && GEN=(-G Ninja)
start=$(date +%s)
cmake -S "$SRC" -B "$OUT" "${GEN[@]}" "${ARGS[@]}" > "$OUT.configure.log" 2>&1 \
    || { tail -20 "$OUT.configure.log" >&2; die "cmake configure failed: see $OUT.configure.log"; }
cmake --build "$OUT" --target llama-server -j "$JOBS"
seconds=$(( $(date +%s) - start ))
python3 - "$OUT/build.json" "$VER" "$SRC" "$COMMIT" "$FLAVOR" "$seconds" "$JOBS" "${ARGS[@]}" << 'EOF'
import json, sys
path, ver, source, commit, flavor, seconds, jobs, *args = sys.argv[1:]
json.dump({"llama_cpp_python": ver, "source": source, "commit": commit, "flavor": flavor, "build_s": int(seconds),
           "jobs": int(jobs), "cmake_args": args}, open(path, "w"), indent=1)
EOF
echo "built $BIN in ${seconds} s on $JOBS jobs" >&2
echo "$BIN"
