// Auction algorithm with epsilon-scaling and an exact shortest-augmenting-path finish.
// See auction.hpp for the problem statement and the references.
//
// Internally everything is in "price" form: a row values column j at c_ij + p_j and bids for the
// smallest value; prices only rise in forward bids. The duals handed out are v_j = min(p) - p_j
// and u_i = min_j (c_ij - v_j).
#include "auction.hpp"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <sstream>
#include <vector>

#include "auction_detail.hpp"
#include "parallel.hpp"

#ifndef MECHPERM_VERSION
#define MECHPERM_VERSION "unknown"
#endif

namespace mechperm {

std::string build_info() {
    std::ostringstream out;
    out << "mechperm._auction " << MECHPERM_VERSION << "; C++ " << __cplusplus;
#if defined(__clang__)
    out << "; clang " << __clang_major__ << "." << __clang_minor__;
#elif defined(__GNUC__)
    out << "; gcc " << __GNUC__ << "." << __GNUC_MINOR__;
#elif defined(_MSC_VER)
    out << "; msvc " << _MSC_VER;
#endif
#if defined(__OPTIMIZE__)
    out << "; optimised";
#else
    out << "; NOT optimised";
#endif
#ifdef MECHPERM_X86_DISPATCH
    out << (detail::cpu_has_avx2() ? "; avx2 dense scans" : "; scalar dense scans");
#endif
    return out.str();
}

const char* status_name(Status s) {
    switch (s) {
        case Status::OK: return "OK";
        case Status::INFEASIBLE: return "INFEASIBLE";
        case Status::INTERRUPTED: return "INTERRUPTED";
        case Status::BAD_INPUT: return "BAD_INPUT";
    }
    return "UNKNOWN";
}

namespace {

using detail::Best;
using detail::kInf;
using detail::Poller;

// ---- Row/column access to the two kinds of graph ------------------------------------------
// Columns m..m+n-1 are the dummy columns of partial mode (dummy m+i belongs to row i).

template <class T>
struct DenseGraph {
    static constexpr bool kDense = true;
    const T* c;
    int64_t n, m;
    const double* lam;

    int64_t cols() const { return lam != nullptr ? m + n : m; }
    int64_t row_work(int64_t) const { return m + 1; }
    int64_t total_work(int64_t rows) const { return rows * (m + 1); }
    double cost(int64_t i, int64_t j) const { return j < m ? double(c[i * m + j]) : lam[i]; }
    // Best and second best of c_ij + p_j; c1 receives the cost of the best arc (kSecond: and
    // the second best's column, b.j2).
    template <bool kSecond = false>
    Best scan(int64_t i, const double* p, double& c1) const {
        Best b = detail::scan_row<kSecond>(c + i * m, p, m);
        if (lam != nullptr) b.add(lam[i] + p[m + i], m + i);
        c1 = b.j1 >= 0 ? cost(i, b.j1) : 0.0;
        return b;
    }
    template <class F>
    void for_row(int64_t i, F&& f) const {
        const T* r = c + i * m;
        for (int64_t j = 0; j < m; ++j) f(j, double(r[j]));
        if (lam != nullptr) f(m + i, lam[i]);
    }
    // Range of the row's costs, its column minima (colmin may be null) and whether all are
    // integers: one tight loop instead of a callback per arc (a fifth of a warm dense solve).
    void row_stats(int64_t i, double* colmin, double& lo, double& hi, bool& integral) const {
        const T* r = c + i * m;
        if (integral) {
            for (int64_t j = 0; j < m; ++j) {
                const double v = double(r[j]);
                if (!(v == std::nearbyint(v) && std::fabs(v) < 4.5e15)) {
                    integral = false;
                    break;
                }
            }
        }
        detail::row_range(r, m, colmin, lo, hi);
        if (lam != nullptr) {
            lo = std::min(lo, lam[i]);
            hi = std::max(hi, lam[i]);
            if (colmin != nullptr) colmin[m + i] = std::min(colmin[m + i], lam[i]);
            integral = integral && lam[i] == std::nearbyint(lam[i]) && std::fabs(lam[i]) < 4.5e15;
        }
    }
    bool arc_cost(int64_t i, int64_t j, double& cost_ij) const {
        if (j < m) {
            cost_ij = double(c[i * m + j]);
            return true;
        }
        if (lam == nullptr || j != m + i) return false;
        cost_ij = lam[i];
        return true;
    }
    template <class F>
    int64_t for_col(int64_t j, F&& f) const {
        if (j >= m) {
            f(j - m, lam[j - m]);
            return 1;
        }
        for (int64_t i = 0; i < n; ++i) f(i, double(c[i * m + j]));
        return n;
    }
    void prepare_columns() {}
};

template <class T, class I>
struct SparseGraph {
    static constexpr bool kDense = false;
    const int64_t* ptr;
    const I* idx;
    const T* cst;
    int64_t n, m;
    const double* lam;
    // Column-major copy, built only when reverse iterations need it (n < m).
    std::vector<int64_t> cptr, crow;
    std::vector<double> ccost;

    int64_t cols() const { return lam != nullptr ? m + n : m; }
    int64_t row_work(int64_t i) const { return ptr[i + 1] - ptr[i] + 1; }
    int64_t total_work(int64_t rows) const { return ptr[rows] + rows; }
    template <bool kSecond = false>
    Best scan(int64_t i, const double* p, double& c1) const {
        const int64_t a0 = ptr[i];
        Best b = detail::scan_arcs<kSecond>(cst + a0, idx + a0, p, ptr[i + 1] - a0);
        const int64_t a1 = b.j1 >= 0 ? a0 + b.j1 : -1;
        b.j1 = -1;
        if (a1 >= 0) {
            b.j1 = int64_t(idx[a1]);
            c1 = double(cst[a1]);
        } else {
            c1 = 0.0;
        }
        if (b.j2 >= 0) b.j2 = int64_t(idx[a0 + b.j2]);
        if (lam != nullptr) {
            const int64_t j0 = b.j1;
            b.add(lam[i] + p[m + i], m + i);
            if (b.j1 != j0) c1 = lam[i];
        }
        return b;
    }
    template <class F>
    void for_row(int64_t i, F&& f) const {
        for (int64_t a = ptr[i], e = ptr[i + 1]; a < e; ++a) f(int64_t(idx[a]), double(cst[a]));
        if (lam != nullptr) f(m + i, lam[i]);
    }
    void row_stats(int64_t i, double* colmin, double& lo, double& hi, bool& integral) const {
        for_row(i, [&](int64_t j, double v) {
            if (colmin != nullptr && v < colmin[j]) colmin[j] = v;
            lo = std::min(lo, v);
            hi = std::max(hi, v);
            integral = integral && (v == std::nearbyint(v)) && std::fabs(v) < 4.5e15;
        });
    }
    // The cheapest arc (i, j), if any (parallel arcs are allowed).
    bool arc_cost(int64_t i, int64_t j, double& cost_ij) const {
        bool found = false;
        for_row(i, [&](int64_t k, double v) {
            if (k == j && (!found || v < cost_ij)) {
                found = true;
                cost_ij = v;
            }
        });
        return found;
    }
    template <class F>
    int64_t for_col(int64_t j, F&& f) const {
        if (j >= m) {
            f(j - m, lam[j - m]);
            return 1;
        }
        for (int64_t a = cptr[j], e = cptr[j + 1]; a < e; ++a) f(crow[a], ccost[a]);
        return cptr[j + 1] - cptr[j] + 1;
    }
    void prepare_columns() {
        if (!cptr.empty()) return;
        const int64_t nnz = ptr[n];
        cptr.assign(m + 1, 0);
        for (int64_t a = 0; a < nnz; ++a) ++cptr[int64_t(idx[a]) + 1];
        for (int64_t j = 0; j < m; ++j) cptr[j + 1] += cptr[j];
        crow.resize(nnz);
        ccost.resize(nnz);
        std::vector<int64_t> fill(cptr.begin(), cptr.end() - 1);
        for (int64_t i = 0; i < n; ++i)
            for (int64_t a = ptr[i]; a < ptr[i + 1]; ++a) {
                const int64_t q = fill[idx[a]]++;
                crow[q] = i;
                ccost[q] = double(cst[a]);
            }
    }
};

// ---- The solver ------------------------------------------------------------------------------

template <class I, class T>
int64_t hopcroft_karp(const int64_t* ptr, const I* idx, int64_t n, int64_t m, int64_t* mr, const T* cost);

template <class G>
class Solver {
public:
    Solver(G& g, const SolveOptions& opt, SolveOutput& out)
        : g_(g), opt_(opt), out_(out), poll_(opt), n_(g.n), M_(g.cols()) {}

