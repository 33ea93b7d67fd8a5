#include "auction.hpp"

#include <sstream>

#ifndef MECHPERM_VERSION
#define MECHPERM_VERSION "unknown"
#endif

namespace mechperm {

std::string build_info() {
    std::ostringstream out;
    out << "mechperm._auction " << MECHPERM_VERSION << "; C++ " << __cplusplus;
#if defined(__clang__)
    out << "; clang " << __clang_major__ << "." << __clang_minor__;
#elif defined(__GNUC__)
    out << "; gcc " << __GNUC__ << "." << __GNUC_MINOR__;
#elif defined(_MSC_VER)
    out << "; msvc " << _MSC_VER;
#endif
#if defined(__OPTIMIZE__)
    out << "; optimised";
#else
    out << "; NOT optimised";
#endif
    return out.str();
}

}  // namespace mechperm
