"""The C++ core builds without its x86 kernels (``-DMECHPERM_PORTABLE``): what an ARM laptop or
server compiles. A scalar kernel once lived inside the x86-only block, so every non-x86 build
failed while every test here passed; the whole suite also passed on a portable build linked by
hand (session 14), so the scalar paths are the same answers."""
from __future__ import annotations

import os
import shutil
import subprocess
import sysconfig
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

CSRC = Path(__file__).resolve().parents[1] / "csrc"


def _compiler() -> str | None:
    for name in (os.environ.get("CXX"), (sysconfig.get_config_var("CXX") or "").split(" ")[0], "c++", "g++", "clang++"):
        if name and shutil.which(name):
            return name
    return None


@pytest.mark.skipif(_compiler() is None, reason="no C++ compiler on PATH")
def test_sources_compile_without_x86_kernels() -> None:
    pybind11 = pytest.importorskip("pybind11")
    cxx = _compiler()
    # Warnings are errors here: code only an ARM build sees (constants and parameters of the x86
    # kernels) once compiled there with warnings that no x86 build showed (session 19, aarch64).
    _compile_all(cxx, ["-DMECHPERM_PORTABLE", "-Wall", "-Wextra", "-Werror"], pybind11.get_include())


def _compile_all(cxx: str, extra: list[str], pybind11_include: str) -> None:
    """Every source, syntax only; the third-party headers as system headers (their warnings are
    not ours)."""
    flags = ["-std=c++17", "-fsyntax-only", "-DMECHPERM_VERSION=\"0\"", f"-I{CSRC}",
             "-isystem", sysconfig.get_paths()["include"], "-isystem", pybind11_include, *extra]
    sources = sorted(CSRC.glob("*.cpp"))
    assert len(sources) >= 9

    def compile_one(src: Path) -> tuple[str, int, str]:
        done = subprocess.run([cxx, *flags, str(src)], capture_output=True, text=True, timeout=600)
        return src.name, done.returncode, done.stderr[-2000:]

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        failed = [r for r in pool.map(compile_one, sources) if r[1] != 0]
    assert not failed, "\n".join(f"{name}:\n{err}" for name, _, err in failed)


_CROSS = shutil.which("aarch64-linux-gnu-g++")


@pytest.mark.skipif(_CROSS is None, reason="no aarch64 cross compiler (Debian: g++-aarch64-linux-gnu)")
def test_sources_compile_for_aarch64() -> None:
    """A real 64-bit ARM compile (``__aarch64__``, not the portable macro on x86): where a cross
    compiler is installed. The host's Python headers stand in for the target's (LP64 both)."""
    pybind11 = pytest.importorskip("pybind11")
    _compile_all(_CROSS, ["-Wall", "-Wextra", "-Werror"], pybind11.get_include())


_X86_ONLY = ("target_clones", "__target__", "target(", "__builtin_cpu_supports", "_mm256_", "_mm512_", "_mm_")


@pytest.mark.skipif(_compiler() is None, reason="no C++ compiler on PATH")
def test_portable_sources_name_no_x86_feature() -> None:
    """Compiled here (x86), an x86 attribute or intrinsic left outside the guards still builds;
    on ARM it would not. So the preprocessed lines of our own files must name none."""
    pybind11 = pytest.importorskip("pybind11")
    cxx = _compiler()
    flags = ["-std=c++17", "-E", "-DMECHPERM_PORTABLE", f"-I{CSRC}", f"-I{sysconfig.get_paths()['include']}",
             f"-I{pybind11.get_include()}"]
    found = []
    for src in sorted(CSRC.glob("*.cpp")):
        done = subprocess.run([cxx, *flags, str(src)], capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
        ours = False
        for line in done.stdout.splitlines():
            if line.startswith("# "):  # a line marker: # N "file" flags
                ours = str(CSRC) in line or '"csrc/' in line
                continue
            if ours and any(word in line for word in _X86_ONLY):
                found.append(f"{src.name}: {line.strip()[:160]}")
    assert not found, "\n".join(found)