    // f(i) for every row, blocks of rows on opt_.threads threads: the passes whose rows are
    // independent (f writes only row i's state, or a column only row i holds). Ctrl-C is
    // polled once per pass, not per row (a pass is a fraction of a second at 1M rows); false:
    // stop. poll = false for passes whose caller cannot stop (the output's duals).
    template <class F>
    bool each_row(F&& f, bool poll = true) {
        constexpr int64_t kBlock = 512;
        parallel_blocks((n_ + kBlock - 1) / kBlock, std::max(1, opt_.threads), [&](int64_t b) {
            for (int64_t i = b * kBlock, e = std::min(n_, i + kBlock); i < e; ++i) f(i);
        });
        return !poll || !poll_.tick(g_.total_work(n_));
    }

    Status run() {
        p_.assign(M_, 0.0);
        rcost_.assign(n_, 0.0);
        rc_.assign(n_, -1);
        cr_.assign(M_, -1);
        if (M_ > n_) g_.prepare_columns();
        // A warm start with the automatic schedule tries shortest paths first too (the exact
        // loop's restarts: most repair a few rows, 10 ms; some free a thousand rows whose paths
        // are long, make_stack F = 16384: 1036 paths, 1.6 s, against 0.29 s for an auction
        // from the worst violation). The schedule's passes wait until the paths give up.
        const bool warm_trial = opt_.init_row_to_col != nullptr && opt_.init_v != nullptr &&
                                opt_.eps_start == 0.0 && opt_.sap_budget > 0.0;
        init_prices(warm_trial);
        shift_prices();
        if (opt_.init_row_to_col != nullptr) {
            init_assignment();
            if (!warm_trial && eps0_ > 0.0 && opt_.eps_start == 0.0 && !skip_idle_phases())
                return Status::INTERRUPTED;
        }
        if (poll_.check()) return Status::INTERRUPTED;
        if (warm_trial) {
            Status st;
            if (paths_within_budget(st)) return st;
            init_prices(false);  // the same prices, and now the epsilon schedule
            shift_prices();
            if (eps0_ > 0.0 && !skip_idle_phases()) return Status::INTERRUPTED;
        }
        if (eps0_ > 0.0 && opt_.sap_budget > 0.0 && opt_.eps_start == 0.0 && opt_.init_v == nullptr &&
            opt_.init_row_to_col == nullptr) {
            // Shortest paths first (see SolveOptions::sap_budget). Measured, 2048-4096 rows:
            // SAE-like vectors with a planted match leave 0.2 % of the rows free after the
            // row reduction and take 0.005 s vs 0.037 s (16384: 0.028 vs 0.26 s); MiniLM's
            // weakly related layers leave 23 % free and their paths scan ~90x the arcs
            // (0.17 vs 0.019 s): the budget (1x the arcs, with the pace check) stops them at 5-10 %.
            Status st;
            if (paths_within_budget(st)) return st;
        }
        if (eps0_ > 0.0 && !feasible_before_auction()) return Status::INFEASIBLE;
        if (eps0_ > 0.0) {
            for (double eps = eps0_;; eps = std::max(eps / factor_, eps_final_)) {
                ++out_.phases;
                const bool go_on = phase(eps);
                shift_prices();
                if (!go_on) break;
                if (eps <= eps_final_) break;
            }
        }
        if (poll_.stopped()) return Status::INTERRUPTED;
        const Status st = finish();
        if (st != Status::OK) return st;
        if constexpr (!G::kDense) {
            if (out_.phases > 0 && !lower_prices()) return Status::INTERRUPTED;
        }
        write_output();
        // A Ctrl-C seen by a pass that could not stop still raises (never OK with it pending).
        return poll_.stopped() ? Status::INTERRUPTED : Status::OK;
    }

private:
    // SolveOptions::check_feasible_lazily: an auction phase on a graph without an assignment of
    // every row would raise prices forever, so the maximum matching decides first (false:
    // INFEASIBLE, with that matching in the output, as check_feasible reports it).
    bool feasible_before_auction() {
        if constexpr (G::kDense) {
            return true;
        } else {
            if (!opt_.check_feasible_lazily || g_.lam != nullptr) return true;
            std::vector<int64_t> mr(n_);
            const int64_t size = hopcroft_karp(g_.ptr, g_.idx, n_, g_.m, mr.data(), g_.cst);
            if (size == n_) return true;
            out_.matched = size;
            for (int64_t i = 0; i < n_; ++i) out_.row_to_col[i] = mr[i];
            out_.message = "the graph has no assignment of every row: a maximum matching covers " +
                           std::to_string(size) + " of " + std::to_string(n_) + " rows";
            return false;
        }
    }

    // Shortest augmenting paths alone from the current state, under the work budget
    // (SolveOptions::sap_budget). True: they finished, or were interrupted, and st is the
    // solve's status (the output written). False: over budget; prices and assignment are back
    // where they were, for the auction.
    bool paths_within_budget(Status& st) {
        const std::vector<double> p0 = p_, rcost0 = rcost_;
        const std::vector<int64_t> rc0 = rc_, cr0 = cr_;
        sap_limit_ = int64_t(opt_.sap_budget * double(g_.total_work(n_)));
        st = finish();
        sap_limit_ = -1;
        if (st == Status::INTERRUPTED || poll_.stopped()) {
            st = Status::INTERRUPTED;
            return true;
        }
        if (!over_budget_) {
            out_.sap_trial = 1;
            if (st == Status::OK) {
                write_output();
                if (poll_.stopped()) st = Status::INTERRUPTED;
            }
            return true;
        }
        out_.sap_trial = 2;
        over_budget_ = false;
        p_ = p0;
        rcost_ = rcost0;
        rc_ = rc0;
        cr_ = cr0;
        return false;
    }

    // After an auction: the least prices under which every row still takes its column (prices
    // never below the lowest one, where the free columns sit). Epsilon bids leave prices higher
    // than the assignment needs, and the exact loop's bounds c_ij - u_i - v_j over the pairs a
    // candidate graph leaves out are weaker for it: make_stack F = 4096, d = 2304, 926 rows fail
    // them at the auction's prices, 527 at these; a planted-match graph at F = 16384 2711 vs 178
    // (shortest paths alone: 548 and 53). Dijkstra from every column at once on the reduced
    // costs: column j can drop by L_j = min(p_j - p_min, L_k + c_ij + p_j - value(i)) over the
    // arcs (i, j) of the row i holding column k.
    bool lower_prices() {
        double lo = kInf;
        for (int64_t j = 0; j < M_; ++j) lo = std::min(lo, p_[j]);
        std::vector<double> drop(M_);
        std::vector<char> fin(M_, 0);
        auto later = [](const HeapItem& a, const HeapItem& b) {
            return a.d > b.d || (a.d == b.d && a.key > b.key);
        };
        heap_.clear();
        for (int64_t j = 0; j < M_; ++j) {
            drop[j] = p_[j] - lo;
            heap_.push_back({drop[j], j});
        }
        std::make_heap(heap_.begin(), heap_.end(), later);
        while (!heap_.empty()) {
            std::pop_heap(heap_.begin(), heap_.end(), later);
            const HeapItem it = heap_.back();
            heap_.pop_back();
            const int64_t k = it.key;
            if (fin[k] || it.d > drop[k]) continue;
            fin[k] = 1;
            const int64_t i = cr_[k];
            if (i < 0) continue;
            const double vi = value(i);
            g_.for_row(i, [&](int64_t j, double c) {
                if (fin[j]) return;
                double r = c + p_[j] - vi;
                if (r < 0.0) r = 0.0;
                const double nd = it.d + r;
                if (nd < drop[j]) {
                    drop[j] = nd;
                    heap_.push_back({nd, j});
                    std::push_heap(heap_.begin(), heap_.end(), later);
                }
            });
            if (poll_.tick(g_.row_work(i))) return false;
        }
        for (int64_t j = 0; j < M_; ++j) p_[j] -= drop[j];
        return true;
    }

