// Dense helpers of the exact-from-candidates loop: candidate graph with bounds on every pair left
// out, and the pricing pass (pairs of negative reduced cost). See DESIGN.md, "Exact assignment
// from a sparse candidate graph".
#include <algorithm>
#include <cmath>
#include <utility>
#include <vector>

#include "auction.hpp"
#include "auction_detail.hpp"

namespace mechperm {
namespace {

using detail::kInf;
using detail::Poller;

// The k smallest (value, index, payload) triples seen so far, as a max-heap over caller-owned
// storage; `limit()` is the k-th smallest value (+inf until k were seen, -inf when k = 0), so
// every value rejected or evicted is >= the final limit. Ties are broken by a hash of
// (salt, index), not by the index: with massive ties (costs in {0, 1, 2}) index order would
// send every row to the same lowest-numbered columns and the candidate graph would have no
// perfect matching of cheap arcs; hashed ties spread them like a random graph.
class TopK {
public:
    TopK(double* val, int64_t* idx, double* pay, int64_t k, int64_t* size, int64_t salt)
        : val_(val), idx_(idx), pay_(pay), k_(k), size_(*size),
          salt_(uint64_t(salt) * 0x9E3779B97F4A7C15ull) {}
    double limit() const { return k_ == 0 ? -kInf : (size_ < k_ ? kInf : val_[0]); }
    void offer(double x, int64_t j, double payload) {
        if (k_ == 0) return;
        if (size_ < k_) {
            int64_t q = size_++;
            set(q, x, j, payload);
            while (q > 0) {
                const int64_t parent = (q - 1) / 2;
                if (!above(q, parent)) break;
                swap(q, parent);
                q = parent;
            }
        } else if (x < val_[0] || (x == val_[0] && key(j) < key(idx_[0]))) {
            set(0, x, j, payload);
            int64_t q = 0;
            while (true) {
                const int64_t l = 2 * q + 1, r = l + 1;
                int64_t top = q;
                if (l < size_ && above(l, top)) top = l;
                if (r < size_ && above(r, top)) top = r;
                if (top == q) return;
                swap(q, top);
                q = top;
            }
        }
    }
    int64_t size() const { return size_; }

private:
    uint64_t key(int64_t j) const {  // splitmix64 finaliser
        uint64_t z = salt_ ^ uint64_t(j);
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        return z ^ (z >> 31);
    }
    void set(int64_t q, double x, int64_t j, double payload) {
        val_[q] = x;
        idx_[q] = j;
        pay_[q] = payload;
    }
    bool above(int64_t a, int64_t b) const {  // heap order: larger value, then larger key
        return val_[a] > val_[b] || (val_[a] == val_[b] && key(idx_[a]) > key(idx_[b]));
    }
    void swap(int64_t a, int64_t b) {
        std::swap(val_[a], val_[b]);
        std::swap(idx_[a], idx_[b]);
        std::swap(pay_[a], pay_[b]);
    }
    double* val_;
    int64_t* idx_;
    double* pay_;
    int64_t k_;
    int64_t& size_;
    uint64_t salt_;
};

}  // namespace

CandidateBuilder::CandidateBuilder(int64_t n, int64_t m, int64_t k_row, int64_t k_col,
                                   std::vector<double> col_offset, std::vector<double> row_offset)
    : n_(n), m_(m), k_row_(std::min(k_row, m)), k_col_(std::min(k_col, n)),
      a_(std::move(col_offset)), b_(std::move(row_offset)) {
    if (int64_t(a_.size()) != m_) a_.assign(m_, 0.0);
    if (int64_t(b_.size()) != n_) b_.assign(n_, 0.0);
    row_val_.assign(n_ * k_row_, 0.0);
    row_cost_.assign(n_ * k_row_, 0.0);
    row_idx_.assign(n_ * k_row_, 0);
    row_size_.assign(n_, 0);
    row_bound_.assign(n_, -kInf);  // rows never added: no bound
    diag_cost_.assign(n_, kInf);
    col_val_.assign(m_ * k_col_, 0.0);
    col_cost_.assign(m_ * k_col_, 0.0);
    col_idx_.assign(m_ * k_col_, 0);
    col_size_.assign(m_, 0);
    col_limit_.assign(m_, k_col_ == 0 ? -kInf : kInf);
}

template <class T>
Status CandidateBuilder::add_impl(const T* tile, int64_t r0, int64_t rows,
                                  const SolveOptions& opt) {
    if (r0 < 0 || rows < 0 || r0 + rows > n_) return Status::BAD_INPUT;
    Poller poll(opt);
    const double* a = a_.data();
    double* climit = col_limit_.data();
    for (int64_t q = 0; q < rows; ++q) {
        const int64_t i = r0 + q;
        const T* r = tile + q * m_;
        const double bi = b_[i];
        int64_t rsize = 0;
        TopK top(row_val_.data() + i * k_row_, row_idx_.data() + i * k_row_,
                 row_cost_.data() + i * k_row_, k_row_, &rsize, i);
        double rlim = top.limit();
        bool finite = true;
        detail::filter_row(r, a, rlim, bi, climit, m_, [&](int64_t j) {
            const double x = double(r[j]);
            if (!(x - x == 0.0)) finite = false;
            const double y = x - a[j];
            if (y <= rlim) {  // <=: ties at the limit compete by hash
                top.offer(y, j, x);
                rlim = top.limit();
            }
            const double z = x - bi;
            if (z <= climit[j]) {
                TopK col(col_val_.data() + j * k_col_, col_idx_.data() + j * k_col_,
                         col_cost_.data() + j * k_col_, k_col_, &col_size_[j], -1 - j);
                col.offer(z, i, x);
                climit[j] = col.limit();
            }
        });
        if (!finite) return Status::BAD_INPUT;
        row_size_[i] = top.size();
        row_bound_[i] = k_row_ < m_ ? top.limit() : kInf;
        if (i < m_) diag_cost_[i] = double(r[i]);
        if (poll.tick(2 * m_)) return Status::INTERRUPTED;
    }
    return Status::OK;
}

Status CandidateBuilder::add(const float* tile, int64_t r0, int64_t rows,
                             const SolveOptions& opt) {
    return add_impl(tile, r0, rows, opt);
}
Status CandidateBuilder::add(const double* tile, int64_t r0, int64_t rows,
                             const SolveOptions& opt) {
    return add_impl(tile, r0, rows, opt);
}

void CandidateBuilder::finish(bool diagonal, Candidates& out) {
    // Gather (row, column, cost) of row picks, column picks and diagonal arcs; sort, dedupe.
    std::vector<int64_t> deg(n_ + 1, 0);
    for (int64_t i = 0; i < n_; ++i)
        deg[i + 1] = row_size_[i] + (diagonal && i < m_ && diag_cost_[i] < kInf ? 1 : 0);
    for (int64_t j = 0; j < m_; ++j)
        for (int64_t q = 0; q < col_size_[j]; ++q) ++deg[col_idx_[j * k_col_ + q] + 1];
    for (int64_t i = 0; i < n_; ++i) deg[i + 1] += deg[i];
    std::vector<std::pair<int64_t, double>> arcs(deg[n_]);
    std::vector<int64_t> fill(deg.begin(), deg.end() - 1);
    for (int64_t i = 0; i < n_; ++i) {
        for (int64_t q = 0; q < row_size_[i]; ++q)
            arcs[fill[i]++] = {row_idx_[i * k_row_ + q], row_cost_[i * k_row_ + q]};
        if (diagonal && i < m_ && diag_cost_[i] < kInf) arcs[fill[i]++] = {i, diag_cost_[i]};
    }
    for (int64_t j = 0; j < m_; ++j)
        for (int64_t q = 0; q < col_size_[j]; ++q) {
            const int64_t i = col_idx_[j * k_col_ + q];
            arcs[fill[i]++] = {j, col_cost_[j * k_col_ + q]};
        }
    out.indptr.assign(n_ + 1, 0);
    out.indices.clear();
    out.costs.clear();
    out.indices.reserve(arcs.size());
    out.costs.reserve(arcs.size());
    for (int64_t i = 0; i < n_; ++i) {
        auto b = arcs.begin() + deg[i], e = arcs.begin() + deg[i + 1];
        std::sort(b, e, [](const auto& x, const auto& y) { return x.first < y.first; });
        int64_t last = -1;
        for (auto it = b; it != e; ++it) {
            if (it->first == last) continue;
            last = it->first;
            out.indices.push_back(it->first);
            out.costs.push_back(it->second);
        }
        out.indptr[i + 1] = int64_t(out.indices.size());
    }
    out.row_bound = row_bound_;
    out.col_bound.assign(m_, kInf);
    for (int64_t j = 0; j < m_; ++j) out.col_bound[j] = k_col_ < n_ ? col_limit_[j] : kInf;
    out.col_offset = a_;
    out.row_offset = b_;
}

namespace {

template <class T>
Status candidates_impl(const T* c, int64_t n, int64_t m, int64_t k_row, int64_t k_col,
                       const SolveOptions& opt, Candidates& out) {
    if (n < 0 || m < 0 || n > m || k_row < 0 || k_col < 0) return Status::BAD_INPUT;
    Poller poll(opt);
    // Pass 1: row and column minima (and finiteness).
    std::vector<double> rmin(n, kInf), cmin(m, kInf);
    for (int64_t i = 0; i < n; ++i) {
        double lo = kInf;
        if (!detail::minima_row(c + i * m, m, cmin.data(), lo)) return Status::BAD_INPUT;
        rmin[i] = lo;
        if (poll.tick(m)) return Status::INTERRUPTED;
    }
    // Pass 2: k smallest of c_ij - cmin_j per row, k smallest of c_ij - rmin_i per column.
    CandidateBuilder builder(n, m, k_row, k_col, std::move(cmin), std::move(rmin));
    const Status st = builder.add(c, 0, n, opt);
    if (st != Status::OK) return st;
    builder.finish(true, out);
    return Status::OK;
}

template <class T>
Status price_impl(const T* c, int64_t n, int64_t m, const int64_t* rows, int64_t n_rows,
                  const double* u, const double* v, double tol, int64_t max_per_row,
                  const SolveOptions& opt, Priced& out, double* row_min) {
    Poller poll(opt);
    out.rows.clear();
    out.cols.clear();
    out.costs.clear();
    const int64_t keep = max_per_row > 0 ? std::min(max_per_row, m) : m;
    std::vector<double> hv(keep), hp(keep);
    std::vector<int64_t> hi(keep);
    std::vector<std::pair<double, int64_t>> found;
    for (int64_t q = 0; q < n_rows; ++q) {
        const int64_t i = rows[q];
        if (i < 0 || i >= n) return Status::BAD_INPUT;
        const T* r = c + i * m;
        const double ui = u[i];
        double lo = kInf;
        int64_t tsize = 0;
        TopK top(hv.data(), hi.data(), hp.data(), keep, &tsize, i);
        double lim = -tol;
        constexpr int64_t kChunk = 64;
        bool finite = true;
        for (int64_t j0 = 0; j0 < m; j0 += kChunk) {
            const int64_t j1 = std::min(m, j0 + kChunk);
            if (!detail::chunk_reduced(r + j0, v + j0, ui, lim, j1 - j0, lo)) continue;
            for (int64_t j = j0; j < j1; ++j) {
                const double red = double(r[j]) - ui - v[j];
                if (!(red - red == 0.0)) finite = false;
                if (red <= lim) {
                    top.offer(red, j, 0.0);
                    if (max_per_row > 0) lim = std::min(-tol, top.limit());
                }
            }
        }
        if (!finite) return Status::BAD_INPUT;
        row_min[q] = lo;
        found.clear();
        for (int64_t t = 0; t < top.size(); ++t) found.emplace_back(hv[t], hi[t]);
        std::sort(found.begin(), found.end(),
                  [](const auto& a, const auto& b) { return a.second < b.second; });
        for (const auto& f : found) {
            out.rows.push_back(i);
            out.cols.push_back(f.second);
            out.costs.push_back(double(r[f.second]));
        }
        if (poll.tick(m)) return Status::INTERRUPTED;
    }
    return Status::OK;
}

template <class T>
Status margins_impl(const T* c, int64_t n, int64_t m, const int64_t* row_to_col, const double* u,
                    const double* v, const SolveOptions& opt, double* out) {
    Poller poll(opt);
    for (int64_t i = 0; i < n; ++i) {
        const int64_t own = row_to_col[i];
        if (own >= m) return Status::BAD_INPUT;
        const T* r = c + i * m;
        double lo = kInf;
        for (int64_t j = 0; j < m; ++j) {
            const double x = double(r[j]) - v[j];
            if (x < lo && j != own) lo = x;
        }
        out[i] = own < 0 ? std::nan("") : lo - u[i];
        if (poll.tick(m)) return Status::INTERRUPTED;
    }
    return Status::OK;
}

}  // namespace

Status dense_candidates(const float* cost, int64_t n, int64_t m, int64_t k_row, int64_t k_col,
                        const SolveOptions& opt, Candidates& out) {
    return candidates_impl(cost, n, m, k_row, k_col, opt, out);
}
Status dense_candidates(const double* cost, int64_t n, int64_t m, int64_t k_row, int64_t k_col,
                        const SolveOptions& opt, Candidates& out) {
    return candidates_impl(cost, n, m, k_row, k_col, opt, out);
}
Status dense_price(const float* cost, int64_t n, int64_t m, const int64_t* rows, int64_t n_rows,
                   const double* u, const double* v, double tol, int64_t max_per_row,
                   const SolveOptions& opt, Priced& out, double* row_min) {
    return price_impl(cost, n, m, rows, n_rows, u, v, tol, max_per_row, opt, out, row_min);
}
Status dense_price(const double* cost, int64_t n, int64_t m, const int64_t* rows, int64_t n_rows,
                   const double* u, const double* v, double tol, int64_t max_per_row,
                   const SolveOptions& opt, Priced& out, double* row_min) {
    return price_impl(cost, n, m, rows, n_rows, u, v, tol, max_per_row, opt, out, row_min);
}

Status dense_margins(const float* cost, int64_t n, int64_t m, const int64_t* row_to_col,
                     const double* u, const double* v, const SolveOptions& opt, double* out) {
    return margins_impl(cost, n, m, row_to_col, u, v, opt, out);
}
Status dense_margins(const double* cost, int64_t n, int64_t m, const int64_t* row_to_col,
                     const double* u, const double* v, const SolveOptions& opt, double* out) {
    return margins_impl(cost, n, m, row_to_col, u, v, opt, out);
}

}  // namespace mechperm
