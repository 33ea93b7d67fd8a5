// Running top-k selection over streamed cost tiles (see topk.hpp).
#include "topk.hpp"

#include "parallel.hpp"

#include <algorithm>
#include <atomic>
#include <limits>
#include <numeric>
#include <thread>
#include <vector>

// AVX2 / AVX-512 clones of the scans (their compares and the -cosines' float32 arithmetic,
// the same values whichever runs); the wheel's baseline is SSE2.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(MECHPERM_PORTABLE)
#define MECHPERM_TOPK_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define MECHPERM_TOPK_CLONES
#endif

namespace mechperm {
namespace {


// (v, i) < (w, j), without branches: the sift's child choice is a coin flip, and its
// mispredictions were most of an insertion's time.
inline bool less(float v, int64_t i, float w, int64_t j) { return (v < w) | ((v == w) & (i < j)); }

// Replace the root of the max-heap (vals, idx, extra)[0, k) by (v, i, e) and sift it down.
inline void replace_root(float* vals, int64_t* idx, float* extra, int64_t k, float v, int64_t i, float e) {
    int64_t p = 0;
    for (;;) {
        int64_t c = 2 * p + 1;
        if (c >= k) break;
        if (c + 1 < k) c += int64_t(less(vals[c], idx[c], vals[c + 1], idx[c + 1]));
        if (!less(v, i, vals[c], idx[c])) break;
        vals[p] = vals[c];
        idx[p] = idx[c];
        if (extra) extra[p] = extra[c];
        p = c;
    }
    vals[p] = v;
    idx[p] = i;
    if (extra) extra[p] = e;
}

inline float clamp0(float x) { return x > 0.0f ? x : 0.0f; }

// Whether any score (clamped at 0 if `clamp`) is <= its threshold: a branch-free pass the
// compiler vectorises; after the first tiles most rows of a tile admit nothing.
inline bool any_at_or_below(const float* x, bool clamp, const float* thr, int64_t w) {
    int hit = 0;
    if (clamp) {
        for (int64_t j = 0; j < w; ++j) hit |= clamp0(x[j]) <= thr[j];
    } else {
        for (int64_t j = 0; j < w; ++j) hit |= x[j] <= thr[j];
    }
    return hit != 0;
}

constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr int64_t kGroupsPerK = 4;  // a tile bound's groups: 4k of them

// An upper bound on the k-th least of the w scores x[0, w) (clamped at 0 if `clamp`) from the
// tile alone: the k-th least of the minima of 4k groups of them, each minimum
// an entry (k entries lie at or below it). Why: a heap still filling admits everything, and
// while it fills its root falls slowly; in random order a heap takes k + k ln(w / k) entries
// (w = 8192, k = 64: ~374), with this bound ~k + a few tens. Group g holds the entries g, g + 4k,
// g + 8k, ...: the minima are taken 4k lanes at a time, vectorised (groups of consecutive entries
// made it a scalar loop, a third of the rows' selection). +inf where the groups would hold fewer
// than 2 entries. `mins` holds 4k floats.
inline float tile_bound(const float* x, int64_t w, int64_t k, bool clamp, float* mins) {
    const int64_t groups = kGroupsPerK * k, size = groups > 0 ? w / groups : 0;
    if (k <= 0 || size < 2) return kInf;
    std::copy(x, x + groups, mins);
    for (int64_t t = 1; t < size; ++t) {
        const float* y = x + t * groups;
        for (int64_t g = 0; g < groups; ++g) mins[g] = y[g] < mins[g] ? y[g] : mins[g];
    }
    std::nth_element(mins, mins + (k - 1), mins + groups);
    const float b = mins[k - 1];
    return clamp ? clamp0(b) : b;
}

// One owner's scan of a row of scores (costs clamped at 0 when `cost_of` is null; else the
// scores are -cosines and cost_of the row's costs, carried along clamped), in blocks of 16
// checked against the heap's root (and `bound`: scores above it cannot be among the k least)
// first.
inline void scan_row(const float* x, const float* cost_of, int64_t m, int64_t c0, float* hv, int64_t* hi,
                     float* he, int64_t k, float bound) {
    constexpr int64_t kB = 16;  // P(a block admits) stays small: a block that does is scanned exactly
    for (int64_t j0 = 0; j0 < m; j0 += kB) {
        const int64_t j1 = std::min(m, j0 + kB);
        const float thr = std::min(hv[0], bound);
        int hit = 0;
        if (cost_of == nullptr) {
            for (int64_t j = j0; j < j1; ++j) hit |= clamp0(x[j]) <= thr;
        } else {
            for (int64_t j = j0; j < j1; ++j) hit |= x[j] <= thr;
        }
        if (!hit) continue;
        for (int64_t j = j0; j < j1; ++j) {
            const float v = cost_of == nullptr ? clamp0(x[j]) : x[j];
            if (v <= bound && less(v, c0 + j, hv[0], hi[0]))
                replace_root(hv, hi, he, k, v, c0 + j, cost_of == nullptr ? 0.0f : clamp0(cost_of[j]));
        }
    }
}

// s[j] = -cosine of (row i, column j0 + j) of the tile, j < w, from the costs t[j] (CosFactors).
inline void cos_scores(const float* t, const CosFactors& cf, int64_t i, int64_t j0, int64_t w, float* s) {
    const float na = cf.na[i], hiy = cf.hiy[i];
    const float* nb = cf.nb + j0;
    const float* ix = cf.ix + j0;
    for (int64_t j = 0; j < w; ++j) s[j] = (((t[j] - na) - nb[j]) * hiy) * ix[j];
}

// Rows [16 blk, 16 blk + 16) of a tile into the rows' selections.
MECHPERM_TOPK_CLONES void rows_block(const float* tile, int64_t ld, const float* cos, const CosFactors* cf,
                                     int64_t n, int64_t m, int64_t r0, int64_t c0, const TopKHeaps& rows_c,
                                     const TopKHeaps& rows_s, int64_t blk) {
    const bool with_cos = cos != nullptr || cf != nullptr;
    const int64_t i1 = std::min(n, (blk + 1) * 16);
    std::vector<float> row_s(cf != nullptr && rows_s.k > 0 ? m : 0);  // a row's -cosines
    std::vector<float> mins(kGroupsPerK * std::max(rows_c.k, rows_s.k));
    for (int64_t i = blk * 16; i < i1; ++i) {
        const float* t = tile + i * ld;
        if (rows_c.k > 0) {
            const int64_t o = (r0 + i) * rows_c.k;
            // The tile's bound only while the heap fills (root +inf): a full heap's root is about
            // as tight, and the bound's pass over the row took a sixth of the rows' selection.
            const float bound = rows_c.vals[o] == kInf ? tile_bound(t, m, rows_c.k, true, mins.data()) : kInf;
            scan_row(t, nullptr, m, c0, rows_c.vals + o, rows_c.idx + o, nullptr, rows_c.k, bound);
        }
        if (with_cos && rows_s.k > 0) {
            const int64_t o = (r0 + i) * rows_s.k;
            const float* s = cos != nullptr ? cos + i * m : row_s.data();
            if (cos == nullptr) cos_scores(t, *cf, i, 0, m, row_s.data());
            const float bound = rows_s.vals[o] == kInf ? tile_bound(s, m, rows_s.k, false, mins.data()) : kInf;
            scan_row(s, t, m, c0, rows_s.vals + o, rows_s.idx + o, rows_s.extra ? rows_s.extra + o : nullptr,
                     rows_s.k, bound);
        }
    }
}

constexpr int64_t kW = 256, kSub = 16;  // column ranges per task; checked 16 at a time

// tile_bound per column of the range [j0, j0 + w) (w <= kW) over the tile's n rows, into
// out[w]: scores are the costs (clamped if `clamp`), or the -cosines (the cos tile, else from
// the costs with cf; m: the cos tile's row stride).
MECHPERM_TOPK_CLONES void column_bounds(const float* tile, int64_t ld, const float* cos, int64_t n, int64_t w,
                                        int64_t j0, int64_t k, bool clamp, float* out,
                                        const CosFactors* cf = nullptr, int64_t m = 0) {
    const int64_t groups = kGroupsPerK * k, size = groups > 0 ? n / groups : 0;
    if (k <= 0 || size < 2) return;  // out stays +inf
    std::vector<float> mins(static_cast<size_t>(groups * w), kInf), row(static_cast<size_t>(w));
    for (int64_t i = 0; i < groups * size; ++i) {
        const float* x = tile + i * ld + j0;
        if (cos != nullptr) {
            x = cos + i * m + j0;
        } else if (cf != nullptr) {
            cos_scores(tile + i * ld + j0, *cf, i, j0, w, row.data());
            x = row.data();
        }
        float* g = mins.data() + (i / size) * w;
        for (int64_t j = 0; j < w; ++j) g[j] = x[j] < g[j] ? x[j] : g[j];
    }
    std::vector<float> col(static_cast<size_t>(groups));
    for (int64_t j = 0; j < w; ++j) {
        for (int64_t g = 0; g < groups; ++g) col[g] = mins[g * w + j];
        std::nth_element(col.begin(), col.begin() + (k - 1), col.end());
        out[j] = clamp ? clamp0(col[k - 1]) : col[k - 1];
    }
}

constexpr int64_t kAhead = 4;  // rows prefetched ahead by the column scan

// Columns [kW blk, kW blk + kW) of a tile into the columns' selections: the roots are copied to
// local thresholds so that the scan reads contiguous memory.
MECHPERM_TOPK_CLONES void cols_block(const float* tile, int64_t ld, const float* cos, const CosFactors* cf,
                                     int64_t n, int64_t m, int64_t r0, int64_t c0, const TopKHeaps& cols_c,
                                     const TopKHeaps& cols_s, int64_t blk) {
    const bool with_cos = cos != nullptr || cf != nullptr;
    const int64_t j0 = blk * kW, j1 = std::min(m, j0 + kW), w = j1 - j0;
    float tv[kW], sv[kW], own[kW];  // own: this range's -cosines of one row (with cf)
    int64_t ti[kW], si[kW];
    // tb / sb: the admission thresholds, min(root, tile bound); cb / ssb: the tile bounds
    float tb[kW], sb[kW], cb[kW], ssb[kW];
    bool filling_c = false, filling_s = false;
    for (int64_t j = 0; j < w; ++j) {
        if (cols_c.k > 0) {
            tv[j] = cols_c.vals[(c0 + j0 + j) * cols_c.k];
            ti[j] = cols_c.idx[(c0 + j0 + j) * cols_c.k];
            filling_c |= tv[j] == kInf;
        }
        if (with_cos && cols_s.k > 0) {
            sv[j] = cols_s.vals[(c0 + j0 + j) * cols_s.k];
            si[j] = cols_s.idx[(c0 + j0 + j) * cols_s.k];
            filling_s |= sv[j] == kInf;
        }
        cb[j] = ssb[j] = kInf;
    }
    // Heaps still filling (the first row tile): the tile's bounds per column (tile_bound, its
    // groups of rows: minima taken row by row across the range, then each column's k-th).
    if (filling_c) column_bounds(tile, ld, nullptr, n, w, j0, cols_c.k, true, cb);
    if (filling_s) column_bounds(tile, ld, cos, n, w, j0, cols_s.k, false, ssb, cf, m);
    for (int64_t j = 0; j < w; ++j) {
        if (cols_c.k > 0) tb[j] = std::min(tv[j], cb[j]);
        if (with_cos && cols_s.k > 0) sb[j] = std::min(sv[j], ssb[j]);
    }
    for (int64_t i = 0; i < n; ++i) {
        const float* t = tile + i * ld + j0;
        const int64_t other = r0 + i;
        if (i + kAhead < n)  // this range of a later row: each row's range starts a new page
            for (int64_t j = 0; j < w; j += 16) __builtin_prefetch(t + kAhead * ld + j);
        for (int64_t b0 = 0; cols_c.k > 0 && b0 < w; b0 += kSub) {
            const int64_t b1 = std::min(w, b0 + kSub);
            if (!any_at_or_below(t + b0, true, tb + b0, b1 - b0)) continue;
            for (int64_t j = b0; j < b1; ++j) {
                const float v = clamp0(t[j]);
                if (v <= cb[j] && less(v, other, tv[j], ti[j])) {
                    const int64_t o = (c0 + j0 + j) * cols_c.k;
                    replace_root(cols_c.vals + o, cols_c.idx + o, nullptr, cols_c.k, v, other, 0.0f);
                    tv[j] = cols_c.vals[o];
                    ti[j] = cols_c.idx[o];
                    tb[j] = std::min(tv[j], cb[j]);
                }
            }
        }
        if (!with_cos || cols_s.k <= 0) continue;
        const float* s = cos != nullptr ? cos + i * m + j0 : own;
        if (cos == nullptr) cos_scores(t, *cf, i, j0, w, own);
        for (int64_t b0 = 0; b0 < w; b0 += kSub) {
            const int64_t b1 = std::min(w, b0 + kSub);
            if (!any_at_or_below(s + b0, false, sb + b0, b1 - b0)) continue;
            for (int64_t j = b0; j < b1; ++j) {
                if (s[j] <= ssb[j] && less(s[j], other, sv[j], si[j])) {
                    const int64_t o = (c0 + j0 + j) * cols_s.k;
                    replace_root(cols_s.vals + o, cols_s.idx + o, cols_s.extra ? cols_s.extra + o : nullptr,
                                 cols_s.k, s[j], other, clamp0(t[j]));
                    sv[j] = cols_s.vals[o];
                    si[j] = cols_s.idx[o];
                    sb[j] = std::min(sv[j], ssb[j]);
                }
            }
        }
    }
}

}  // namespace

void topk_tile(const float* tile, int64_t ld, const float* cos, int64_t n, int64_t m, int64_t r0, int64_t c0,
               TopKHeaps rows_c, TopKHeaps cols_c, TopKHeaps rows_s, TopKHeaps cols_s, int threads,
               const CosFactors* cf) {
    if (n <= 0 || m <= 0) return;
    const bool with_cos = cos != nullptr || cf != nullptr;
    // Rows: each owner's heap root is its admission threshold; most entries fail it.
    if (rows_c.k > 0 || (with_cos && rows_s.k > 0))
        parallel_blocks((n + 15) / 16, threads, [&](int64_t blk) {
            rows_block(tile, ld, cos, cf, n, m, r0, c0, rows_c, rows_s, blk);
        });
    // Columns: ranges of columns per task, the tile read row by row.
    if (cols_c.k > 0 || (with_cos && cols_s.k > 0))
        parallel_blocks((m + kW - 1) / kW, threads, [&](int64_t blk) {
            cols_block(tile, ld, cos, cf, n, m, r0, c0, cols_c, cols_s, blk);
        });
}

void topk_finish(TopKHeaps h, int64_t owners, int threads) {
    if (h.k <= 0) return;
    const int64_t k = h.k;
    parallel_blocks((owners + 255) / 256, threads, [&](int64_t blk) {
        std::vector<int64_t> order(static_cast<size_t>(k), 0);
        std::vector<float> v(static_cast<size_t>(k)), e(static_cast<size_t>(k));
        std::vector<int64_t> ix(static_cast<size_t>(k));
        const int64_t o1 = std::min(owners, (blk + 1) * 256);
        for (int64_t o = blk * 256; o < o1; ++o) {
            float* hv = h.vals + o * k;
            int64_t* hi = h.idx + o * k;
            float* he = h.extra ? h.extra + o * k : nullptr;
            std::iota(order.begin(), order.end(), int64_t(0));
            std::sort(order.begin(), order.end(),
                      [&](int64_t a, int64_t b) { return less(hv[a], hi[a], hv[b], hi[b]); });
            for (int64_t t = 0; t < k; ++t) {
                v[t] = hv[order[t]];
                ix[t] = hi[order[t]];
                if (he) e[t] = he[order[t]];
            }
            std::copy(v.begin(), v.end(), hv);
            std::copy(ix.begin(), ix.end(), hi);
            if (he) std::copy(e.begin(), e.end(), he);
        }
    });
}

}  // namespace mechperm
