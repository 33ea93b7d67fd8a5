// CSR graph edits: see csr.hpp.
#include "csr.hpp"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>

#include "parallel.hpp"

namespace mechperm {

namespace {

template <class I>
int64_t find_arc(const int64_t* ptr, const I* idx, int64_t r, int64_t c) {
    const I* lo = idx + ptr[r];
    const I* hi = idx + ptr[r + 1];
    const I* at = std::lower_bound(lo, hi, c, [](I a, int64_t b) { return int64_t(a) < b; });
    return at != hi && int64_t(*at) == c ? int64_t(at - idx) : -1;
}

template <class I>
bool has_arc(const int64_t* ptr, const I* idx, int64_t r, int64_t c) {
    return find_arc(ptr, idx, r, c) >= 0;
}

// The new arcs by (row, column), the first of duplicates, none already an arc (rows in [0, n)).
//
// Many arcs (q >= n / 16): a counting sort by row, then each row's few arcs by column (rows on
// the threads). The exact loop merges a pricing round's pairs, ~64-128 a priced row: 3.8M pairs
// into 94M arcs of 1M rows took 0.39 s with one comparison sort over all of them, 0.31 s so (in
// place, best of 5, 2-core VM). Which arcs are fresh (a binary search in the graph's row each,
// random reads) is decided on the threads too: 4.2M pairs into 67M arcs, in place on 2 threads,
// 0.31 -> 0.23 s (best of 4, ad hoc).
template <class I>
std::vector<int64_t> fresh_arcs(const int64_t* ptr, const I* idx, int64_t n, const int64_t* rows,
                                const int64_t* cols, int64_t q, int threads) {
    std::vector<int64_t> order(q);
    // ties by input position: the first of duplicates first (a stable order, without
    // std::stable_sort's buffer per row)
    auto by_column = [&](int64_t a, int64_t b) { return cols[a] < cols[b] || (cols[a] == cols[b] && a < b); };
    if (q >= n / 16) {
        std::vector<int64_t> start(n + 1, 0);
        for (int64_t t = 0; t < q; ++t) ++start[rows[t] + 1];
        for (int64_t r = 0; r < n; ++r) start[r + 1] += start[r];
        std::vector<int64_t> at(start.begin(), start.end() - 1);
        for (int64_t t = 0; t < q; ++t) order[at[rows[t]]++] = t;  // stable: rows in input order
        constexpr int64_t kRows = 8192;
        parallel_blocks((n + kRows - 1) / kRows, threads, [&](int64_t b) {
            for (int64_t r = b * kRows, e = std::min(n, r + kRows); r < e; ++r)
                if (start[r + 1] - start[r] > 1)
                    std::sort(order.begin() + start[r], order.begin() + start[r + 1], by_column);
        });
    } else {
        std::iota(order.begin(), order.end(), int64_t(0));
        std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
            return rows[a] < rows[b] || (rows[a] == rows[b] && cols[a] < cols[b]);
        });
    }
    std::vector<uint8_t> keep(q);
    constexpr int64_t kBlock = 1 << 14;
    parallel_blocks((q + kBlock - 1) / kBlock, threads, [&](int64_t b) {
        for (int64_t t = b * kBlock, e = std::min(q, t + kBlock); t < e; ++t) {
            const int64_t a = order[t];
            const bool repeat = t > 0 && rows[order[t - 1]] == rows[a] && cols[order[t - 1]] == cols[a];
            keep[t] = !repeat && !has_arc(ptr, idx, rows[a], cols[a]);
        }
    });
    std::vector<int64_t> fresh;
    fresh.reserve(q);
    for (int64_t t = 0; t < q; ++t)
        if (keep[t]) fresh.push_back(order[t]);
    return fresh;
}

}  // namespace

template <class I>
void csr_find(const int64_t* ptr, const I* idx, const int64_t* rows, const int64_t* cols, int64_t q,
              int64_t* out, int threads) {
    // blocks of pairs on the threads: each search is a few random reads (F = 1M, a pricing
    // round's 3.8M pairs in 64M arcs: 130 ms on one thread of a 2-core VM)
    constexpr int64_t kBlock = 1 << 14;
    parallel_blocks((q + kBlock - 1) / kBlock, threads, [&](int64_t b) {
        for (int64_t t = b * kBlock, end = std::min(q, t + kBlock); t < end; ++t)
            out[t] = find_arc(ptr, idx, rows[t], cols[t]);
    });
}

