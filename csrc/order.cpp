// The exact loop's bounds sort per-column arrays of length F once per graph (assign.py's
// _cached sorts) and search each row in one: at F = 1M, ~1 s a match in numpy on one thread.
#include "order.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "parallel.hpp"

namespace mechperm {
namespace {

// numpy's float order: NaN after everything, every NaN equal.
inline bool key_less(double a, double b) { return a < b || (!std::isnan(a) && std::isnan(b)); }

// The same order on unsigned integers: the IEEE bits, negatives inverted and the sign bit set
// on the others; -0 taken as +0 (numpy ties them) and every NaN as the largest key.
inline uint64_t order_key(double v) {
    if (std::isnan(v)) return ~uint64_t(0);
    if (v == 0.0) v = 0.0;
    uint64_t b;
    std::memcpy(&b, &v, sizeof b);
    return (b >> 63) != 0 ? ~b : b | (uint64_t(1) << 63);
}

struct Keyed {
    uint64_t key;
    int64_t at;
};

// A strict total order (ties by index): any sort of it is the stable one.
inline bool keyed_less(const Keyed& a, const Keyed& b) { return a.key < b.key || (a.key == b.key && a.at < b.at); }

// Sorts a[0, n) (indices ascending on entry) by key, stably: least significant byte first,
// skipping the bytes every key shares (a column's norms share their sign and most of their
// exponent). tmp: n entries of scratch. Why not std::sort: F = 16384, one thread, 1.2 ms a
// sort against ~0.2 ms, and the bounds take four sorts and a search of every row per graph.
void radix_sort(Keyed* a, Keyed* tmp, int64_t n) {
    if (n < 64) {
        std::sort(a, a + n, keyed_less);
        return;
    }
    std::vector<int64_t> count(8 * 256, 0);
    for (int64_t i = 0; i < n; ++i) {
        const uint64_t k = a[i].key;
        for (int d = 0; d < 8; ++d) ++count[d * 256 + ((k >> (8 * d)) & 255)];
    }
    Keyed *src = a, *dst = tmp;
    for (int d = 0; d < 8; ++d) {
        int64_t* c = count.data() + d * 256;
        if (c[(src[0].key >> (8 * d)) & 255] == n) continue;
        int64_t sum = 0;
        for (int b = 0; b < 256; ++b) {
            const int64_t here = c[b];
            c[b] = sum;
            sum += here;
        }
        for (int64_t i = 0; i < n; ++i) dst[c[(src[i].key >> (8 * d)) & 255]++] = src[i];
        std::swap(src, dst);
    }
    if (src != a) std::copy(src, src + n, a);
}

void sorted_keys(const double* x, int64_t n, std::vector<Keyed>& a, int threads) {
    std::vector<Keyed> b(n);
    a.resize(n);
    // Runs sorted on the threads, then merged pairwise, each round's merges on the threads.
    constexpr int64_t kMinRun = 1 << 15;
    int64_t runs = 1;
    while (runs < threads && n / (2 * runs) >= kMinRun) runs *= 2;
    const int64_t len = (n + runs - 1) / std::max<int64_t>(runs, 1);
    parallel_blocks(runs, threads, [&](int64_t r) {
        const int64_t lo = std::min(n, r * len), hi = std::min(n, lo + len);
        for (int64_t i = lo; i < hi; ++i) a[i] = {order_key(x[i]), i};
        radix_sort(a.data() + lo, b.data() + lo, hi - lo);
    });
    for (int64_t w = len; w < n; w *= 2) {
        const int64_t pairs = (n + 2 * w - 1) / (2 * w);
        parallel_blocks(pairs, threads, [&](int64_t p) {
            const int64_t lo = p * 2 * w, mid = std::min(n, lo + w), hi = std::min(n, lo + 2 * w);
            std::merge(a.begin() + lo, a.begin() + mid, a.begin() + mid, a.begin() + hi, b.begin() + lo, keyed_less);
        });
        a.swap(b);
    }
}

}  // namespace

void argsort(const double* x, int64_t n, int64_t* out, int threads) {
    std::vector<Keyed> a;
    sorted_keys(x, n, a, threads);
    for (int64_t i = 0; i < n; ++i) out[i] = a[i].at;
}

void searchsorted_left(const double* sorted, int64_t m, const double* queries, int64_t nq, int64_t* out,
                       int threads) {
    constexpr int64_t kBlock = 1 << 14;
    if (nq < 1024 || nq * 16 < m) {  // few queries: a binary search each
        parallel_blocks((nq + kBlock - 1) / kBlock, threads, [&](int64_t b) {
            for (int64_t q = b * kBlock, end = std::min(nq, q + kBlock); q < end; ++q)
                out[q] = std::lower_bound(sorted, sorted + m, queries[q], key_less) - sorted;
        });
        return;
    }
    // Many: the queries sorted, then one walk along `sorted` per block of them (F = 16384 rows
    // against as many columns: the binary searches' mispredicted branches took ~100 ns a row).
    std::vector<Keyed> q;
    sorted_keys(queries, nq, q, threads);
    parallel_blocks((nq + kBlock - 1) / kBlock, threads, [&](int64_t b) {
        const int64_t lo = b * kBlock, hi = std::min(nq, lo + kBlock);
        int64_t p = std::lower_bound(sorted, sorted + m, queries[q[lo].at], key_less) - sorted;
        for (int64_t i = lo; i < hi; ++i) {
            const double v = queries[q[i].at];
            while (p < m && key_less(sorted[p], v)) ++p;
            out[q[i].at] = p;
        }
    });
}

}  // namespace mechperm
