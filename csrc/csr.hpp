// Edits of a CSR candidate graph whose rows are sorted by column (the exact loop's graph,
// mechperm/assign.py): membership of pairs and insertion of new arcs. One pass over the arcs
// instead of numpy's key arrays and masked inserts (F = 65536: 12.5M arcs, ~60 ms a merge).
// Plain C++17 on raw buffers.
#pragma once

#include <cstdint>
#include <vector>

namespace mechperm {

// out[t] = the position of arc (rows[t], cols[t]) (binary search in the row), or -1.
template <class I>
void csr_find(const int64_t* ptr, const I* idx, const int64_t* rows, const int64_t* cols, int64_t q,
              int64_t* out, int threads = 1);

// The graph plus the new arcs (rows, cols, costs)[q] that are not arcs yet (of duplicates the
// first is kept), in place: idx and cst hold ptr[n] arcs and room for at least q more; the old arcs
// move back from the end, rows stay sorted by column (no new arrays: on a VM, first touches of fresh pages cost more than
// the copy, ~0.1 s a merge at 12.5M arcs). ptr is updated; returns the number of arcs added.
// The new arcs are sorted and checked against the graph on `threads` threads; the arcs move on one.
template <class I, class T>
int64_t csr_insert_inplace(int64_t* ptr, I* idx, T* cst, int64_t n, const int64_t* rows, const int64_t* cols,
                           const T* costs, int64_t q, int threads = 1);

// The same edit into other arrays: out_ptr [n + 1], out_idx and out_cst with room for ptr[n] + q
// arcs; rows are merged in parallel (blocks of rows on `threads` threads), where the in-place
// edit moves every arc on one thread. Returns the number of arcs added.
template <class I, class T>
int64_t csr_insert_into(const int64_t* ptr, const I* idx, const T* cst, int64_t n, const int64_t* rows,
                        const int64_t* cols, const T* costs, int64_t q, int64_t* out_ptr, I* out_idx, T* out_cst,
                        int threads);

// out[i] = max(0, least (c_ij - u_i) - v_j over row i's arcs but its own, r2c[i]): how much
// worse the best alternative is (+inf without one, NaN for an unassigned row, r2c[i] < 0).
// Returns -1, or the position of an arc whose column is outside [0, m) (out is then partial).
template <class I, class T>
int64_t csr_margins(const int64_t* ptr, const I* idx, const T* cst, int64_t n, int64_t m, const int64_t* r2c,
                    const double* u, const double* v, int threads, double* out);

// The candidate graph's union of its selections (mechperm/kernels/candidates.py, _assemble):
// keys sorted ascending, each ((row * m + col) * 4 + part) << pos_bits | position of its cost in
// `costs`. One edge per distinct pair: its column, the cost of its first copy (the lowest part)
// and the OR of 1 << part over its copies. indptr [n + 1]; cols / out_costs / sources hold
// count_pairs(...) entries.
int64_t union_count_pairs(const int64_t* keys, int64_t e, int pos_bits);
void union_sorted_keys(const int64_t* keys, int64_t e, int pos_bits, int64_t n, int64_t m, const float* costs,
                       int64_t* indptr, int64_t* cols, float* out_costs, uint8_t* sources);

}  // namespace mechperm