template <class I, class T>
int64_t csr_insert_inplace(int64_t* ptr, I* idx, T* cst, int64_t n, const int64_t* rows, const int64_t* cols,
                           const T* costs, int64_t q, int threads) {
    const std::vector<int64_t> fresh = fresh_arcs(ptr, idx, n, rows, cols, q, threads);
    const int64_t nf = int64_t(fresh.size());
    // From the last row back: every old arc moves right by the fresh arcs before it, so the
    // writes (w) never overtake the reads (a); rows before the first fresh arc stay put.
    int64_t w = ptr[n] + nf, f = nf - 1;
    for (int64_t r = n - 1; r >= 0 && f >= 0; --r) {
        const int64_t s = ptr[r];
        int64_t a = ptr[r + 1] - 1;
        const int64_t end = w;
        for (; f >= 0 && rows[fresh[f]] == r; --f) {
            const int64_t c = cols[fresh[f]];
            for (; a >= s && int64_t(idx[a]) > c; --a) {
                --w;
                idx[w] = idx[a];
                cst[w] = cst[a];
            }
            --w;
            idx[w] = I(c);
            cst[w] = costs[fresh[f]];
        }
        const int64_t count = a - s + 1;
        w -= count;
        if (w != s) {
            std::memmove(idx + w, idx + s, sizeof(I) * count);
            std::memmove(cst + w, cst + s, sizeof(T) * count);
        }
        ptr[r + 1] = end;
    }
    return nf;
}

template <class I, class T>
int64_t csr_insert_into(const int64_t* ptr, const I* idx, const T* cst, int64_t n, const int64_t* rows,
                        const int64_t* cols, const T* costs, int64_t q, int64_t* out_ptr, I* out_idx, T* out_cst,
                        int threads) {
    const std::vector<int64_t> fresh = fresh_arcs(ptr, idx, n, rows, cols, q, threads);
    const int64_t nf = int64_t(fresh.size());
    std::vector<int64_t> first(n + 1, 0);  // first[r]: fresh arcs in the rows before r
    for (int64_t f : fresh) ++first[rows[f] + 1];
    for (int64_t r = 0; r < n; ++r) first[r + 1] += first[r];
    for (int64_t r = 0; r <= n; ++r) out_ptr[r] = ptr[r] + first[r];
    constexpr int64_t kBlock = 4096;  // rows; the shared counter balances blocks of unequal arcs
    parallel_blocks((n + kBlock - 1) / kBlock, threads, [&](int64_t b) {
        for (int64_t r = b * kBlock, e = std::min(n, r + kBlock); r < e; ++r) {
            int64_t a = ptr[r], w = out_ptr[r];
            const int64_t a_end = ptr[r + 1];
            for (int64_t f = first[r]; f < first[r + 1]; ++f) {  // fresh arcs by column
                const int64_t c = cols[fresh[f]];
                for (; a < a_end && int64_t(idx[a]) < c; ++a, ++w) {
                    out_idx[w] = idx[a];
                    out_cst[w] = cst[a];
                }
                out_idx[w] = I(c);
                out_cst[w] = costs[fresh[f]];
                ++w;
            }
            if (a < a_end) {
                std::memcpy(out_idx + w, idx + a, sizeof(I) * (a_end - a));
                std::memcpy(out_cst + w, cst + a, sizeof(T) * (a_end - a));
            }
        }
    });
    return nf;
}

template <class I, class T>
int64_t csr_margins(const int64_t* ptr, const I* idx, const T* cst, int64_t n, int64_t m, const int64_t* r2c,
                    const double* u, const double* v, int threads, double* out) {
    constexpr int64_t kBlock = 1024;
    std::atomic<int64_t> bad{-1};
    parallel_blocks((n + kBlock - 1) / kBlock, threads, [&](int64_t b) {
        for (int64_t i = b * kBlock, e = std::min(n, i + kBlock); i < e; ++i) {
            double best = std::numeric_limits<double>::infinity();
            for (int64_t k = ptr[i]; k < ptr[i + 1]; ++k) {
                const int64_t j = int64_t(idx[k]);
                if (j < 0 || j >= m) {
                    bad = k;
                    break;
                }
                if (j != r2c[i]) best = std::min(best, (double(cst[k]) - u[i]) - v[j]);
            }
            out[i] = r2c[i] < 0 ? std::numeric_limits<double>::quiet_NaN() : std::max(best, 0.0);
        }
    });
    return bad.load();
}