    // Initial prices: warm-start duals, or column reduction (p_j = -min_i c_ij) for square
    // problems, or 0; then the value scale, the epsilon schedule and the cap on the bid
    // increment of rows whose second best is missing.
    void init_prices(bool prices_only = false) {
        double cmin = kInf, cmax = -kInf;
        bool integral = true;
        const bool reduce = opt_.init_v == nullptr && M_ == n_;  // column reduction needs colmin
        if ((opt_.eps_start < 0.0 || prices_only) && !reduce) {
            // Shortest paths only: no epsilon schedule, so no pass over the costs for it (a
            // third of a warm restart that repairs a few rows of a large graph).
            if (opt_.init_v != nullptr)
                for (int64_t j = 0; j < M_; ++j) p_[j] = -opt_.init_v[j];
            eps0_ = 0.0;
            return;
        }
        std::vector<double> colmin(reduce ? M_ : 0, kInf);
        // The rows in groups on the threads, each with its own column minima (at most 2^25 of
        // them in all), merged in group order: the values of one pass in row order, ±0 alike
        // (the bench pair's graph at F = 65536, 10.3M arcs: ~35 ms of a 130 ms cold solve on
        // one thread; at 1M the pass is ~100M arcs).
        const int64_t groups = std::max<int64_t>(
            1, std::min<int64_t>({int64_t(std::max(1, opt_.threads)), (n_ + 4095) / 4096,
                                  reduce ? (int64_t(1) << 25) / std::max<int64_t>(M_, 1) : int64_t(1) << 20}));
        if (groups == 1) {
            for (int64_t i = 0; i < n_; ++i) {
                g_.row_stats(i, reduce ? colmin.data() : nullptr, cmin, cmax, integral);
                if (poll_.tick(g_.row_work(i))) return;
            }
        } else {
            std::vector<std::vector<double>> mins(groups - 1);  // group 0 writes colmin itself
            std::vector<double> glo(groups, kInf), ghi(groups, -kInf);
            std::vector<char> gint(groups, 1);
            const int64_t per = (n_ + groups - 1) / groups;
            parallel_blocks(groups, int(groups), [&](int64_t g) {
                double* cm = nullptr;
                if (reduce && g == 0) cm = colmin.data();
                if (reduce && g > 0) {
                    mins[g - 1].assign(M_, kInf);
                    cm = mins[g - 1].data();
                }
                double lo = kInf, hi = -kInf;
                bool whole = true;
                for (int64_t i = g * per, e = std::min(n_, i + per); i < e; ++i) g_.row_stats(i, cm, lo, hi, whole);
                glo[g] = lo;
                ghi[g] = hi;
                gint[g] = whole;
            });
            if (poll_.tick(g_.total_work(n_))) return;
            for (int64_t g = 0; g < groups; ++g) {
                cmin = std::min(cmin, glo[g]);
                cmax = std::max(cmax, ghi[g]);
                integral = integral && gint[g];
                if (reduce && g > 0)
                    for (int64_t j = 0; j < M_; ++j)
                        if (mins[g - 1][j] < colmin[j]) colmin[j] = mins[g - 1][j];
            }
        }
        if (opt_.init_v != nullptr) {
            for (int64_t j = 0; j < M_; ++j) p_[j] = -opt_.init_v[j];
        } else if (M_ == n_) {
            for (int64_t j = 0; j < M_; ++j) p_[j] = colmin[j] < kInf ? -colmin[j] : 0.0;
        }
        // n < m: equal initial prices. Column reduction would hand an expensive column that no
        // row needs a huge negative price, and the asymmetric epsilon-CS (free prices <= assigned
        // prices) would then drag every price to that magnitude, destroying float64 resolution.
        if (n_ == 0 || !(cmax >= cmin) || opt_.eps_start < 0.0) {
            eps0_ = 0.0;  // no auction phase: the scale and epsilon schedule below are not needed
            return;
        }
        // scale: magnitude of the values in play (row minima and prices), not of the largest
        // cost; huge costs that no row wants must not limit the precision of epsilon.
        double spread = 0.0, scale = 0.0;
        std::vector<double> gap(n_, -1.0), row_scale(n_, 0.0);  // -1: no second best
        if (!each_row([&](int64_t i) {
                double c1;
                const Best b = g_.scan(i, p_.data(), c1);
                if (b.b2 < kInf) gap[i] = b.b2 - b.b1;
                if (b.j1 >= 0) row_scale[i] = std::max(std::fabs(b.b1), std::fabs(p_[b.j1]));
            }))
            return;
        std::vector<double> gaps;
        gaps.reserve(n_);
        for (int64_t i = 0; i < n_; ++i) {
            spread = std::max(spread, gap[i]);
            if (gap[i] > 0.0) gaps.push_back(gap[i]);
            scale = std::max(scale, row_scale[i]);
        }
        // Prices must be able to move by epsilon: stay well above float64 resolution.
        const double floor = std::max(scale, 1e-300) * 0x1p-44;
        factor_ = opt_.eps_factor > 1.0 ? opt_.eps_factor : 7.0;
        cap_ = std::max(cmax - cmin, floor) + spread;
        if (opt_.eps_final > 0.0) {
            eps_final_ = opt_.eps_final;
        } else if (integral) {
            // Integer costs: epsilon < 1/n makes the auction's assignment optimal by itself
            // (Bertsekas 1988, Prop. 1); the exact finish then only settles the duals.
            eps_final_ = 1.0 / double(n_ + 1);
        } else if (!gaps.empty()) {
            // Relative to the typical row (median gap between best and second best), not the
            // widest: with heavy-tailed costs the widest rows are 1e6 times wider, and an
            // epsilon that is coarse for the typical row leaves the exact finish long paths.
            auto mid = gaps.begin() + gaps.size() / 2;
            std::nth_element(gaps.begin(), mid, gaps.end());
            eps_final_ = *mid * 1e-5;
        } else {
            eps_final_ = std::max(spread, floor) * 1e-7;
        }
        eps_final_ = std::max(eps_final_, floor);
        if (opt_.eps_start < 0.0) {
            eps0_ = 0.0;  // pure shortest augmenting paths
        } else if (opt_.eps_start > 0.0) {
            eps0_ = std::max(opt_.eps_start, eps_final_);
        } else {
            eps0_ = std::max(spread / factor_, eps_final_);
        }
    }

    // A complete warm start whose rows are all within eps of their best column at this eps makes
    // every phase with a larger eps a pass without bids: start the schedule there. (The dense
    // path's warm start from the optimum on the 16-nearest graph, planted-match costs, n = 8192:
    // 10 phases without a bid, 0.49 s; each phase is a pass over the matrix.)
    bool skip_idle_phases() {
        for (int64_t i = 0; i < n_; ++i)
            if (rc_[i] < 0) return true;  // free rows bid: keep the schedule
        std::vector<double> off(n_);
        if (!each_row([&](int64_t i) {
                double c1;
                off[i] = value(i) - g_.scan(i, p_.data(), c1).b1;
            }))
            return false;
        const double worst = off.empty() ? 0.0 : std::max(0.0, *std::max_element(off.begin(), off.end()));
        // Every row within the last phase's epsilon of its best: nothing for the auction (as
        // after its last phase, the finish re-inserts the rows that are not exactly there).
        eps0_ = worst > eps_final_ ? std::min(eps0_, worst) : 0.0;
        return true;
    }

