// The only file that includes pybind11: maps the C++ core to `mechperm._auction`.
#include <pybind11/pybind11.h>

#include "auction.hpp"

namespace py = pybind11;

PYBIND11_MODULE(_auction, m) {
    m.doc() = "mechperm native assignment solver (auction algorithm, C++17).";
    m.def("build_info", &mechperm::build_info,
          "How the native core was compiled: version, C++ standard, compiler, optimisation.");
#ifdef MECHPERM_VERSION
    m.attr("__version__") = MECHPERM_VERSION;
#endif
}
