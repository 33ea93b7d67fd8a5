// mechperm native core: assignment solver (Bertsekas' auction algorithm).
// Plain C++17 over raw buffers; no Python, no libtorch.
//
// Problem (minimisation; the Python front negates for maximisation):
//     min  sum_ij c_ij x_ij   s.t.  sum_j x_ij = 1 for every row i,  sum_i x_ij <= 1 for every column j,
// with n <= m (rows are always all assigned; the Python front transposes when n > m).
// The arcs are either all n*m pairs of a dense row-major array, or the arcs of a CSR graph.
//
// Partial assignment ("unmatched cost"): with a per-row cost lambda_i, the problem is padded with
// n dummy columns m..m+n-1 where dummy column m+i is an arc of row i only, at cost lambda_i:
//     [ C | diag(lambda) ]   (off-diagonal dummy entries are absent / +inf).
// A row matched to its dummy column is reported unmatched (-1) and pays lambda_i.
//
// Algorithm (Bertsekas 1988 "The auction algorithm: a distributed relaxation method for the
// assignment problem"; Bertsekas & Castanon 1992 "A forward/reverse auction algorithm for
// asymmetric assignment problems"):
//   1. epsilon-scaling forward auction (Gauss-Seidel bids with best and second best), float64
//      prices; for n < m each phase ends with reverse iterations that pull the prices of free
//      columns down to the lowest assigned price (the asymmetric epsilon-CS condition);
//   2. an exact finish: rows whose assigned arc is not exactly the cheapest at the final prices
//      are released and re-inserted with shortest augmenting paths (Dijkstra on reduced costs, as
//      in Jonker & Volgenant 1987), so the result is optimal for real-valued costs, not only
//      within n*epsilon. The duals returned satisfy u_i + v_j <= c_ij on every arc (u_i is the
//      row minimum of c_ij - v_j) with equality on assigned arcs up to float64 rounding, and
//      v_j <= 0 with v_j = 0 on every free column (the dual of the "<= 1" column constraints).
//   0. before 1, a cold solve tries the finish alone (column reduction, augmenting row
//      reduction, shortest paths) under a work budget (SolveOptions::sap_budget): where most
//      rows have one clear best column it is done in a few short paths, 10x faster than the
//      auction; where paths grow long it gives up early and the auction runs from scratch;
//   3. after an auction (sparse graphs), every price is lowered as far as the assignment allows
//      (Dijkstra from all columns on the reduced costs): tighter duals for the exact loop.
// Sparse graphs are checked for a perfect matching of the rows first (Hopcroft & Karp 1973), so
// an infeasible graph is reported instead of starting an endless price war.
#pragma once

#include <atomic>
#include <cstdint>
#include <string>
#include <vector>

