// Per-pair candidate bounds: the pairs of a row whose own bound fails (see bounds.cpp).
#pragma once

#include <cstdint>
#include <vector>

namespace mechperm {

// One family of lower bounds on the reduced cost of a pair (i, j) left out of the graph:
// a[i] + b[j] - p[i] * q[j] (p, q null: no product term). NaN values bound nothing.
struct BoundFamily {
    const double* a;  // [n]
    const double* b;  // [m]
    const double* p;  // [n] or null
    const double* q;  // [m] or null
};

// For each row rows[r]: pb_j = the largest family bound of (row, j) over the columns j that are
// not arcs of the row. If at most `limit` of them are < 0, the row is settled by its `want` =
// min(left, limit, max(mult * count, min_cols)) columns of least pb (left: the columns that are
// not arcs), ascending in cols[r], and bound[r] = the least pb of its other columns (+inf if
// none); else ok[r] = 0. Column indices of the arcs must lie in [0, m) (checked by the caller).
template <class I>
void suspect_pairs(const int64_t* indptr, const I* indices, int64_t m, const int64_t* rows, int64_t nr,
                   const std::vector<BoundFamily>& families, int64_t limit, int64_t mult, int64_t min_cols,
                   int threads, std::vector<uint8_t>& ok, std::vector<std::vector<int64_t>>& cols,
                   std::vector<double>& bound);

}  // namespace mechperm
