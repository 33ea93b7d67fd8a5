// Parallel argsort and searchsorted of float64 keys, in numpy's order (see order.cpp).
#pragma once

#include <cstdint>

namespace mechperm {

// out = the permutation sorting x ascending; NaN last, ties by index (np.argsort(kind="stable")):
// runs radix-sorted on the threads, then merged.
void argsort(const double* x, int64_t n, int64_t* out, int threads);

// out[q] = the number of entries of sorted (ascending, NaN last) that order before queries[q]
// (np.searchsorted(sorted, queries, side="left")): from 1024 queries (and 1/16 of m) they are
// sorted and walked along `sorted`, else a binary search each.
void searchsorted_left(const double* sorted, int64_t m, const double* queries, int64_t nq, int64_t* out,
                       int threads);

}  // namespace mechperm
