// mechperm native core: assignment solver (Bertsekas' auction algorithm).
// Plain C++17 over raw buffers; no Python, no libtorch.
#pragma once

#include <string>

namespace mechperm {

// Human-readable description of how this library was compiled (compiler, standard, flags).
std::string build_info();

}  // namespace mechperm
