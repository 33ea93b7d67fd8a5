// Per-pair candidate bounds for the exact loop's pricing (mechperm/assign.py, _bound_suspects).
//
// A row failing its candidate bound (the minimum over its left-out pairs of the largest family
// bound) usually fails on a few columns only: costing those pairs settles it at a fraction of
// a full row's GEMM. This scan finds them: O(m) per row and family, no dot products.
#include "bounds.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include "parallel.hpp"

namespace mechperm {

namespace {

// np.minimum: NaN if either is
inline double nan_min(double a, double b) {
    if (std::isnan(a) || std::isnan(b)) return std::numeric_limits<double>::quiet_NaN();
    return b < a ? b : a;
}

}  // namespace

void rank_bounds(const int64_t* order, const int64_t* idx, int64_t n, int64_t m, const double* row_bound,
                 const double* col_bound, const double* row_offset, const double* col_offset, const double* u,
                 const double* v, double* out, int threads) {
    constexpr double kInf = std::numeric_limits<double>::infinity();
    constexpr int64_t kBlock = 1 << 14;
    // S and A in the columns' order (the random reads, on the threads), then pre[k]: min of S
    // over the first k columns, suf[k]: min of A over the rest (the sequential part: two
    // streaming passes of m)
    std::vector<double> pre(m + 1), suf(m + 1);
    parallel_blocks((m + kBlock - 1) / kBlock, std::max(1, threads), [&](int64_t b) {
        for (int64_t k = b * kBlock, e = std::min(m, k + kBlock); k < e; ++k) {
            const int64_t j = order[k];
            pre[k + 1] = col_bound[j] - v[j];
            suf[k] = (col_offset != nullptr ? col_offset[j] : 0.0) - v[j];
        }
    });
    pre[0] = kInf;
    for (int64_t k = 0; k < m; ++k) pre[k + 1] = nan_min(pre[k], pre[k + 1]);
    suf[m] = kInf;
    for (int64_t k = m - 1; k >= 0; --k) suf[k] = nan_min(suf[k + 1], suf[k]);
    parallel_blocks((n + kBlock - 1) / kBlock, std::max(1, threads), [&](int64_t b) {
        for (int64_t i = b * kBlock, e = std::min(n, i + kBlock); i < e; ++i) {
            const double X = row_bound[i] - u[i];
            const double Y = (row_offset != nullptr ? row_offset[i] : 0.0) - u[i];
            const double t = Y - X;
            double lb = X + nan_min(suf[idx[i]], t + pre[idx[i]]);
            if (row_bound[i] == kInf) lb = kInf;
            out[i] = std::isnan(lb) ? -kInf : lb;
        }
    });
}

template <class I>
void suspect_pairs(const int64_t* indptr, const I* indices, int64_t m, const int64_t* rows, int64_t nr,
                   const std::vector<BoundFamily>& families, int64_t limit, int64_t mult, int64_t min_cols,
                   int threads, std::vector<uint8_t>& ok, std::vector<std::vector<int64_t>>& cols,
                   std::vector<double>& bound) {
    constexpr double kInf = std::numeric_limits<double>::infinity();
    constexpr int64_t kBlock = 16;
    ok.assign(nr, 0);
    cols.assign(nr, {});
    bound.assign(nr, kInf);
    const int64_t blocks = (nr + kBlock - 1) / kBlock;
    threads = int(std::max<int64_t>(1, std::min<int64_t>(threads, blocks)));
    // Per-thread buffers, taken by the blocks in turn (a block runs on one thread at a time).
    struct Buffers {
        std::vector<double> pb;
        std::vector<int64_t> col, order;
        std::vector<uint8_t> arc;
    };
    std::vector<Buffers> pool(threads);
    std::vector<std::atomic<int>> busy(threads);
    for (auto& b : busy) b = 0;
    parallel_blocks(blocks, threads, [&](int64_t blk) {
        int slot = 0;
        for (int expected = 0;; slot = (slot + 1) % threads, expected = 0)
            if (busy[slot].compare_exchange_strong(expected, 1)) break;
        Buffers& buf = pool[slot];
        if (int64_t(buf.pb.size()) < m) {
            buf.pb.resize(m);
            buf.col.resize(m);
            buf.order.resize(m);
            buf.arc.assign(m, 0);
        }
        for (int64_t r = blk * kBlock, e = std::min(nr, r + kBlock); r < e; ++r) {
            const int64_t i = rows[r];
            for (int64_t k = indptr[i]; k < indptr[i + 1]; ++k) buf.arc[int64_t(indices[k])] = 1;
            int64_t left = 0, failing = 0;
            for (int64_t j = 0; j < m; ++j) {
                if (buf.arc[j]) continue;
                double best = -kInf;
                for (const BoundFamily& f : families) {
                    double x = f.a[i] + f.b[j];
                    if (f.p != nullptr) x -= f.p[i] * f.q[j];
                    if (x > best) best = x;  // NaN never is
                }
                buf.pb[left] = best;
                buf.col[left] = j;
                failing += best < 0.0;
                ++left;
            }
            for (int64_t k = indptr[i]; k < indptr[i + 1]; ++k) buf.arc[int64_t(indices[k])] = 0;
            if (failing > limit) continue;
            ok[r] = 1;
            const int64_t want = std::min({left, limit, std::max(mult * failing, min_cols)});
            std::vector<int64_t>& out = cols[r];
            if (want >= left) {
                out.assign(buf.col.begin(), buf.col.begin() + left);
                continue;
            }
            int64_t* order = buf.order.data();
            std::iota(order, order + left, int64_t(0));
            const double* pb = buf.pb.data();
            std::nth_element(order, order + want, order + left,
                             [pb](int64_t a, int64_t b) { return pb[a] < pb[b] || (pb[a] == pb[b] && a < b); });
            bound[r] = pb[order[want]];
            out.resize(want);
            for (int64_t t = 0; t < want; ++t) out[t] = buf.col[order[t]];
            std::sort(out.begin(), out.end());
        }
        busy[slot] = 0;
    });
}

template void suspect_pairs<int32_t>(const int64_t*, const int32_t*, int64_t, const int64_t*, int64_t,
                                     const std::vector<BoundFamily>&, int64_t, int64_t, int64_t, int,
                                     std::vector<uint8_t>&, std::vector<std::vector<int64_t>>&, std::vector<double>&);
template void suspect_pairs<int64_t>(const int64_t*, const int64_t*, int64_t, const int64_t*, int64_t,
                                     const std::vector<BoundFamily>&, int64_t, int64_t, int64_t, int,
                                     std::vector<uint8_t>&, std::vector<std::vector<int64_t>>&, std::vector<double>&);

}  // namespace mechperm