    void init_assignment() {
        std::vector<double> cost(n_);
        std::vector<char> arc(n_, 0);
        each_row([&](int64_t i) {
            const int64_t j = opt_.init_row_to_col[i];
            if (j >= 0 && j < M_) arc[i] = g_.arc_cost(i, j, cost[i]) ? 1 : 0;
        });  // a stop is seen by run()'s next poll_.check()
        for (int64_t i = 0; i < n_; ++i) {
            const int64_t j = opt_.init_row_to_col[i];
            if (arc[i] && cr_[j] < 0) take(i, j, cost[i]);
        }
    }

    // Subtract the smallest price: nothing changes but the magnitude of the values c + p.
    void shift_prices() {
        double lo = kInf;
        for (int64_t j = 0; j < M_; ++j) lo = std::min(lo, p_[j]);
        if (lo < kInf && lo != 0.0)
            for (int64_t j = 0; j < M_; ++j) p_[j] -= lo;
    }

    void release(int64_t i) {
        cr_[rc_[i]] = -1;
        rc_[i] = -1;
    }
    void take(int64_t i, int64_t j, double c) {
        rc_[i] = j;
        cr_[j] = i;
        rcost_[i] = c;
    }
    double value(int64_t i) const { return rcost_[i] + p_[rc_[i]]; }

    // One epsilon phase: release rows violating epsilon-CS, forward auction until every row is
    // assigned, then (n < m) reverse iterations. Returns false to stop scaling.
    bool phase(double eps) {
        queue_.assign(n_ + 1, 0);
        qhead_ = qtail_ = qsize_ = 0;
        for (int64_t i = 0; i < n_; ++i)
            if (rc_[i] < 0) push(i);
        const bool ahead = opt_.scan_ahead && opt_.threads > 1;
        const int64_t start_batch = kScanAheadRows * opt_.threads;
        for (int64_t i0 = 0; i0 < n_; i0 += start_batch) {
            const int64_t i1 = std::min(n_, i0 + start_batch);
            if (ahead) scan_rows_ahead(i1 - i0, [&](int64_t t) { return rc_[i0 + t] >= 0 ? i0 + t : -1; });
            for (int64_t i = i0; i < i1; ++i) {
                if (rc_[i] < 0) continue;  // queued: free at the start, or displaced by a bid below
                double c1;
                const Best b = ahead ? scanned(i, ahead_[i - i0], c1) : g_.scan(i, p_.data(), c1);
                if (value(i) <= b.b1 + eps) continue;
                // Violates epsilon-CS: bid with this scan rather than queue the row and scan it
                // again (most rows released at a phase start bid at once; half their scans saved).
                release(i);
                if (!bid(i, b, c1, eps)) return false;
                if (poll_.tick(g_.row_work(i))) return false;
            }
        }
        if (poll_.tick(n_)) return false;
        const int64_t budget = std::max<int64_t>(200 * n_, 1000000);
        // A phase that needs many more bids than rows is a price war: prices have far to go
        // and epsilon (chosen small to keep float64 prices precise) is too timid. Raising
        // epsilon in the middle of a phase keeps epsilon-CS valid (it only gets weaker).
        int64_t bids = 0, next_raise = 32 * n_ + 1000;
        while (qsize_ > 0) {
            // The next rows of the queue scanned ahead (bids push displaced rows at its end, so
            // these are popped next, in this order).
            const int64_t batch =
                ahead && qsize_ >= 4 * opt_.threads ? std::min(qsize_, kScanAheadRows * opt_.threads) : 0;
            if (batch > 0) {
                const int64_t size = int64_t(queue_.size()), head = qhead_;
                scan_rows_ahead(batch, [&](int64_t t) { return queue_[(head + t) % size]; });
            }
            for (int64_t t = 0; t < std::max<int64_t>(batch, 1); ++t) {
                if (bids > next_raise && eps < cap_) {
                    eps = std::min(eps * factor_, cap_);
                    next_raise = bids + 32 * n_ + 1000;
                }
                const int64_t i = pop();
                double c1;
                const Best b = batch > 0 ? scanned(i, ahead_[t], c1) : g_.scan(i, p_.data(), c1);
                if (!bid(i, b, c1, eps)) return false;
                if (poll_.tick(g_.row_work(i))) return false;
                if (++bids > budget) return false;  // stalled: let the exact finish take over
            }
        }
        if (M_ > n_) return reverse(eps);
        return true;
    }

    // Scans ahead (SolveOptions::scan_ahead). Bids are sequential (Gauss-Seidel: each sees the
    // prices the ones before it left), and a row's scan is most of a bid. Prices only rise in a
    // phase, so a scan stays the row's own while the prices of its best and second best columns
    // have not moved: the next rows are scanned on the threads at once, and each scan is
    // checked before its bid, those made stale by the bids in between redone (7% on make_stack's
    // 16384 graph, batches of 128 rows). The same bids in the same order as one thread.
    struct Ahead {
        Best b;
        double c1, p1, p2;
    };
    static constexpr int64_t kScanAheadRows = 64;  // per thread and batch
    template <class Row>
    void scan_rows_ahead(int64_t count, Row&& row) {
        ahead_.resize(count);
        const int64_t per = (count + opt_.threads - 1) / opt_.threads;  // contiguous: no false sharing
        parallel_blocks(opt_.threads, opt_.threads, [&](int64_t blk) {
            for (int64_t t = blk * per, e = std::min(count, t + per); t < e; ++t) {
                const int64_t i = row(t);
                if (i < 0) continue;
                Ahead& r = ahead_[t];
                r.b = g_.template scan<true>(i, p_.data(), r.c1);
                r.p1 = r.b.j1 >= 0 ? p_[r.b.j1] : 0.0;
                r.p2 = r.b.j2 >= 0 ? p_[r.b.j2] : 0.0;
            }
        }, /*spin=*/true);
    }
    Best scanned(int64_t i, const Ahead& r, double& c1) {
        if ((r.b.j1 < 0 || p_[r.b.j1] == r.p1) && (r.b.j2 < 0 || p_[r.b.j2] == r.p2)) {
            c1 = r.c1;
            return r.b;
        }
        ++out_.rescans;
        return g_.scan(i, p_.data(), c1);
    }

    // Free row i bids for its best column b.j1 (scanned at the current prices): the price rises
    // by the gap to the second best plus epsilon, the column's owner is queued. False for a row
    // without arcs (the finish reports infeasibility).
    bool bid(int64_t i, const Best& b, double c1, double eps) {
        if (b.j1 < 0) return false;
        double inc = b.b2 - b.b1;
        if (!(inc <= cap_)) inc = cap_;  // single arc: second best missing
        const int64_t j = b.j1;
        double np = p_[j] + (inc + eps);
        if (!(np > p_[j])) np = std::nextafter(p_[j], kInf);
        p_[j] = np;
        const int64_t old = cr_[j];
        if (old >= 0) {
            rc_[old] = -1;
            push(old);
        }
        take(i, j, c1);
        ++out_.bids;
        return true;
    }

    // Bertsekas & Castanon (1992): free columns priced above the lowest assigned price lambda
    // lower their price (or attract a row) until every free price is <= lambda.
    bool reverse(double eps) {
        double lam = kInf;
        for (int64_t j = 0; j < M_; ++j)
            if (cr_[j] >= 0) lam = std::min(lam, p_[j]);
        if (!(lam < kInf)) return true;
        std::vector<int64_t> todo;
        for (int64_t j = M_ - 1; j >= 0; --j)
            if (cr_[j] < 0 && p_[j] > lam) todo.push_back(j);
        const int64_t budget = std::max<int64_t>(200 * n_, 1000000);
        int64_t iters = 0;
        while (!todo.empty()) {
            const int64_t j = todo.back();
            todo.pop_back();
            if (cr_[j] >= 0 || p_[j] <= lam) continue;
            double B1 = -kInf, B2 = -kInf, c1 = 0.0;
            int64_t i1 = -1;
            const int64_t work = g_.for_col(j, [&](int64_t i, double c) {
                const double beta = value(i) - c;
                if (beta > B2) {
                    if (beta > B1) {
                        B2 = B1;
                        B1 = beta;
                        i1 = i;
                        c1 = c;
                    } else {
                        B2 = beta;
                    }
                }
            });
            ++out_.reverse_bids;
            if (poll_.tick(work)) return false;
            if (++iters > budget) return false;
            if (i1 < 0 || B1 - eps <= lam) {
                p_[j] = lam;
                continue;
            }
            p_[j] = std::max(lam, B2 - eps);
            const int64_t k = rc_[i1];
            cr_[k] = -1;
            take(i1, j, c1);
            if (p_[k] > lam) todo.push_back(k);
        }
        return true;
    }

