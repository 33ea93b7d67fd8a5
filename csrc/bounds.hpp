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

// The exact loop's rank bound per row (assign._rank_bounds): every pair (i, j) left out has
// c_ij >= max(row_bound_i + col_offset_j, col_bound_j + row_offset_i), so its reduced cost is
// >= max(X_i + A_j, Y_i + S_j) with X = row_bound - u, Y = row_offset - u, A = col_offset - v,
// S = col_bound - v. With the columns in `order` (ascending D = col_offset - col_bound) and idx_i
// = the number of them with D < t_i = row_offset_i - row_bound_i: out_i = X_i + min(suffix min
// of A from idx_i, t_i + prefix min of S before idx_i); +inf where row_bound_i is, -inf where
// NaN. numpy's float64 operations in numpy's order (the same bits); offsets null: 0. O(n + m),
// the rows on `threads` threads.
void rank_bounds(const int64_t* order, const int64_t* idx, int64_t n, int64_t m, const double* row_bound,
                 const double* col_bound, const double* row_offset, const double* col_offset, const double* u,
                 const double* v, double* out, int threads);

}  // namespace mechperm