namespace mechperm {

// Human-readable description of how this library was compiled (compiler, standard, flags).
std::string build_info();

enum class Status : int {
    OK = 0,
    INFEASIBLE = 1,   // no assignment of every row exists on the given arcs
    INTERRUPTED = 2,  // the poll callback or the interrupt flag asked to stop
    BAD_INPUT = 3,    // shapes, indices or values violate the contract (see `message`)
};

const char* status_name(Status s);

// Called every ~1e6 arc scans (about a millisecond); returns true to stop the solve.
using PollFn = bool (*)(void* ctx);

struct SolveOptions {
    const double* unmatched_cost = nullptr;  // [n] lambda_i, or nullptr for a full assignment
    const double* init_v = nullptr;  // [m (+ n dummies)] warm-start column duals, or nullptr
    // [n] warm-start assignment (-1 = none; column m+i = row i's dummy). Pairs that are not arcs
    // or that collide with an earlier row are ignored.
    const int64_t* init_row_to_col = nullptr;
    // first epsilon; 0 = automatic (from the widest row); < 0 = no auction phase (shortest
    // augmenting paths only, e.g. after a warm start with few rows to repair)
    double eps_start = 0.0;
    double eps_final = 0.0;          // last epsilon before the exact finish; 0 = automatic
    double eps_factor = 0.0;         // epsilon ratio between phases; 0 = automatic
    // Solves with the automatic eps_start first try shortest augmenting paths alone (cold: from
    // column reduction and augmenting row reduction, Jonker & Volgenant 1987; warm: from the
    // warm start), and give up for the auction once the paths have scanned this many times the
    // arcs. 0 = always the auction. (Costs with one clear best column per row need a few short paths: 10x faster
    // than the auction; weakly related features make long paths: 10x slower. See auction.cpp.)
    double sap_budget = 1.0;
    // Threads for the passes over every row whose rows are independent (checks, the release
    // of rows off their best, the duals u); bids and augmenting paths stay sequential.
    int threads = 1;
    // threads > 1: the auction's next rows scanned on the threads ahead of their bids, each scan
    // checked (and redone where a bid in between made it stale) before its bid: the same solve
    // as without. Opt-in (MECHPERM_SCAN_AHEAD=1): on a 2-core VM the cold solve of make_stack's
    // 16384 graph took 0.44-0.46 against 0.54-0.55 s alone, but no less inside match() and
    // longer beside other spinning threads (README); not yet timed on a many-core host.
    bool scan_ahead = false;
    bool check_feasible = true;      // sparse only: Hopcroft-Karp before solving
    // Sparse only, without check_feasible (and without unmatched_cost): Hopcroft-Karp only
    // before the first auction phase. The shortest augmenting paths need no check: a free row
    // they cannot augment proves the graph infeasible (INFEASIBLE, "no augmenting path"),
    // and where they finish, the assignment they found proves it feasible (the check's
    // maximum matching, 0.81 s of the H100's 1M-row match in session 16, is then spared).
    bool check_feasible_lazily = false;
    bool check_arcs = true;          // sparse only: every column index in range, every cost finite
    // Sparse warm starts (init_v, init_row_to_col from one earlier solve, eps_start <= 0): the
    // rows whose arcs changed since that solve, the only ones checked for a column better than
    // their own before the paths (the others were tight then: one pass over their arcs saved
    // per restart, ~a third of a restart that repairs a few rows). nullptr: every row. After
    // auction phases (eps_start = 0 and the paths over budget) every row is checked.
    const int64_t* changed_rows = nullptr;
    int64_t n_changed = 0;
    PollFn poll = nullptr;
    void* poll_ctx = nullptr;
    const std::atomic<bool>* interrupt = nullptr;  // checked together with `poll`
};

struct SolveOutput {
    // Buffers owned by the caller.
    int64_t* row_to_col = nullptr;  // [n]; -1 = unmatched (partial mode only)
    int64_t* col_to_row = nullptr;  // [m]; -1 = free
    double* u = nullptr;            // [n] row duals
    double* v = nullptr;            // [m] column duals (<= 0, 0 on free columns)
    double* v_dummy = nullptr;      // [n] duals of the dummy columns, or nullptr
    // Scalars filled by the solver.
    double objective = 0.0;       // sum of c_ij over assigned arcs (+ lambda_i per unmatched row)
    double dual_objective = 0.0;  // sum(u) + sum(v) (+ sum(v_dummy))
    int64_t phases = 0;           // epsilon phases run
    int64_t bids = 0;             // forward bids
    int64_t reverse_bids = 0;     // reverse iterations (n < m)
    int64_t augmentations = 0;    // shortest augmenting paths in the exact finish
    int64_t rescans = 0;          // scans made ahead on threads that a bid made stale (redone)
    // The shortest-paths-first attempt (SolveOptions::sap_budget): 0 not made, 1 it solved the
    // problem, 2 it ran out of budget and the auction solved it (augmentations then count both).
    int64_t sap_trial = 0;
    int64_t matched = 0;          // INFEASIBLE: size of a maximum matching
    // max |p_j| of the internal prices at the end, before the final shift: the magnitude at
    // which c_ij + p_j was resolved. Much larger than the assigned costs means float64 could not
    // tell apart cost differences at the scale of those costs (a warm start from ill-suited
    // prices); re-solving cold fixes that.
    double price_scale = 0.0;
    double cost_scale = 0.0;      // max |c_ij| over the assigned arcs (and lambda of unmatched)
    std::string message;          // BAD_INPUT / INFEASIBLE: what was wrong
};

// Dense row-major cost array [n, m], n <= m, all values finite.
Status solve_dense(const float* cost, int64_t n, int64_t m, const SolveOptions& opt,
                   SolveOutput& out);
Status solve_dense(const double* cost, int64_t n, int64_t m, const SolveOptions& opt,
                   SolveOutput& out);

// CSR graph: row i has arcs indptr[i]..indptr[i+1]-1 to columns indices[a] at costs[a].
// indptr has n+1 entries, starts at 0 and never decreases; n <= m (counting dummy columns).
Status solve_sparse(const int64_t* indptr, const int32_t* indices, const float* costs, int64_t n,
                    int64_t m, const SolveOptions& opt, SolveOutput& out);
Status solve_sparse(const int64_t* indptr, const int32_t* indices, const double* costs,
                    int64_t n, int64_t m, const SolveOptions& opt, SolveOutput& out);
Status solve_sparse(const int64_t* indptr, const int64_t* indices, const float* costs, int64_t n,
                    int64_t m, const SolveOptions& opt, SolveOutput& out);
Status solve_sparse(const int64_t* indptr, const int64_t* indices, const double* costs,
                    int64_t n, int64_t m, const SolveOptions& opt, SolveOutput& out);

// Maximum bipartite matching of a CSR graph (Hopcroft & Karp). Fills row_to_col [n] (-1 where
// unmatched) and returns the matching size. costs (one per arc, or null): the greedy start
// takes each row's cheapest free column (a candidate graph then starts nearly matched).
int64_t max_matching(const int64_t* indptr, const int32_t* indices, int64_t n, int64_t m,
                     int64_t* row_to_col, const float* costs = nullptr);
int64_t max_matching(const int64_t* indptr, const int64_t* indices, int64_t n, int64_t m,
                     int64_t* row_to_col, const float* costs = nullptr);
int64_t max_matching(const int64_t* indptr, const int32_t* indices, int64_t n, int64_t m,
                     int64_t* row_to_col, const double* costs);
int64_t max_matching(const int64_t* indptr, const int64_t* indices, int64_t n, int64_t m,
                     int64_t* row_to_col, const double* costs);

// ---- Dense helpers for the exact-from-candidates loop (dense_ops.cpp) -------------------------

// Candidate graph of a cost array: the k_row cheapest columns of every row by c_ij - a_j, the
// k_col cheapest rows of every column by c_ij - b_i (a_j, b_i: any offsets, typically the column
// and row minima), and, on request, the arc (i, i) of every row so that a perfect matching of the
// rows exists (n <= m). Every pair left out satisfies
//     c_ij >= max(row_bound_i + a_j, col_bound_j + b_i).
struct Candidates {
    std::vector<int64_t> indptr;   // [n + 1]
    std::vector<int64_t> indices;  // [nnz], sorted within each row
    std::vector<double> costs;     // [nnz]
    std::vector<double> row_bound, col_offset;  // [n], [m]
    std::vector<double> col_bound, row_offset;  // [m], [n]
};

// Builds Candidates from row tiles of the cost matrix streamed in any order (e.g. GEMM tiles of
// squared distances that never exist as a whole). Memory O((n + m) k).
class CandidateBuilder {
public:
    CandidateBuilder(int64_t n, int64_t m, int64_t k_row, int64_t k_col,
                     std::vector<double> col_offset, std::vector<double> row_offset);
    // tile: rows r0 .. r0+rows-1, row-major [rows, m]. BAD_INPUT on NaN/inf or a bad range.
    Status add(const float* tile, int64_t r0, int64_t rows, const SolveOptions& opt);
    Status add(const double* tile, int64_t r0, int64_t rows, const SolveOptions& opt);
    // diagonal: add (i, i) for every row (needs n <= m). Rows never added keep no arcs.
    void finish(bool diagonal, Candidates& out);
    int64_t n() const { return n_; }
    int64_t m() const { return m_; }

private:
    template <class T>
    Status add_impl(const T* tile, int64_t r0, int64_t rows, const SolveOptions& opt);
    int64_t n_, m_, k_row_, k_col_;
    std::vector<double> a_, b_;
    std::vector<double> row_val_, row_cost_, row_bound_, diag_cost_;
    std::vector<int64_t> row_idx_, row_size_;
    std::vector<double> col_val_, col_cost_, col_limit_;
    std::vector<int64_t> col_idx_, col_size_;
};

// Whole dense matrix: minima pass, then CandidateBuilder with the arcs (i, i).
Status dense_candidates(const float* cost, int64_t n, int64_t m, int64_t k_row, int64_t k_col,
                        const SolveOptions& opt, Candidates& out);
Status dense_candidates(const double* cost, int64_t n, int64_t m, int64_t k_row, int64_t k_col,
                        const SolveOptions& opt, Candidates& out);

// Pricing: for each listed row, the pairs with reduced cost c_ij - u_i - v_j < -tol (at most
// max_per_row of the most negative ones when max_per_row > 0), and the row's minimum reduced
// cost over all columns (row_min, [n_rows]).
struct Priced {
    std::vector<int64_t> rows, cols;
    std::vector<double> costs;
};
Status dense_price(const float* cost, int64_t n, int64_t m, const int64_t* rows, int64_t n_rows,
                   const double* u, const double* v, double tol, int64_t max_per_row,
                   const SolveOptions& opt, Priced& out, double* row_min);
Status dense_price(const double* cost, int64_t n, int64_t m, const int64_t* rows, int64_t n_rows,
                   const double* u, const double* v, double tol, int64_t max_per_row,
                   const SolveOptions& opt, Priced& out, double* row_min);

// Margins of an assignment: per row i, min over j != row_to_col[i] of c_ij - u_i - v_j (how much
// dearer the best alternative is at these duals; +inf if none), NaN for unassigned rows (-1).
Status dense_margins(const float* cost, int64_t n, int64_t m, const int64_t* row_to_col,
                     const double* u, const double* v, const SolveOptions& opt, double* out);
Status dense_margins(const double* cost, int64_t n, int64_t m, const int64_t* row_to_col,
                     const double* u, const double* v, const SolveOptions& opt, double* out);

// out[q] = min over j < m of (w[j] - x[j] * s[q]): the lower envelope of m lines, built in
// O(m log m), queried in O(log m) each or, given their order, in one walk along it. Inputs
// finite. Used for bounds of the form min_j (w_j - x_j s_i) over the pairs a candidate graph
// leaves out. by_slope / by_query (optional): permutations of 0..m-1 / 0..nq-1 that sort x / s
// ascending, reused across calls (the exact loop's slopes and queries are fixed while w moves
// with the duals every round); kEnvelopeBadSlopeOrder / kEnvelopeBadQueryOrder (out unset or
// partly set) if one is not. by_query is used (and checked) up to kWalkMaxQueries queries:
// beyond, the walk's gathers and scatters in query order miss the caches (2 threads, one
// envelope of F lines and F queries, session 22: 16384 0.29 against 0.6 ms of binary
// searches, 65536 1.7 against 2.1 ms, 262144 7.6-11 against 8.3-8.4 ms; sorting the queries
// inside lost from 65536 on).
constexpr int kEnvelopeOk = 0, kEnvelopeBadSlopeOrder = 1, kEnvelopeBadQueryOrder = 2;
constexpr int64_t kWalkMaxQueries = int64_t(1) << 17;
int envelope_min(const double* w, const double* x, int64_t m, const double* s, int64_t nq,
                 double* out, const int64_t* by_slope = nullptr, int threads = 1,
                 const int64_t* by_query = nullptr);

}  // namespace mechperm