    void push(int64_t i) {
        queue_[qtail_] = i;
        qtail_ = qtail_ + 1 == int64_t(queue_.size()) ? 0 : qtail_ + 1;
        ++qsize_;
    }
    int64_t pop() {
        const int64_t i = queue_[qhead_];
        qhead_ = qhead_ + 1 == int64_t(queue_.size()) ? 0 : qhead_ + 1;
        --qsize_;
        return i;
    }

    // The last bid of a row leaves it epsilon above its best alternative. Lower the price of
    // its column by that slack where no other row with an arc to the column would then prefer
    // it: the row becomes exactly tight and needs no augmenting path. (Most of the rows that
    // bid in the last phase qualify; the others are released below.)
    bool tighten() {
        if (!G::kDense) g_.prepare_columns();
        std::vector<double> umin(n_, kInf);
        if (!each_row([&](int64_t i) {
                double c1;
                umin[i] = g_.scan(i, p_.data(), c1).b1;
            }))
            return false;
        // Dense: per column, the least and second least c_kj + p_j - umin_k over the rows, in
        // one row-major pass (a walk down each column reads a cache line per entry: at
        // n = 16384 that is 1 GiB of traffic per column checked).
        ColumnMinima cm;
        if constexpr (G::kDense) {
            if (!column_minima(umin, cm)) return false;
        }
        for (int64_t i = 0; i < n_; ++i) {
            if (rc_[i] < 0) continue;
            const int64_t j = rc_[i];
            if (!(value(i) > umin[i])) continue;
            double np = p_[j] - (value(i) - umin[i]);
            for (int t = 0; t < 4 && rcost_[i] + np > umin[i]; ++t) np = std::nextafter(np, -kInf);
            const double drop = p_[j] - np;
            bool ok = true;
            if constexpr (G::kDense) {
                if (j < g_.m) ok = !((cm.k1[j] == i ? cm.b2[j] : cm.b1[j]) < drop);  // dummy: row i only
            } else {
                const int64_t work = g_.for_col(j, [&](int64_t k, double c) {
                    if (k != i && c + p_[j] - umin[k] < drop) ok = false;
                });
                if (poll_.tick(work)) return false;
            }
            if (ok) p_[j] = np;
        }
        return true;
    }

    struct ColumnMinima {
        std::vector<double> b1, b2;
        std::vector<int64_t> k1;
    };
    bool column_minima(const std::vector<double>& umin, ColumnMinima& cm) {
        const int64_t m = g_.m;
        cm.b1.assign(m, kInf);
        cm.b2.assign(m, kInf);
        cm.k1.assign(m, -1);
        for (int64_t k = 0; k < n_; ++k) {
            const auto* r = g_.c + k * m;
            const double uk = umin[k];
            for (int64_t j = 0; j < m; ++j) {
                const double val = double(r[j]) + p_[j] - uk;
                if (val < cm.b2[j]) {
                    if (val < cm.b1[j]) {
                        cm.b2[j] = cm.b1[j];
                        cm.b1[j] = val;
                        cm.k1[j] = k;
                    } else {
                        cm.b2[j] = val;
                    }
                }
            }
            if (poll_.tick(m)) return false;
        }
        return true;
    }

    // Exact finish: keep only exactly tight assignments, put every free column at one common
    // price at or below all assigned prices (n < m), then shortest augmenting paths.
    Status finish() {
        if (out_.phases > 0 && !tighten()) return Status::INTERRUPTED;
        // Releasing row i frees only its own column: rows run in parallel.
        auto check = [&](int64_t i) {
            if (rc_[i] < 0) return;
            double c1;
            const Best b = g_.scan(i, p_.data(), c1);
            if (value(i) > b.b1) release(i);
        };
        if (!G::kDense && opt_.changed_rows != nullptr && opt_.init_row_to_col != nullptr && out_.phases == 0) {
            for (int64_t t = 0; t < opt_.n_changed; ++t) check(opt_.changed_rows[t]);
        } else if (!each_row(check)) {
            return Status::INTERRUPTED;
        }
        if (M_ > n_) {
            double level = -kInf;
            for (int64_t j = 0; j < M_; ++j)
                if (cr_[j] < 0) level = std::max(level, p_[j]);
            // Prices only matter up to a common shift: move the free level to 0 at the same
            // time, so that the values c_ij + p_j keep the resolution of the costs.
            std::vector<int64_t> raised;
            for (int64_t j = 0; j < M_; ++j) {
                if (cr_[j] >= 0 && p_[j] < level) raised.push_back(cr_[j]);
                p_[j] = p_[j] > level ? p_[j] - level : 0.0;
            }
            std::sort(raised.begin(), raised.end());
            for (int64_t i : raised) {
                double c1;
                const Best b = g_.scan(i, p_.data(), c1);
                if (value(i) > b.b1) release(i);
                if (poll_.tick(g_.row_work(i))) return Status::INTERRUPTED;
            }
        }
        // A released row whose cheapest column is free takes it: a zero-length augmenting path.
        // Where many rows are free (a cold start: all of them; 25 ms of 130 at F = 65536 on one
        // thread), their scans run on the threads first (take() moves no price) and the takes
        // follow in row order; a warm restart's few free rows are scanned as they come.
        int64_t n_free = 0;
        for (int64_t i = 0; i < n_; ++i) n_free += rc_[i] < 0;
        if (opt_.threads > 1 && n_free > n_ / 16) {
            std::vector<int64_t> best_col(n_, -1);
            std::vector<double> best_cost(n_, 0.0);
            if (!each_row([&](int64_t i) {
                    if (rc_[i] >= 0) return;
                    const Best b = g_.scan(i, p_.data(), best_cost[i]);
                    best_col[i] = b.j1;
                }))
                return Status::INTERRUPTED;
            for (int64_t i = 0; i < n_; ++i)
                if (rc_[i] < 0 && best_col[i] >= 0 && cr_[best_col[i]] < 0) take(i, best_col[i], best_cost[i]);
        } else {
            for (int64_t i = 0; i < n_; ++i) {
                if (rc_[i] >= 0) continue;
                double c1;
                const Best b = g_.scan(i, p_.data(), c1);
                if (b.j1 >= 0 && cr_[b.j1] < 0) take(i, b.j1, c1);
                if (poll_.tick(g_.row_work(i))) return Status::INTERRUPTED;
            }
        }
        if (!reduce_rows()) return Status::INTERRUPTED;
        d_.assign(M_, kInf);
        pred_.assign(M_, -1);
        if (!G::kDense) predc_.assign(M_, 0.0);
        done_.assign(M_, 0);
        int64_t free_rows = 0, paths = 0;
        for (int64_t i = 0; i < n_; ++i) free_rows += rc_[i] < 0;
        for (int64_t i = 0; i < n_; ++i) {
            if (rc_[i] >= 0) continue;
            path_work_ += g_.row_work(i);
            const bool ok = G::kDense ? augment_dense(i) : augment_sparse(i);
            if (poll_.stopped()) return Status::INTERRUPTED;
            if (!ok) {
                out_.message = "no augmenting path for row " + std::to_string(i);
                return Status::INFEASIBLE;
            }
            ++out_.augmentations;
            ++paths;
            // Over budget, or heading there at the pace of the paths so far (later paths tend
            // to be longer). Checked between paths: one path scans each row at most once.
            if (sap_limit_ >= 0 && (path_work_ > sap_limit_ ||
                                    (paths >= 8 && path_work_ * (free_rows / paths) > sap_limit_))) {
                over_budget_ = true;
                return Status::OK;
            }
        }
        return Status::OK;
    }

