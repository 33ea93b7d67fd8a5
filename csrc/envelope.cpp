// Lower envelope of lines, for the candidate loop's Euclidean bounds (see auction.hpp).
#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "auction.hpp"
#include "parallel.hpp"

namespace mechperm {

bool envelope_min(const double* w, const double* x, int64_t m, const double* s, int64_t nq,
                  double* out, const int64_t* by_slope, int threads) {
    // Line j: y = w_j - x_j * s. Sorted by slope -x_j decreasing (x increasing); of equal
    // slopes only the lowest line can be minimal. by_slope: that order by x alone, given (the
    // exact loop's slopes are fixed while w moves with the duals every round).
    std::vector<int64_t> order(m);
    if (by_slope != nullptr) {
        std::vector<char> seen(m, 0);  // a permutation (its order is checked on the gathered x)
        for (int64_t t = 0; t < m; ++t) {
            const int64_t j = by_slope[t];
            if (j < 0 || j >= m || seen[j]) return false;
            seen[j] = 1;
            order[t] = j;
        }
    } else {
        std::iota(order.begin(), order.end(), 0);
        std::sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return x[a] < x[b]; });
    }
    // The lines in slope order, gathered once (on the threads): the hull then reads them in
    // sequence (F = 1M: ~60 ms a call from its random reads and divisions, the queries ~30).
    std::vector<double> xs(m), ws(m);
    constexpr int64_t kGather = 1 << 16;
    parallel_blocks((m + kGather - 1) / kGather, threads, [&](int64_t b) {
        for (int64_t t = b * kGather, end = std::min(m, t + kGather); t < end; ++t) {
            xs[t] = x[order[t]];
            ws[t] = w[order[t]];
        }
    });
    for (int64_t t = 1; t < m; ++t)
        if (xs[t - 1] > xs[t]) return false;  // by_slope does not sort x
    // hull[] holds positions in (xs, ws). Lines a, b, c (x_a < x_b < x_c): b is never minimal
    // if c undercuts a before b does, i.e. cross(a, c) <= cross(a, b), where cross(a, b) =
    // (w_b - w_a) / (x_b - x_a); with positive denominators, compared as products.
    std::vector<int64_t> hull;
    hull.reserve(1024);
    for (int64_t t = 0; t < m; ++t) {
        if (!hull.empty() && xs[hull.back()] == xs[t]) {  // same slope: keep the lower line
            if (ws[t] < ws[hull.back()]) hull.pop_back();
            else continue;
        }
        while (hull.size() >= 2) {
            const int64_t a = hull[hull.size() - 2], b = hull.back();
            const long double lhs = (static_cast<long double>(ws[t]) - ws[a]) * (static_cast<long double>(xs[b]) - xs[a]);
            const long double rhs = (static_cast<long double>(ws[b]) - ws[a]) * (static_cast<long double>(xs[t]) - xs[a]);
            if (lhs > rhs) break;
            hull.pop_back();
        }
        hull.push_back(t);
    }
    const int64_t h = int64_t(hull.size());
    std::vector<double> hx(h), hw(h);
    for (int64_t t = 0; t < h; ++t) {
        hx[t] = xs[hull[t]];
        hw[t] = ws[hull[t]];
    }
    std::vector<long double> bp(h > 1 ? h - 1 : 0);  // hull line t is minimal on [bp[t-1], bp[t]]
    for (int64_t t = 0; t + 1 < h; ++t)
        bp[t] = (static_cast<long double>(hw[t + 1]) - hw[t]) / (static_cast<long double>(hx[t + 1]) - hx[t]);
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
                best = std::min(best, hw[u] - hx[u] * s[q]);
            out[q] = best;
        }
    });
    return true;
}

}  // namespace mechperm
