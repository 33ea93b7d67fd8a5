#!/usr/bin/env bash
# The native core built for 64-bit ARM (aarch64, as on Grace Hopper nodes, Graviton and Ampere
# servers, ARM Linux laptops) and the tests that exercise it, run under qemu-user on an x86
# Debian machine. Manual, not part of .ci/run: it needs root for apt, downloads ~400 MB (Debian
# arm64 packages, PyPI's aarch64 torch wheel) and runs ~10-40x slower than native.
#
#   bash .ci/arm64_emulated.sh                         # test_assign, test_topk, test_screen, test_match
#   bash .ci/arm64_emulated.sh tests/test_kernels.py   # other test files
#
# What emulation cannot show: a weak-memory race (qemu runs ARM code with the host's x86
# ordering). The one test that forks a threaded process is deselected: qemu-user aborts the
# child.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
WORK=${MECHPERM_ARM64_WORK:-/tmp/mechperm-arm64}
ROOT=$WORK/root   # arm64 Debian (Python 3.11, numpy, scipy, matplotlib, pytest, hypothesis)
SITE=$WORK/site   # aarch64 wheels unpacked: torch (CPU build), safetensors, pure-Python deps
PKG=$WORK/pkg     # this checkout's mechperm with its extension built for aarch64
PIP=${PIP:-python3 -m pip}
mkdir -p "$WORK"

if ! command -v aarch64-linux-gnu-g++ >/dev/null || ! command -v qemu-aarch64 >/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq g++-aarch64-linux-gnu qemu-user debootstrap
fi
if [ ! -x "$ROOT/usr/bin/python3.11" ]; then
    # First stage only: downloads and unpacks; no arm64 binary is run (no binfmt needed).
    debootstrap --foreign --arch=arm64 --variant=minbase \
        --include=python3,python3-numpy,python3-scipy,python3-matplotlib,python3-pytest,python3-hypothesis,libpython3.11-dev \
        bookworm "$ROOT" http://deb.debian.org/debian
    for deb in "$ROOT"/var/cache/apt/archives/*.deb; do dpkg -x "$deb" "$ROOT"; done
    # The BLAS alternatives' links (set by postinst scripts, which did not run).
    lib=$ROOT/usr/lib/aarch64-linux-gnu
    for so in libblas.so.3 liblapack.so.3 libopenblas.so.0; do ln -sf "openblas-pthread/$so" "$lib/$so"; done
fi
if [ ! -d "$SITE/torch" ]; then
    mkdir -p "$WORK/wheels" "$SITE"
    # --no-deps: pip would read torch's CUDA dependencies with this (x86) machine's markers.
    $PIP download -q torch==2.9.1 --no-deps --platform manylinux_2_28_aarch64 --only-binary=:all: \
        --python-version 3.11 -d "$WORK/wheels"
    $PIP download -q safetensors --no-deps --platform manylinux_2_17_aarch64 --only-binary=:all: \
        --python-version 3.11 -d "$WORK/wheels"
    $PIP download -q typing_extensions sympy mpmath networkx jinja2 filelock fsspec tqdm --no-deps \
        --only-binary=:all: --platform any --python-version 3.11 -d "$WORK/wheels"
    for whl in "$WORK"/wheels/*.whl; do (cd "$SITE" && python3 -m zipfile -e "$whl" .); done
fi

# The extension as setup.py builds it (-O3, C++17), for aarch64 against the target's headers.
rm -rf "$PKG" && mkdir -p "$PKG" && cp -r "$REPO/mechperm" "$PKG/"
rm -f "$PKG"/mechperm/_auction*.so
PYBIND11=$(python3 -c "import pybind11; print(pybind11.get_include())")
aarch64-linux-gnu-g++ -std=c++17 -O3 -fPIC -shared -fvisibility=hidden -pthread -Wall -Wextra \
    -I"$REPO/csrc" -isystem "$ROOT/usr/include/python3.11" -isystem "$ROOT/usr/include" -isystem "$PYBIND11" \
    -DMECHPERM_VERSION='"0.1.0"' "$REPO"/csrc/*.cpp -o "$PKG/mechperm/_auction.cpython-311-aarch64-linux-gnu.so"

rm -rf "$WORK/tests" "$WORK/bench" && cp -r "$REPO/tests" "$REPO/bench" "$WORK/" && cp "$REPO/pyproject.toml" "$WORK/"
# The interpreter as a host script, so that tests which start `sys.executable` (the CLI's, the
# kill-and-resume ones) run their child under qemu too (no binfmt_misc registration needed).
mkdir -p "$WORK/bin"
printf '#!/bin/sh\nexec qemu-aarch64 -L "%s" -0 "%s" "%s" "$@"\n' "$ROOT" "$WORK/bin/python3" \
    "$ROOT/usr/bin/python3.11" > "$WORK/bin/python3"
chmod +x "$WORK/bin/python3"
export PYTHONHOME=/usr PYTHONPATH=$PKG:$SITE
cd "$WORK"
files=("$@")
[ ${#files[@]} -gt 0 ] || files=(tests/test_assign.py tests/test_topk.py tests/test_screen.py tests/test_match.py)
files=("${files[@]/#$REPO\//}")
"$WORK/bin/python3" -c "import platform, sys, mechperm._auction as a; print(platform.machine(), sys.executable, a.__file__)"
exec "$WORK/bin/python3" -m pytest -p no:cacheprovider -q -rfE \
    --deselect tests/test_assign.py::test_thread_pool_under_concurrent_callers_and_fork \
    "${files[@]}"