    // Augmenting row reduction (Jonker & Volgenant 1987): a free row takes its cheapest column
    // and raises that column's price to its second best, so it stays exactly tight and every
    // reduced cost stays >= 0 (an auction bid with epsilon = 0). The displaced row continues.
    // Cheap O(arcs) steps that spare most augmenting paths after a warm start; ties (no price
    // change possible) and a work budget hand the rest to Dijkstra.
    bool reduce_rows() {
        queue_.assign(n_ + 1, 0);
        qhead_ = qtail_ = qsize_ = 0;
        for (int64_t i = 0; i < n_; ++i)
            if (rc_[i] < 0) push(i);
        int64_t budget = 4 * qsize_ + 16;
        while (qsize_ > 0 && budget-- > 0) {
            const int64_t i = pop();
            double c1;
            const Best b = g_.scan(i, p_.data(), c1);
            if (poll_.tick(g_.row_work(i))) return false;
            const int64_t j = b.j1;
            if (j < 0) continue;
            if (cr_[j] < 0) {
                take(i, j, c1);
                continue;
            }
            if (!(b.b2 > b.b1) || !(b.b2 < kInf)) continue;  // tie or single arc: Dijkstra
            const double np = b.b2 - c1;
            if (!(np > p_[j])) continue;
            p_[j] = np;
            const int64_t old = cr_[j];
            rc_[old] = -1;
            take(i, j, c1);
            push(old);
        }
        return true;
    }

    // Dijkstra over columns from free row s with a binary heap (sparse rows). Ties prefer free
    // columns so that the search ends as early as possible.
    bool augment_sparse(int64_t s) {
        constexpr int64_t kAssigned = int64_t(1) << 62;
        auto later = [](const HeapItem& a, const HeapItem& b) {
            return a.d > b.d || (a.d == b.d && a.key > b.key);
        };
        heap_.clear();
        touched_.clear();
        double c1;
        const Best bs = g_.scan(s, p_.data(), c1);
        if (bs.j1 < 0) return false;
        auto relax = [&](int64_t i, double base, double ui) {
            g_.for_row(i, [&](int64_t k, double c) {
                if (done_[k]) return;
                double r = c + p_[k] - ui;
                if (r < 0.0) r = 0.0;
                const double nd = base + r;
                if (nd < d_[k]) {
                    if (d_[k] == kInf) touched_.push_back(k);
                    d_[k] = nd;
                    pred_[k] = i;
                    predc_[k] = c;
                    heap_.push_back({nd, k + (cr_[k] >= 0 ? kAssigned : 0)});
                    std::push_heap(heap_.begin(), heap_.end(), later);
                }
            });
        };
        relax(s, 0.0, bs.b1);
        int64_t t = -1;
        double dt = 0.0;
        while (!heap_.empty()) {
            std::pop_heap(heap_.begin(), heap_.end(), later);
            const HeapItem it = heap_.back();
            heap_.pop_back();
            const int64_t j = it.key & (kAssigned - 1);
            if (done_[j] || it.d > d_[j]) continue;
            done_[j] = 1;
            if (cr_[j] < 0) {
                t = j;
                dt = it.d;
                break;
            }
            const int64_t i = cr_[j];
            path_work_ += g_.row_work(i);
            relax(i, it.d, value(i));
            if (poll_.tick(g_.row_work(i))) break;
        }
        bool ok = t >= 0;
        if (ok) {
            for (int64_t j : touched_)
                if (done_[j] && d_[j] < dt) p_[j] += dt - d_[j];
            augment_path(s, t);
        }
        for (int64_t j : touched_) {
            d_[j] = kInf;
            done_[j] = 0;
        }
        return ok;
    }

    // Dijkstra with an unordered frontier array (dense rows, as in Jonker & Volgenant / scipy):
    // every step relaxes one full row and picks the closest unfinished column in the same pass.
    bool augment_dense(int64_t s) {
        const int64_t m = g_.m;
        todo_.resize(m);
        std::iota(todo_.begin(), todo_.end(), int64_t(0));
        std::fill(d_.begin(), d_.begin() + m, kInf);
        touched_.clear();  // dummy columns reached
        int64_t lo = 0;     // todo_[0, lo) are finished
        double c1;
        const Best bs = g_.scan(s, p_.data(), c1);
        if (bs.j1 < 0) return false;
        int64_t i = s;
        double ui = bs.b1, base = 0.0, dt = 0.0;
        int64_t t = -1;
        while (true) {
            relax_dense_row(i, base, ui, lo);
            if (g_.lam != nullptr && !done_[m + i]) {
                double r = g_.lam[i] + p_[m + i] - ui;
                const double nd = base + (r < 0.0 ? 0.0 : r);
                if (nd < d_[m + i]) {
                    if (d_[m + i] == kInf) touched_.push_back(m + i);
                    d_[m + i] = nd;
                    pred_[m + i] = i;
                }
            }
            // Closest unfinished column; ties prefer free columns.
            double best = kInf;
            int64_t bq = -1, bj = -1;
            for (int64_t q = lo; q < m; ++q) {
                const int64_t j = todo_[q];
                const double dj = d_[j];
                if (dj < best || (dj == best && bj >= 0 && cr_[j] < 0 && cr_[bj] >= 0)) {
                    best = dj;
                    bq = q;
                    bj = j;
                }
            }
            for (int64_t j : touched_) {
                if (done_[j]) continue;
                if (d_[j] < best || (d_[j] == best && cr_[j] < 0 && bj >= 0 && cr_[bj] >= 0)) {
                    best = d_[j];
                    bq = -1;
                    bj = j;
                }
            }
            if (bj < 0 || best == kInf) break;
            if (bq >= 0) {
                std::swap(todo_[bq], todo_[lo]);
                ++lo;
            }
            done_[bj] = 1;
            if (cr_[bj] < 0) {
                t = bj;
                dt = best;
                break;
            }
            i = cr_[bj];
            path_work_ += m;
            ui = value(i);
            base = best;
            if (poll_.tick(m)) break;
        }
        const bool ok = t >= 0;
        if (ok) {
            for (int64_t q = 0; q < lo; ++q) {
                const int64_t j = todo_[q];
                if (d_[j] < dt) p_[j] += dt - d_[j];
            }
            for (int64_t j : touched_)
                if (done_[j] && d_[j] < dt) p_[j] += dt - d_[j];
            augment_path(s, t);
        }
        for (int64_t q = 0; q < lo; ++q) done_[todo_[q]] = 0;
        for (int64_t j : touched_) {
            done_[j] = 0;
            d_[j] = kInf;
        }
        return ok;
    }

    void relax_dense_row(int64_t i, double base, double ui, int64_t lo) {
        if constexpr (G::kDense) {
            const auto* row = g_.c + i * g_.m;
            const double shift = base - ui;
            for (int64_t q = lo, m = g_.m; q < m; ++q) {
                const int64_t j = todo_[q];
                double nd = double(row[j]) + p_[j] + shift;
                if (nd < base) nd = base;
                if (nd < d_[j]) {
                    d_[j] = nd;
                    pred_[j] = i;
                }
            }
        }
    }

    // Flip the alternating path that ends at free column t (pred_ holds the rows).
    void augment_path(int64_t s, int64_t t) {
        int64_t j = t;
        while (true) {
            const int64_t i = pred_[j];
            const int64_t k = rc_[i];
            if constexpr (G::kDense) {
                take(i, j, g_.cost(i, j));
            } else {
                take(i, j, predc_[j]);
            }
            if (i == s) break;
            j = k;
        }
    }

