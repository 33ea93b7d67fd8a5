// The exact loop's bounds sort per-column arrays of length F once per graph (assign.py's
// _cached sorts) and search each row in one: at F = 1M, ~1 s a match in numpy on one thread.
#include "order.hpp"

#include <algorithm>
#include <cmath>
#include <vector>

#include "parallel.hpp"

namespace mechperm {
namespace {

// numpy's float order: NaN after everything, every NaN equal.
inline bool key_less(double a, double b) { return a < b || (!std::isnan(a) && std::isnan(b)); }

struct Keyed {
    double key;
    int64_t at;
};

// A strict total order (ties by index): any sort of it is the stable one.
inline bool keyed_less(const Keyed& a, const Keyed& b) {
    if (key_less(a.key, b.key)) return true;
    if (key_less(b.key, a.key)) return false;
    return a.at < b.at;
}

}  // namespace

void argsort(const double* x, int64_t n, int64_t* out, int threads) {
    std::vector<Keyed> a(n), b;
    for (int64_t i = 0; i < n; ++i) a[i] = {x[i], i};
    // Runs sorted on the threads, then merged pairwise, each round's merges on the threads.
    constexpr int64_t kMinRun = 1 << 15;
    int64_t runs = 1;
    while (runs < threads && n / (2 * runs) >= kMinRun) runs *= 2;
    const int64_t len = (n + runs - 1) / std::max<int64_t>(runs, 1);
    parallel_blocks(runs, threads, [&](int64_t r) {
        const int64_t lo = std::min(n, r * len), hi = std::min(n, lo + len);
        std::sort(a.begin() + lo, a.begin() + hi, keyed_less);
    });
    if (runs > 1) b.resize(n);
    for (int64_t w = len; w < n; w *= 2) {
        const int64_t pairs = (n + 2 * w - 1) / (2 * w);
        parallel_blocks(pairs, threads, [&](int64_t p) {
            const int64_t lo = p * 2 * w, mid = std::min(n, lo + w), hi = std::min(n, lo + 2 * w);
            std::merge(a.begin() + lo, a.begin() + mid, a.begin() + mid, a.begin() + hi, b.begin() + lo, keyed_less);
        });
        a.swap(b);
    }
    for (int64_t i = 0; i < n; ++i) out[i] = a[i].at;
}

void searchsorted_left(const double* sorted, int64_t m, const double* queries, int64_t nq, int64_t* out,
                       int threads) {
    constexpr int64_t kBlock = 1 << 14;
    parallel_blocks((nq + kBlock - 1) / kBlock, threads, [&](int64_t b) {
        for (int64_t q = b * kBlock, end = std::min(nq, q + kBlock); q < end; ++q)
            out[q] = std::lower_bound(sorted, sorted + m, queries[q], key_less) - sorted;
    });
}

}  // namespace mechperm
