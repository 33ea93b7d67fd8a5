// Lower envelope of lines, for the candidate loop's Euclidean bounds (see auction.hpp).
#include <algorithm>
#include <atomic>
#include <cmath>
#include <numeric>
#include <vector>

#include "auction.hpp"
#include "parallel.hpp"

namespace mechperm {

namespace {

struct Line {
    double x, w;  // w - x * s
};

// Appends line l (x >= every x in hull) to a lower hull, dropping the lines it makes never
// minimal: a, b, c (x_a < x_b < x_c) leave b out if c undercuts a before b does, i.e.
// cross(a, c) <= cross(a, b), cross(a, b) = (w_b - w_a) / (x_b - x_a); with positive
// denominators, compared as products. Of equal slopes only the lowest line (the first of
// equals) can be minimal.
inline void push_line(std::vector<Line>& hull, Line l) {
    if (!hull.empty() && hull.back().x == l.x) {
        if (l.w < hull.back().w) hull.pop_back();
        else return;
    }
    while (hull.size() >= 2) {
        const Line& a = hull[hull.size() - 2];
        const Line& b = hull.back();
        // In double where that decides, else in long double as every test was before: the
        // same hull, faster (long double is x87 on x86 and software on 64-bit ARM Linux). Each
        // double product is within 3 roundings (~3u relative) of the exact one, or 2^-1074
        // where it underflows; a difference beyond 8u of the sizes, plus 2^-1020, has the
        // exact sign. Overflow gives inf or NaN, which never passes the test.
        const double lhs = (l.w - a.w) * (b.x - a.x), rhs = (b.w - a.w) * (l.x - a.x);
        bool keep_b;
        if (std::fabs(lhs - rhs) > 0x1p-50 * (std::fabs(lhs) + std::fabs(rhs)) + 0x1p-1020) {
            keep_b = lhs > rhs;
        } else {
            const long double lhs_l = (static_cast<long double>(l.w) - a.w) * (static_cast<long double>(b.x) - a.x);
            const long double rhs_l = (static_cast<long double>(b.w) - a.w) * (static_cast<long double>(l.x) - a.x);
            keep_b = lhs_l > rhs_l;
        }
        if (keep_b) break;
        hull.pop_back();
    }
    hull.push_back(l);
}

}  // namespace

int envelope_min(const double* w, const double* x, int64_t m, const double* s, int64_t nq,
                 double* out, const int64_t* by_slope, int threads, const int64_t* by_query) {
    // Line j: y = w_j - x_j * s, taken by slope -x_j decreasing (x increasing). by_slope: that
    // order by x alone, given (the exact loop's slopes are fixed while w moves with the duals
    // every round); checked here to be a permutation that sorts x.
    std::vector<int64_t> own;
    const int64_t* order = by_slope;
    if (order == nullptr) {
        own.resize(m);
        std::iota(own.begin(), own.end(), 0);
        std::stable_sort(own.begin(), own.end(), [&](int64_t a, int64_t b) { return x[a] < x[b]; });
        order = own.data();
    }
    // Blocks of the slope order on the threads: each gathers its lines (random reads) and keeps
    // its own lower hull, since a line off its block's envelope is off the whole one; one pass
    // over the blocks' hulls then gives the envelope. (F = 1M: the permutation check and the
    // hull were sequential passes, ~25 ms of a call on any number of threads; on 2 threads a
    // call now takes 32-36 ms against 50-55 before.)
    constexpr int64_t kBlock = int64_t(1) << 15;
    const int64_t blocks = (m + kBlock - 1) / kBlock;
    std::vector<std::vector<Line>> part(blocks);
    std::vector<std::atomic<uint8_t>> seen(by_slope != nullptr ? m : 0);  // value-initialised: 0
    std::atomic<bool> ok{true};
    parallel_blocks(blocks, threads, [&](int64_t b) {
        const int64_t lo = b * kBlock, hi = std::min(m, lo + kBlock);
        std::vector<Line>& hull = part[b];
        hull.reserve(256);
        double prev = -INFINITY;
        if (lo > 0) {
            const int64_t j = order[lo - 1];
            if (j < 0 || j >= m) {
                ok.store(false);
                return;
            }
            prev = x[j];
        }
        // gathered first (independent reads, many in flight), then the hull reads them in order
        std::vector<Line> lines(hi - lo);
        for (int64_t t = lo; t < hi; ++t) {
            const int64_t j = order[t];
            if (j < 0 || j >= m) {
                ok.store(false);
                return;
            }
            lines[t - lo] = Line{x[j], w[j]};
        }
        for (const Line& l : lines) {
            if (l.x < prev) {  // by_slope does not sort x
                ok.store(false);
                return;
            }
            prev = l.x;
            push_line(hull, l);
        }
        if (by_slope != nullptr)
            for (int64_t t = lo; t < hi; ++t) seen[order[t]].store(1, std::memory_order_relaxed);
    });
    if (!ok.load()) return kEnvelopeBadSlopeOrder;
    if (by_slope != nullptr) {  // m entries in range, every one seen: a permutation
        const int64_t missing = first_bad(m, threads, [&](int64_t j) { return seen[j].load(std::memory_order_relaxed) == 0; });
        if (missing >= 0) return kEnvelopeBadSlopeOrder;
    }
    std::vector<Line> hull;
    if (blocks == 1) {  // one block's hull is the envelope: no second pass over its lines
        hull.swap(part[0]);
    } else {
        hull.reserve(1024);
        for (const auto& p : part)
            for (const Line& l : p) push_line(hull, l);
    }
    const int64_t h = int64_t(hull.size());
    // hull line t is minimal on [bp[t-1], bp[t]]; the queries search a double copy, stepping
    // back over breakpoints that round onto the query (the long double search's t exactly).
    std::vector<long double> bp(h > 1 ? h - 1 : 0);
    std::vector<double> bpd(bp.size());
    for (int64_t t = 0; t + 1 < h; ++t) {
        bp[t] = (static_cast<long double>(hull[t + 1].w) - hull[t].w) /
                (static_cast<long double>(hull[t + 1].x) - hull[t].x);
        bpd[t] = static_cast<double>(bp[t]);
    }
    const auto at = [&](double sq, int64_t t) {  // t: the breakpoints <= sq (upper_bound's)
        while (t > 0 && bpd[t - 1] == sq && bp[t - 1] > static_cast<long double>(sq)) --t;
        // The neighbours too: rounding in the breakpoints must not make the bound too high.
        double best = INFINITY;
        for (int64_t u = std::max<int64_t>(0, t - 1); u <= std::min(h - 1, t + 1); ++u)
            best = std::min(best, hull[u].w - hull[u].x * sq);
        return best;
    };
    constexpr int64_t kQueries = 16384;
    const int64_t nb = int64_t(bpd.size());
    if (by_query == nullptr || nq > kWalkMaxQueries) {  // a binary search each
        parallel_blocks((nq + kQueries - 1) / kQueries, threads, [&](int64_t b) {
            for (int64_t q = b * kQueries, end = std::min(nq, q + kQueries); q < end; ++q)
                out[q] = h == 0 ? INFINITY : at(s[q], std::upper_bound(bpd.begin(), bpd.end(), s[q]) - bpd.begin());
        });
        return kEnvelopeOk;
    }
    // In the given order, blocks of them on the threads, each a walk along the breakpoints (F =
    // 16384 rows on a hull of as many lines: the binary searches' mispredicted branches took
    // ~30 ns a row; the walk gives the same t, query for query). by_query is checked as it
    // goes: each entry in range, s ascending along it, and (out pre-filled with NaN, which no
    // line's value is) every query written: a permutation.
    const int64_t* qo = by_query;
    std::fill(out, out + nq, NAN);
    ok.store(true);
    parallel_blocks((nq + kQueries - 1) / kQueries, threads, [&](int64_t b) {
        const int64_t lo = b * kQueries, hi = std::min(nq, lo + kQueries);
        std::vector<double> sq(hi - lo);
        double prev = -INFINITY;
        for (int64_t i = std::max<int64_t>(0, lo - 1); i < hi; ++i) {
            const int64_t q = qo[i];
            if (q < 0 || q >= nq || s[q] < prev) {
                ok.store(false);
                return;
            }
            prev = s[q];
            if (i >= lo) sq[i - lo] = prev;
        }
        int64_t t = std::upper_bound(bpd.begin(), bpd.end(), sq[0]) - bpd.begin();
        for (int64_t i = lo; i < hi; ++i) {
            const double v = sq[i - lo];
            while (t < nb && bpd[t] <= v) ++t;
            out[qo[i]] = h == 0 ? INFINITY : at(v, t);
        }
    });
    if (!ok.load() || first_bad(nq, threads, [&](int64_t q) { return std::isnan(out[q]); }) >= 0)
        return kEnvelopeBadQueryOrder;
    return kEnvelopeOk;
}

}  // namespace mechperm