    void write_output() {
        double pmin = kInf;
        for (int64_t j = 0; j < M_; ++j) {
            pmin = std::min(pmin, p_[j]);
            out_.price_scale = std::max(out_.price_scale, std::fabs(p_[j]));
        }
        for (int64_t i = 0; i < n_; ++i)
            out_.cost_scale = std::max(out_.cost_scale, std::fabs(rcost_[i]));
        if (!(pmin < kInf)) pmin = 0.0;
        // Shifted prices: v_j = -(p_j - pmin) <= 0, exactly 0 on the free columns (n < m).
        std::vector<double> q(M_);
        for (int64_t j = 0; j < M_; ++j) q[j] = p_[j] - pmin;
        const int64_t m = g_.m;
        double obj = 0.0, dual = 0.0;
        each_row([&](int64_t i) {
            double c1;
            out_.u[i] = g_.scan(i, q.data(), c1).b1;
        }, false);
        for (int64_t i = 0; i < n_; ++i) {  // sums in row order whatever the threads
            dual += out_.u[i];
            obj += rcost_[i];
            out_.row_to_col[i] = rc_[i] < m ? rc_[i] : -1;
        }
        for (int64_t j = 0; j < m; ++j) {
            out_.v[j] = -q[j];
            out_.col_to_row[j] = cr_[j];
            dual -= q[j];
        }
        for (int64_t j = m; j < M_; ++j) {
            if (out_.v_dummy != nullptr) out_.v_dummy[j - m] = -q[j];
            dual -= q[j];
        }
        out_.objective = obj;
        out_.dual_objective = dual;
    }

