// Running top-k selection over streamed cost tiles (the candidate graph's selection on the CPU;
// mechperm/kernels/candidates.py, _select). Plain C++17 on raw buffers.
#pragma once

#include <cstdint>

namespace mechperm {

// The k best entries of each owner (a row or a column of the cost matrix), owner-major
// [owners, k]: while streaming, each owner's k slots are a max-heap on (value, other index)
// with (+inf, -1) in the slots not yet filled; topk_finish sorts them ascending. `extra`
// (optional) carries a second value along (the cost of a pair selected by cosine).
struct TopKHeaps {
    float* vals = nullptr;
    int64_t* idx = nullptr;
    float* extra = nullptr;
    int64_t k = 0;  // 0: this selection is not made
};

// The -cosine scores as a function of the cost tile: s_ij = ((c_ij - na[i]) - nb[j]) * hiy[i] * ix[j]
// in float32, in that order (bitwise what torch's four elementwise passes give), for the tile's
// rows i (na, hiy offset to its first row) and columns j (nb, ix offset to its first column).
struct CosFactors {
    const float* na = nullptr;
    const float* nb = nullptr;
    const float* hiy = nullptr;
    const float* ix = nullptr;
};

// Offer tile [n, m] (row stride ld; unclamped costs of rows r0.., columns c0..) and, optional,
// cos [n, m] (contiguous; -cosine scores) to the four selections: rows_c / cols_c keep the least
// max(cost, 0) per row / column, rows_s / cols_s the least -cosine (carrying max(cost, 0) in
// extra). Ties go to the smaller index. Rows, then column ranges, run on `threads` threads.
// With `cf` (and no cos tile), the -cosines are computed from the tile as they are scanned.
void topk_tile(const float* tile, int64_t ld, const float* cos, int64_t n, int64_t m, int64_t r0, int64_t c0,
               TopKHeaps rows_c, TopKHeaps cols_c, TopKHeaps rows_s, TopKHeaps cols_s, int threads,
               const CosFactors* cf = nullptr);

// Sort every owner's entries ascending by (value, index): the state of a finished selection.
void topk_finish(TopKHeaps h, int64_t owners, int threads);

}  // namespace mechperm
