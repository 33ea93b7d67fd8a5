"""Build the native assignment solver `mechperm._auction` (plain C++17, pybind11).

All metadata lives in pyproject.toml; this file exists only because the C++
extension needs pybind11's build helpers.
"""
from pybind11.setup_helpers import Pybind11Extension, build_ext
from setuptools import setup

ext_modules = [
    Pybind11Extension(
        "mechperm._auction",
        sources=["csrc/auction.cpp", "csrc/dense_ops.cpp", "csrc/envelope.cpp", "csrc/screen.cpp",
                 "csrc/screen_int8.cpp", "csrc/topk.cpp", "csrc/csr.cpp", "csrc/bounds.cpp", "csrc/order.cpp",
                 "csrc/bindings.cpp"],
        include_dirs=["csrc"],
        depends=["csrc/auction.hpp", "csrc/auction_detail.hpp", "csrc/screen.hpp", "csrc/screen_int8.hpp",
                 "csrc/topk.hpp", "csrc/csr.hpp", "csrc/bounds.hpp", "csrc/order.hpp", "csrc/parallel.hpp"],  # header edits must rebuild
        cxx_std=17,
        # -O3 for the solver's inner loops; no -march=native so that wheels run anywhere.
        extra_compile_args=["-O3"],
        define_macros=[("MECHPERM_VERSION", '"0.1.0"')],
    ),
]

setup(ext_modules=ext_modules, cmdclass={"build_ext": build_ext})