    G& g_;
    const SolveOptions& opt_;
    SolveOutput& out_;
    Poller poll_;
    const int64_t n_, M_;
    double eps0_ = 0.0, eps_final_ = 0.0, factor_ = 7.0, cap_ = 1.0;
    std::vector<double> p_, rcost_, d_, predc_;
    std::vector<int64_t> rc_, cr_, pred_, todo_, touched_;
    std::vector<char> done_;
    int64_t path_work_ = 0;   // rows scanned by augmenting paths (in row_work units)
    int64_t sap_limit_ = -1;  // >= 0: the shortest-paths-first attempt's budget for path_work_
    bool over_budget_ = false;
    std::vector<int64_t> queue_;
    std::vector<Ahead> ahead_;
    int64_t qhead_ = 0, qtail_ = 0, qsize_ = 0;
    struct HeapItem {
        double d;
        int64_t key;
    };
    std::vector<HeapItem> heap_;
};

template <class T>
bool all_finite(const T* x, int64_t count, int64_t* where, int threads = 1) {
    *where = first_bad(count, threads, [&](int64_t k) { return !std::isfinite(double(x[k])); });
    return *where < 0;
}

Status check_common(int64_t n, int64_t m, const SolveOptions& opt, SolveOutput& out) {
    if (n < 0 || m < 0) {
        out.message = "negative shape";
        return Status::BAD_INPUT;
    }
    const int64_t cols = opt.unmatched_cost != nullptr ? m + n : m;
    if (n > cols) {
        out.message = "more rows (" + std::to_string(n) + ") than columns (" +
                      std::to_string(m) + "); transpose the problem";
        return Status::BAD_INPUT;
    }
    int64_t where = 0;
    if (opt.unmatched_cost != nullptr && !all_finite(opt.unmatched_cost, n, &where)) {
        out.message = "unmatched_cost must be finite (entry " + std::to_string(where) + ")";
        return Status::BAD_INPUT;
    }
    if (opt.init_v != nullptr && !all_finite(opt.init_v, cols, &where)) {
        out.message = "warm-start duals must be finite (entry " + std::to_string(where) + ")";
        return Status::BAD_INPUT;
    }
    return Status::OK;
}

template <class T>
Status dense_impl(const T* cost, int64_t n, int64_t m, const SolveOptions& opt, SolveOutput& out) {
    Status st = check_common(n, m, opt, out);
    if (st != Status::OK) return st;
    int64_t where = 0;
    if (!all_finite(cost, n * m, &where, opt.threads)) {
        out.message = "cost contains NaN or infinity at (" + std::to_string(where / m) + ", " +
                      std::to_string(where % m) + ")";
        return Status::BAD_INPUT;
    }
    DenseGraph<T> g{cost, n, m, opt.unmatched_cost};
    Solver<DenseGraph<T>> solver(g, opt, out);
    return solver.run();
}

// One breadth-first search per free row for a free column, augmenting where it finds one;
// true if every free row was searched (the matching is then maximum: a row with no augmenting
// path keeps none after other rows' augmentations), false once `budget` arcs were scanned.
// Why: after the greedy start a candidate graph leaves a few rows free (the bench pair at F =
// 65536: 333 of 65536), and each search meets a free column after a few hundred arcs, where
// Hopcroft-Karp's layered search from all of them at once scans most of the graph each phase
// (10.3M arcs: 0.017 s against 0.06 s).
template <class I>
bool augment_each(const int64_t* ptr, const I* idx, int64_t n, int64_t m, int64_t* mr, std::vector<int64_t>& mc,
                  int64_t budget, int64_t& size) {
    std::vector<int64_t> stamp(m, -1), via(m), queue;  // via[j]: the row whose arcs reached column j
    int64_t scanned = 0;
    for (int64_t r = 0; r < n; ++r) {
        if (mr[r] >= 0) continue;
        if (scanned > budget) return false;
        queue.assign(1, r);
        int64_t found = -1;
        for (size_t h = 0; h < queue.size() && found < 0; ++h) {
            const int64_t i = queue[h];
            for (int64_t a = ptr[i]; a < ptr[i + 1]; ++a) {
                const int64_t j = idx[a];
                if (stamp[j] == r) continue;
                stamp[j] = r;
                via[j] = i;
                if (mc[j] < 0) {
                    found = j;
                    break;
                }
                queue.push_back(mc[j]);
            }
            scanned += ptr[i + 1] - ptr[i];
        }
        for (int64_t j = found; j >= 0;) {  // flip the path back to r
            const int64_t i = via[j], prev = mr[i];
            mr[i] = j;
            mc[j] = i;
            j = i == r ? -1 : prev;
        }
        size += found >= 0;
    }
    return true;
}

// cost (optional, one per arc): the greedy start takes each row's cheapest free column instead
// of its first. A candidate graph lists columns in index order, so the first free one is an
// arbitrary pick and the searches that follow undo many of them; its cheapest arc is mostly the
// row's own partner (planted 1M x 64 arcs in column order, 2 cores, bench_host_bounds.py:
// 0.44 -> 0.27 s).
template <class I, class T>
int64_t hopcroft_karp(const int64_t* ptr, const I* idx, int64_t n, int64_t m, int64_t* mr,
                      const T* cost) {
    constexpr int64_t kFar = std::numeric_limits<int64_t>::max();
    std::vector<int64_t> mc(m, -1);
    int64_t size = 0;
    for (int64_t i = 0; i < n; ++i) {
        mr[i] = -1;
        int64_t best = -1;
        if (cost != nullptr && ptr[i + 1] > ptr[i]) {
            // the cheapest arc from the costs alone: a sequential read with four running minima
            // (no chain of dependent compares), then its first arc; the columns' states (random
            // reads, most of the time at 64 arcs a row) only when its column is taken
            const int64_t lo = ptr[i], hi = ptr[i + 1];
            T l0 = cost[lo], l1 = l0, l2 = l0, l3 = l0;
            int64_t a = lo + 1;
            for (; a + 3 < hi; a += 4) {
                l0 = cost[a] < l0 ? cost[a] : l0;
                l1 = cost[a + 1] < l1 ? cost[a + 1] : l1;
                l2 = cost[a + 2] < l2 ? cost[a + 2] : l2;
                l3 = cost[a + 3] < l3 ? cost[a + 3] : l3;
            }
            for (; a < hi; ++a) l0 = cost[a] < l0 ? cost[a] : l0;
            l0 = l1 < l0 ? l1 : l0;
            l2 = l3 < l2 ? l3 : l2;
            const T low = l2 < l0 ? l2 : l0;
            best = lo;
            while (best + 1 < ptr[i + 1] && !(cost[best] == low)) ++best;
            if (mc[idx[best]] >= 0) {
                best = -1;
                for (int64_t a = ptr[i]; a < ptr[i + 1]; ++a)
                    if (mc[idx[a]] < 0 && (best < 0 || cost[a] < cost[best])) best = a;
            }
        } else {
            for (int64_t a = ptr[i]; a < ptr[i + 1]; ++a)
                if (mc[idx[a]] < 0) {
                    best = a;
                    break;
                }
        }
        if (best >= 0) {
            mr[i] = idx[best];
            mc[idx[best]] = i;
            ++size;
        }
    }
    // Searches row by row first, within twice the arcs (their worst case is O(n arcs)); then
    // Hopcroft-Karp's phases (O(sqrt(n) arcs)) from wherever they stopped.
    if (augment_each(ptr, idx, n, m, mr, mc, 2 * ptr[n] + n, size)) return size;
    std::vector<int64_t> dist(n), queue(n), it(n), stack;
    while (true) {
        int64_t qh = 0, qt = 0;
        bool found = false;
        for (int64_t i = 0; i < n; ++i) {
            if (mr[i] < 0) {
                dist[i] = 0;
                queue[qt++] = i;
            } else {
                dist[i] = kFar;
            }
        }
        // Layers up to the first that reaches a free column: deeper rows are left out of this
        // phase (they were searched whole before: at F = 1M, ~100M arcs, every phase).
        int64_t limit = kFar;
        while (qh < qt) {
            const int64_t i = queue[qh++];
            if (dist[i] >= limit) break;  // BFS order: every later row is as deep
            for (int64_t a = ptr[i]; a < ptr[i + 1]; ++a) {
                const int64_t i2 = mc[idx[a]];
                if (i2 < 0) {
                    found = true;
                    limit = dist[i] + 1;
                } else if (dist[i2] == kFar) {
                    dist[i2] = dist[i] + 1;
                    queue[qt++] = i2;
                }
            }
        }
        if (!found) break;
        for (int64_t t = 0; t < qt; ++t)  // rows queued beyond the shortest paths' layer
            if (dist[queue[t]] >= limit) dist[queue[t]] = kFar;
        for (int64_t i = 0; i < n; ++i) it[i] = ptr[i];
        for (int64_t r = 0; r < n; ++r) {
            if (mr[r] >= 0) continue;
            stack.assign(1, r);
            while (!stack.empty()) {
                const int64_t i = stack.back();
                if (it[i] == ptr[i + 1]) {
                    dist[i] = kFar;
                    stack.pop_back();
                    if (!stack.empty()) ++it[stack.back()];
                    continue;
                }
                const int64_t j = idx[it[i]];
                const int64_t i2 = mc[j];
                if (i2 < 0) {
                    for (int64_t k : stack) {
                        const int64_t jj = idx[it[k]];
                        mr[k] = jj;
                        mc[jj] = k;
                    }
                    ++size;
                    break;
                }
                if (dist[i2] == dist[i] + 1 && dist[i2] != kFar) {
                    stack.push_back(i2);
                } else {
                    ++it[i];
                }
            }
        }
    }
    return size;
}

template <class T, class I>
Status sparse_impl(const int64_t* ptr, const I* idx, const T* cst, int64_t n, int64_t m,
                   const SolveOptions& opt, SolveOutput& out) {
    Status st = check_common(n, m, opt, out);
    if (st != Status::OK) return st;
    if (ptr[0] != 0) {
        out.message = "indptr[0] must be 0, got " + std::to_string(ptr[0]);
        return Status::BAD_INPUT;
    }
    for (int64_t i = 0; i < n; ++i)
        if (ptr[i + 1] < ptr[i]) {
            out.message = "indptr must be non-decreasing (indptr[" + std::to_string(i + 1) +
                          "] < indptr[" + std::to_string(i) + "])";
            return Status::BAD_INPUT;
        }
    const int64_t nnz = ptr[n];
    // The exact loop's warm restarts skip the arcs' checks (two passes over every arc): it
    // checked them once and checks the pairs it adds as they are priced (assign._check_priced).
    const int64_t a = !opt.check_arcs ? -1 : first_bad(nnz, opt.threads, [&](int64_t k) {
        return idx[k] < 0 || int64_t(idx[k]) >= m;
    });
    if (a >= 0) {
        out.message = "column index " + std::to_string(int64_t(idx[a])) + " at position " +
                      std::to_string(a) + " is out of range [0, " + std::to_string(m) + ")";
        return Status::BAD_INPUT;
    }
    int64_t where = 0;
    if (opt.check_arcs && !all_finite(cst, nnz, &where, opt.threads)) {
        out.message = "costs contain NaN or infinity at position " + std::to_string(where);
        return Status::BAD_INPUT;
    }
    if (opt.check_feasible && opt.unmatched_cost == nullptr) {
        std::vector<int64_t> mr(n);
        const int64_t size = hopcroft_karp(ptr, idx, n, m, mr.data(), cst);
        if (size < n) {
            out.matched = size;
            for (int64_t i = 0; i < n; ++i) out.row_to_col[i] = mr[i];
            out.message = "the graph has no assignment of every row: a maximum matching covers " +
                          std::to_string(size) + " of " + std::to_string(n) + " rows";
            return Status::INFEASIBLE;
        }
    }
    SparseGraph<T, I> g{ptr, idx, cst, n, m, opt.unmatched_cost, {}, {}, {}};
    Solver<SparseGraph<T, I>> solver(g, opt, out);
    return solver.run();
}

}  // namespace

Status solve_dense(const float* cost, int64_t n, int64_t m, const SolveOptions& opt,
                   SolveOutput& out) {
    return dense_impl(cost, n, m, opt, out);
}
Status solve_dense(const double* cost, int64_t n, int64_t m, const SolveOptions& opt,
                   SolveOutput& out) {
    return dense_impl(cost, n, m, opt, out);
}
Status solve_sparse(const int64_t* indptr, const int32_t* indices, const float* costs, int64_t n,
                    int64_t m, const SolveOptions& opt, SolveOutput& out) {
    return sparse_impl(indptr, indices, costs, n, m, opt, out);
}
Status solve_sparse(const int64_t* indptr, const int32_t* indices, const double* costs,
                    int64_t n, int64_t m, const SolveOptions& opt, SolveOutput& out) {
    return sparse_impl(indptr, indices, costs, n, m, opt, out);
}
Status solve_sparse(const int64_t* indptr, const int64_t* indices, const float* costs, int64_t n,
                    int64_t m, const SolveOptions& opt, SolveOutput& out) {
    return sparse_impl(indptr, indices, costs, n, m, opt, out);
}
Status solve_sparse(const int64_t* indptr, const int64_t* indices, const double* costs,
                    int64_t n, int64_t m, const SolveOptions& opt, SolveOutput& out) {
    return sparse_impl(indptr, indices, costs, n, m, opt, out);
}
int64_t max_matching(const int64_t* indptr, const int32_t* indices, int64_t n, int64_t m,
                     int64_t* row_to_col, const float* costs) {
    return hopcroft_karp(indptr, indices, n, m, row_to_col, costs);
}
int64_t max_matching(const int64_t* indptr, const int64_t* indices, int64_t n, int64_t m,
                     int64_t* row_to_col, const float* costs) {
    return hopcroft_karp(indptr, indices, n, m, row_to_col, costs);
}
int64_t max_matching(const int64_t* indptr, const int32_t* indices, int64_t n, int64_t m,
                     int64_t* row_to_col, const double* costs) {
    return hopcroft_karp(indptr, indices, n, m, row_to_col, costs);
}
int64_t max_matching(const int64_t* indptr, const int64_t* indices, int64_t n, int64_t m,
                     int64_t* row_to_col, const double* costs) {
    return hopcroft_karp(indptr, indices, n, m, row_to_col, costs);
}

}  // namespace mechperm
