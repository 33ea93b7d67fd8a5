// Lower envelope of lines, for the candidate loop's Euclidean bounds (see auction.hpp).
#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "auction.hpp"
#include "parallel.hpp"

namespace mechperm {

void envelope_min(const double* w, const double* x, int64_t m, const double* s, int64_t nq,
                  double* out, const int64_t* by_slope, int threads) {
    // Line j: y = w_j - x_j * s. Sorted by slope -x_j decreasing (x increasing); of equal
    // slopes only the lowest line can be minimal. by_slope: that order by x alone, given (the
    // exact loop's slopes are fixed while w moves with the duals every round).
    std::vector<int64_t> order(m);
    if (by_slope != nullptr) {
        std::copy(by_slope, by_slope + m, order.begin());
        // lowest first within each run of equal slopes (runs are short: ties are rare)
        for (int64_t a = 0, b; a < m; a = b) {
            for (b = a + 1; b < m && x[order[b]] == x[order[a]]; ++b) {}
            if (b - a > 1)
                std::sort(order.begin() + a, order.begin() + b, [&](int64_t p, int64_t q) { return w[p] < w[q]; });
        }
    } else {
        std::iota(order.begin(), order.end(), 0);
        std::sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
            return x[a] < x[b] || (x[a] == x[b] && w[a] < w[b]);
        });
    }
    std::vector<int64_t> hull;
    hull.reserve(m);
    // Where lines a and b (x_a < x_b) cross: w_a - x_a s = w_b - x_b s.
    auto cross = [&](int64_t a, int64_t b) {
        return (static_cast<long double>(w[b]) - w[a]) / (static_cast<long double>(x[b]) - x[a]);
    };
    for (int64_t t = 0; t < m; ++t) {
        const int64_t j = order[t];
        if (!hull.empty() && x[hull.back()] == x[j]) continue;  // same slope, higher or equal
        // The last line is never minimal if the new one undercuts it before it undercuts the
        // one below it.
        while (hull.size() >= 2 &&
               cross(hull[hull.size() - 2], j) <= cross(hull[hull.size() - 2], hull.back()))
            hull.pop_back();
        hull.push_back(j);
    }
    const int64_t h = int64_t(hull.size());
    std::vector<long double> bp(h > 1 ? h - 1 : 0);  // hull[t] is minimal on [bp[t-1], bp[t]]
    for (int64_t t = 0; t + 1 < h; ++t) bp[t] = cross(hull[t], hull[t + 1]);
    // Queries are independent binary searches: blocks of them on the threads (F = 1M rows:
    // the exact loop asks two or three envelopes a round).
    constexpr int64_t kBlock = 16384;
    parallel_blocks((nq + kBlock - 1) / kBlock, threads, [&](int64_t b) {
        for (int64_t q = b * kBlock, end = std::min(nq, q + kBlock); q < end; ++q) {
            if (h == 0) {
                out[q] = INFINITY;
                continue;
            }
            const int64_t t =
                std::upper_bound(bp.begin(), bp.end(), static_cast<long double>(s[q])) - bp.begin();
            // The neighbours too: rounding in the breakpoints must not make the bound too high.
            double best = INFINITY;
            for (int64_t u = std::max<int64_t>(0, t - 1); u <= std::min(h - 1, t + 1); ++u)
                best = std::min(best, w[hull[u]] - x[hull[u]] * s[q]);
            out[q] = best;
        }
    });
}

}  // namespace mechperm