template void csr_find<int32_t>(const int64_t*, const int32_t*, const int64_t*, const int64_t*, int64_t,
                                int64_t*, int);
template void csr_find<int64_t>(const int64_t*, const int64_t*, const int64_t*, const int64_t*, int64_t,
                                int64_t*, int);
#define MECHPERM_INPLACE(I, T)                                                                            \
    template int64_t csr_insert_inplace<I, T>(int64_t*, I*, T*, int64_t, const int64_t*, const int64_t*, const T*, \
                                              int64_t, int);
MECHPERM_INPLACE(int32_t, float)
MECHPERM_INPLACE(int32_t, double)
MECHPERM_INPLACE(int64_t, float)
MECHPERM_INPLACE(int64_t, double)
#undef MECHPERM_INPLACE
#define MECHPERM_INTO(I, T)                                                                               \
    template int64_t csr_insert_into<I, T>(const int64_t*, const I*, const T*, int64_t, const int64_t*,     \
                                           const int64_t*, const T*, int64_t, int64_t*, I*, T*, int);
MECHPERM_INTO(int32_t, float)
MECHPERM_INTO(int32_t, double)
MECHPERM_INTO(int64_t, float)
MECHPERM_INTO(int64_t, double)
#undef MECHPERM_INTO
#define MECHPERM_MARGINS(I, T)                                                                            \
    template int64_t csr_margins<I, T>(const int64_t*, const I*, const T*, int64_t, int64_t, const int64_t*, \
                                       const double*, const double*, int, double*);
MECHPERM_MARGINS(int32_t, float)
MECHPERM_MARGINS(int32_t, double)
MECHPERM_MARGINS(int64_t, float)
MECHPERM_MARGINS(int64_t, double)
#undef MECHPERM_MARGINS

int64_t union_count_pairs(const int64_t* keys, int64_t e, int pos_bits) {
    const int shift = pos_bits + 2;
    int64_t count = 0;
    for (int64_t t = 0; t < e; ++t) count += t == 0 || (keys[t] >> shift) != (keys[t - 1] >> shift);
    return count;
}

void union_sorted_keys(const int64_t* keys, int64_t e, int pos_bits, int64_t n, int64_t m, const float* costs,
                       int64_t* indptr, int64_t* cols, float* out_costs, uint8_t* sources) {
    // One pass in key order (a pair's copies are adjacent, the lowest part first): the torch
    // version's ten passes over every edge took 0.4 s of make_stack's 16384 graph (4.2M keys,
    // 2 threads), most of the union.
    const int shift = pos_bits + 2;
    const int64_t pos_mask = (int64_t(1) << pos_bits) - 1;
    // Rows ascend with the keys: a running row start instead of a division per edge; the costs
    // are read at random positions, prefetched a few keys ahead.
    constexpr int64_t kAhead = 16;
    std::fill(indptr, indptr + n + 1, int64_t(0));
    int64_t out = -1, prev = -1, row = 0, row_start = 0;
    for (int64_t t = 0; t < e; ++t) {
        if (t + kAhead < e) __builtin_prefetch(costs + (keys[t + kAhead] & pos_mask));
        const int64_t pair = keys[t] >> shift;
        const int part = int((keys[t] >> pos_bits) & 3);
        if (pair != prev) {
            ++out;
            prev = pair;
            while (pair - row_start >= m) {
                ++row;
                row_start += m;
            }
            cols[out] = pair - row_start;
            out_costs[out] = costs[keys[t] & pos_mask];
            sources[out] = uint8_t(1u << part);
            ++indptr[row + 1];
        } else {
            sources[out] = uint8_t(sources[out] | (1u << part));
        }
    }
    for (int64_t i = 0; i < n; ++i) indptr[i + 1] += indptr[i];
}

}  // namespace mechperm
