"""Every Triton kernel compiles for an A100 (sm_80) and an H100 (sm_90) with the launch constants
the host code uses.

The interpreter (TRITON_INTERPRET=1, how the other tests run the kernels on a CPU) executes the
Python of a kernel, not the compiler: a kernel can pass there and fail to compile, or abort the
compiler (an LLVM assertion kills the process, hence a subprocess per architecture and dtype,
which names each kernel before compiling it). Triton ships ptxas, so this runs without a GPU.

    python tests/test_triton_compile.py DTYPE ARCH [KERNEL ...]   # what the tests run
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

# Pointer arguments by kernel (X and Y take the input dtype); other non-constexpr arguments are
# int32 but for GAMMA and ABS (float). "name+variant": the kernel with other constexprs.
POINTERS = {
    "_topk_kernel": dict(NX="fp32", NY="fp32", IX="fp32", IY="fp32", OUT_C="i64", OUT_S="i64"),
    "_slot_min_kernel": dict(NX="fp32", NY="fp32", IX="fp32", IY="fp32", RC="i32", RS="i32", CC="i32", CS="i32"),
    "_emit_kernel": dict(NX="fp32", NY="fp32", IX="fp32", IY="fp32", TRC="fp32", TRS="fp32", TCC="fp32",
                         TCS="fp32", NRC="i32", NRS="i32", NCC="i32", NCS="i32", RCI="i32", RCV="fp32",
                         RSI="i32", RSV="fp32", CCI="i32", CCV="fp32", CSI="i32", CSV="fp32"),
    "_pair_kernel": dict(NX="fp32", NY="fp32", I="i64", J="i64", OUT="fp32"),
    "_dense_kernel": dict(NX="fp32", NY="fp32", OUT="fp32"),
    "_price_kernel": dict(NX="fp32", NY="fp32", U="fp64", V="fp64", ROWS="i64", TOL="fp64", OUT_R="i64",
                          OUT_C="i64", OUT_COST="fp32", COUNT="i32"),
    "_select_dots_kernel": dict(DOTS="fp32", NX="fp32", NY="fp32", IX="fp32", IY="fp32", OUT_C="i64", OUT_S="i64",
                                CAP_C="i64", CAP_S="i64", YMIN_C="fp32", YMIN_S="fp32"),
    "_select_dots_kernel+gated": dict(DOTS="fp32", NX="fp32", NY="fp32", IX="fp32", IY="fp32", OUT_C="i64",
                                      OUT_S="i64", CAP_C="i64", CAP_S="i64", YMIN_C="fp32", YMIN_S="fp32"),
    "_select_dots_kernel+minima": dict(DOTS="fp32", NX="fp32", NY="fp32", IX="fp32", IY="fp32", OUT_C="i64",
                                       OUT_S="i64", CAP_C="i64", CAP_S="i64", YMIN_C="fp32", YMIN_S="fp32"),
    "_group_min_kernel": dict(DOTS="fp32", NX="fp32", NY="fp32", IX="fp32", IY="fp32", RMIN_C="fp32",
                              RMIN_S="fp32", CMIN_C="fp32", CMIN_S="fp32"),
}
_TOPQ = dict(NX="fp32", NY="fp32", U="fp64", V="fp64", SX="fp64", SY="fp64", OUT="i64", DOTS="fp32", CAP="i64",
             RMIN="fp32")
POINTERS.update({name: _TOPQ for name in ("_topq_kernel", "_topq_kernel+dots", "_topq_kernel+gated",
                                          "_topq_kernel+minima")})


def _constants(name: str, dtype: str) -> tuple[dict, int, int]:
    """(constexprs, warps, stages) as the host functions launch the kernel at k = 32."""
    from mechperm.kernels import triton_candidates as tc

    bd = tc.BD_FP32 if dtype == "fp32" else tc.BD_16
    prec = "tf32x3" if dtype == "fp32" else None
    stages = tc.NUM_STAGES if dtype == "fp32" else tc.NUM_STAGES_16
    tile = dict(BLOCK_M=tc.BM, BLOCK_N=tc.BN, BLOCK_D=bd, PRECISION=prec)
    warps = tc.NUM_WARPS
    if name == "_topk_kernel":
        c = dict(KC=32, KS=32, KP=32, SWAP=False, **tile)
    elif name == "_slot_min_kernel":
        c = dict(S=tc.EMIT_SLOTS_PER_K * 32, COS=True, **tile)
    elif name == "_emit_kernel":
        c = dict(COS=True, **tile)  # ROOM is a runtime value
    elif name == "_pair_kernel":
        c, stages = dict(BLOCK_P=64, BLOCK_D=bd, FP64=False), 3
    elif name == "_dense_kernel":
        c = dict(BLOCK_M=tc.DENSE_BM, BLOCK_N=tc.DENSE_BN, BLOCK_D=bd, PRECISION=prec)
        warps = tc.DENSE_WARPS
    elif name.startswith("_select_dots_kernel"):  # reads float32 dots whatever the vectors' dtype
        # +gated: the first block's gated columns' pass; +minima: a later block's, ungated,
        # writing the rows' minima for their gates
        c = dict(KC=32, KS=32, KP=32, SWAP=True, INIT=True, GATED=name.endswith("+gated"),
                 Y_MINIMA=2 if name.endswith("+minima") else 0, BLOCK_M=tc.SEL_COL_BM, BLOCK_N=tc.SEL_COL_BN)
        warps = tc.SEL_COL_WARPS  # the columns' pass (SWAP) has its own tile
    elif name == "_group_min_kernel":
        c, warps = dict(COS=True, BLOCK_M=tc.SEL_BM, BLOCK_N=tc.SEL_BN), tc.SEL_WARPS
    elif name == "_price_kernel":
        c = dict(**tile)
    else:  # _topq_kernel, screened (its larger epilogue); +dots: reading a GEMM's dots, +gated
        # and +minima too: the gated pricer's two launches
        variant = name.partition("+")[2]
        c = dict(Q=64, KP=64, SCREEN=True, FROM_DOTS=bool(variant), GATED=variant == "gated",
                 MINIMA=variant == "minima", **tile)
    return c, warps, stages


def compile_one(name: str, dtype: str, arch: int = 90) -> int:
    """Compile one kernel for sm_``arch``; returns its shared memory in bytes."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from mechperm.kernels import triton_candidates as tc

    fn = getattr(tc, name.split("+")[0])  # "kernel+variant": other constexprs
    consts, warps, stages = _constants(name, dtype)
    ptrs = POINTERS[name]
    sig = {}
    for arg in fn.arg_names:
        if arg in consts:
            sig[arg] = "constexpr"
        elif arg in ("X", "Y"):
            sig[arg] = "*" + dtype
        elif arg in ptrs:
            sig[arg] = "*" + ptrs[arg]
        else:
            sig[arg] = "fp32" if arg in ("GAMMA", "ABS") else "i32"
    kernel = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=consts), target=GPUTarget("cuda", arch, 32),
                            options={"num_warps": warps, "num_stages": stages})
    return int(kernel.metadata.shared)


SHARED = {80: 163 * 1024, 90: 227 * 1024}  # a block's shared memory on an A100, an H100


@pytest.mark.parametrize("arch", sorted(SHARED))
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_kernels_compile(dtype: str, arch: int) -> None:
    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, __file__, dtype, str(arch)], capture_output=True, text=True, env=env,
                         timeout=900)
    lines = [line.split() for line in out.stdout.splitlines() if line.startswith("_")]
    last = lines[-1][0] if lines else "the first kernel"
    assert out.returncode == 0, f"sm_{arch} ({dtype}) fails at {last}:\n{out.stderr[-3000:]}"
    done = {line[0]: int(line[1]) for line in lines if len(line) == 2}
    assert sorted(done) == sorted(POINTERS)
    too_big = {k: v for k, v in done.items() if v > SHARED[arch]}
    assert not too_big, f"shared memory beyond sm_{arch}'s {SHARED[arch]} bytes: {too_big}"


if __name__ == "__main__":
    for kernel in sys.argv[3:] or sorted(POINTERS):
        print(kernel, flush=True)  # named first: a compiler abort then shows which
        print(kernel, compile_one(kernel, sys.argv[1], int(sys.argv[2])), flush=True)
