// The only file that includes pybind11: maps the C++ core to `mechperm._auction`.
//
// Arrays are taken without copies: a wrong dtype or a non-contiguous array is refused with a
// ValueError (the typed front in mechperm/assign.py converts explicitly where that is safe), so a
// silent copy can never hide a bug. Outputs are allocated before the GIL is released; the solve
// runs without the GIL and polls for Ctrl-C (PyErr_CheckSignals) about once a millisecond.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <stdexcept>
#include <string>

#include "auction.hpp"
#include "bounds.hpp"
#include "csr.hpp"
#include "order.hpp"
#include "parallel.hpp"
#include "screen.hpp"
#include "topk.hpp"

namespace py = pybind11;
using namespace mechperm;

namespace {

// Raised for Status::INFEASIBLE; registered as mechperm._auction.InfeasibleError(ValueError).
struct Infeasible : std::runtime_error {
    using std::runtime_error::runtime_error;
};

struct PollState {
    bool raised = false;
};

// Poll callback: briefly takes the GIL to run pending signal handlers (KeyboardInterrupt).
bool poll_signals(void* ctx) {
    py::gil_scoped_acquire gil;
    if (PyErr_CheckSignals() != 0) {
        static_cast<PollState*>(ctx)->raised = true;
        return true;
    }
    return false;
}

void raise_status(Status st, const std::string& message, const PollState& poll) {
    switch (st) {
        case Status::OK: return;
        case Status::INTERRUPTED:
            if (!poll.raised || !PyErr_Occurred()) PyErr_SetNone(PyExc_KeyboardInterrupt);
            throw py::error_already_set();
        case Status::INFEASIBLE: throw Infeasible(message);
        case Status::BAD_INPUT: throw py::value_error(message.empty() ? "bad input" : message);
    }
    throw py::value_error(std::string("unexpected solver status ") + status_name(st));
}

std::string dtype_name(const py::array& a) { return py::str(a.dtype()).cast<std::string>(); }

template <class T>
bool is_c_array(const py::array& a) {
    return py::isinstance<py::array_t<T, py::array::c_style>>(a);
}

// A C-contiguous array of exactly dtype T with the given ndim (and length, when >= 0).
template <class T>
const T* require(const py::array& a, const char* name, int ndim, int64_t length = -1) {
    if (a.ndim() != ndim)
        throw py::value_error(std::string(name) + " must be " + std::to_string(ndim) +
                              "-D, got " + std::to_string(a.ndim()) + "-D");
    if (!py::isinstance<py::array_t<T>>(a))
        throw py::value_error(std::string(name) + " must have dtype " +
                              py::str(py::dtype::of<T>()).cast<std::string>() + ", got " +
                              dtype_name(a));
    if (!is_c_array<T>(a))
        throw py::value_error(std::string(name) +
                              " must be C-contiguous (use np.ascontiguousarray)");
    if (length >= 0 && a.shape(0) != length)
        throw py::value_error(std::string(name) + " must have length " + std::to_string(length) +
                              ", got " + std::to_string(a.shape(0)));
    return static_cast<const T*>(a.data());
}

const double* optional_f64(const py::object& o, const char* name, int64_t length) {
    if (o.is_none()) return nullptr;
    return require<double>(o.cast<py::array>(), name, 1, length);
}

py::dict solve_result(const SolveOutput& out, py::array_t<int64_t>& r2c, py::array_t<int64_t>& c2r,
                      py::array_t<double>& u, py::array_t<double>& v, py::object v_dummy) {
    py::dict d;
    d["row_to_col"] = r2c;
    d["col_to_row"] = c2r;
    d["u"] = u;
    d["v"] = v;
    d["v_dummy"] = v_dummy;
    d["objective"] = out.objective;
    d["dual_objective"] = out.dual_objective;
    d["phases"] = out.phases;
    d["bids"] = out.bids;
    d["reverse_bids"] = out.reverse_bids;
    d["augmentations"] = out.augmentations;
    d["rescans"] = out.rescans;
    d["sap_trial"] = out.sap_trial;
    d["price_scale"] = out.price_scale;
    d["cost_scale"] = out.cost_scale;
    return d;
}

struct Outputs {
    py::array_t<int64_t> r2c, c2r;
    py::array_t<double> u, v;
    py::object v_dummy = py::none();
    SolveOutput out;
    Outputs(int64_t n, int64_t m, bool dummies) : r2c(n), c2r(m), u(n), v(m) {
        out.row_to_col = r2c.mutable_data();
        out.col_to_row = c2r.mutable_data();
        out.u = u.mutable_data();
        out.v = v.mutable_data();
        if (dummies) {
            py::array_t<double> vd(n);
            out.v_dummy = vd.mutable_data();
            v_dummy = vd;
        }
    }
    py::dict result() { return solve_result(out, r2c, c2r, u, v, v_dummy); }
};

SolveOptions make_options(const py::object& unmatched, const py::object& init_v,
                          const py::object& init_r2c, int64_t n, int64_t m, double eps_start,
                          double eps_final, double eps_factor, double sap_budget, int threads,
                          const py::object& scan_ahead, PollState& poll) {
    SolveOptions opt;
    opt.unmatched_cost = optional_f64(unmatched, "unmatched_cost", n);
    opt.init_v = optional_f64(init_v, "init_v", opt.unmatched_cost != nullptr ? m + n : m);
    if (!init_r2c.is_none())
        opt.init_row_to_col = require<int64_t>(init_r2c.cast<py::array>(), "init_row_to_col", 1, n);
    opt.eps_start = eps_start;
    opt.eps_final = eps_final;
    opt.eps_factor = eps_factor;
    opt.sap_budget = sap_budget;
    opt.threads = std::max(1, threads);
    if (scan_ahead.is_none()) {  // MECHPERM_SCAN_AHEAD=1 (README): opt-in
        const char* env = std::getenv("MECHPERM_SCAN_AHEAD");
        opt.scan_ahead = env != nullptr && std::string(env) == "1";
    } else {
        opt.scan_ahead = scan_ahead.cast<bool>();
    }
    opt.poll = &poll_signals;
    opt.poll_ctx = &poll;
    return opt;
}

// f(const float*) or f(const double*) on a C-contiguous float32/float64 array, with the GIL
// released; any other dtype or layout is a ValueError naming the array.
template <class F>
Status with_floats(const py::array& a, const char* name, F&& f) {
    if (is_c_array<float>(a)) {
        const float* p = static_cast<const float*>(a.data());
        py::gil_scoped_release release;
        return f(p);
    }
    if (is_c_array<double>(a)) {
        const double* p = static_cast<const double*>(a.data());
        py::gil_scoped_release release;
        return f(p);
    }
    throw py::value_error(std::string(name) + " must be a C-contiguous float32 or float64 array, got " +
                          dtype_name(a));
}

// Options whose only job is to let Ctrl-C through.
SolveOptions polled(PollState& poll) {
    SolveOptions opt;
    opt.poll = &poll_signals;
    opt.poll_ctx = &poll;
    return opt;
}

void require_2d(const py::array& a, const char* name) {
    if (a.ndim() != 2)
        throw py::value_error(std::string(name) + " must be 2-D, got " + std::to_string(a.ndim()) + "-D");
}

py::dict solve_dense_py(const py::array& cost, const py::object& unmatched,
                        const py::object& init_v, const py::object& init_r2c, double eps_start,
                        double eps_final, double eps_factor, double sap_budget, int threads,
                        const py::object& scan_ahead) {
    require_2d(cost, "cost");
    const int64_t n = cost.shape(0), m = cost.shape(1);
    PollState poll;
    SolveOptions opt = make_options(unmatched, init_v, init_r2c, n, m, eps_start, eps_final,
                                    eps_factor, sap_budget, threads, scan_ahead, poll);
    Outputs o(n, m, opt.unmatched_cost != nullptr);
    const Status st =
        with_floats(cost, "cost", [&](const auto* c) { return solve_dense(c, n, m, opt, o.out); });
    raise_status(st, o.out.message, poll);
    return o.result();
}

template <class I, class T>
Status call_sparse(const py::array& indptr, const py::array& indices, const py::array& costs,
                   int64_t n, int64_t m, const SolveOptions& opt, SolveOutput& out) {
    const int64_t* p = require<int64_t>(indptr, "indptr", 1, n + 1);
    const I* idx = static_cast<const I*>(indices.data());
    const T* c = static_cast<const T*>(costs.data());
    py::gil_scoped_release release;
    return solve_sparse(p, idx, c, n, m, opt, out);
}

void check_csr(const py::array& indptr, const py::array& indices, const py::array& costs,
               int64_t n) {
    require<int64_t>(indptr, "indptr", 1, n + 1);
    const int64_t nnz = static_cast<const int64_t*>(indptr.data())[n];
    if (indices.ndim() != 1 || costs.ndim() != 1)
        throw py::value_error("indices and costs must be 1-D");
    if (indices.shape(0) != nnz || costs.shape(0) != nnz)
        throw py::value_error("indices and costs must have indptr[-1] = " + std::to_string(nnz) +
                              " entries, got " + std::to_string(indices.shape(0)) + " and " +
                              std::to_string(costs.shape(0)));
    if (!is_c_array<int32_t>(indices) && !is_c_array<int64_t>(indices))
        throw py::value_error("indices must be a contiguous int32 or int64 array, got " +
                              dtype_name(indices));
    if (!is_c_array<float>(costs) && !is_c_array<double>(costs))
        throw py::value_error("costs must be a contiguous float32 or float64 array, got " +
                              dtype_name(costs));
}

py::dict solve_sparse_py(const py::array& indptr, const py::array& indices,
                         const py::array& costs, int64_t n, int64_t m,
                         const py::object& unmatched, const py::object& init_v,
                         const py::object& init_r2c, double eps_start, double eps_final,
                         double eps_factor, const py::object& check_feasible, double sap_budget, int threads,
                         const py::object& changed_rows, bool check_arcs, const py::object& scan_ahead) {
    if (n < 0 || m < 0) throw py::value_error("shape must be non-negative");
    check_csr(indptr, indices, costs, n);
    PollState poll;
    SolveOptions opt = make_options(unmatched, init_v, init_r2c, n, m, eps_start, eps_final,
                                    eps_factor, sap_budget, threads, scan_ahead, poll);
    if (py::isinstance<py::str>(check_feasible)) {
        if (check_feasible.cast<std::string>() != "lazy")
            throw py::value_error("check_feasible must be True, False or 'lazy', got '" +
                                  check_feasible.cast<std::string>() + "'");
        opt.check_feasible = false;
        opt.check_feasible_lazily = true;
    } else {
        opt.check_feasible = check_feasible.cast<bool>();
    }
    opt.check_arcs = check_arcs;
    py::array changed;
    if (!changed_rows.is_none()) {
        if (init_r2c.is_none() || init_v.is_none() || eps_start > 0.0)
            throw py::value_error("changed_rows needs a warm start (init_v, init_row_to_col) with eps_start <= 0");
        changed = py::array::ensure(changed_rows);
        const int64_t* rows = require<int64_t>(changed, "changed_rows", 1);
        opt.n_changed = changed.shape(0);
        for (int64_t t = 0; t < opt.n_changed; ++t)
            if (rows[t] < 0 || rows[t] >= n)
                throw py::value_error("changed_rows[" + std::to_string(t) + "] = " + std::to_string(rows[t]) +
                                      " is out of range [0, " + std::to_string(n) + ")");
        opt.changed_rows = rows;
    }
    Outputs o(n, m, opt.unmatched_cost != nullptr);
    Status st;
    const bool i32 = is_c_array<int32_t>(indices), f32 = is_c_array<float>(costs);
    if (i32 && f32)
        st = call_sparse<int32_t, float>(indptr, indices, costs, n, m, opt, o.out);
    else if (i32)
        st = call_sparse<int32_t, double>(indptr, indices, costs, n, m, opt, o.out);
    else if (f32)
        st = call_sparse<int64_t, float>(indptr, indices, costs, n, m, opt, o.out);
    else
        st = call_sparse<int64_t, double>(indptr, indices, costs, n, m, opt, o.out);
    raise_status(st, o.out.message, poll);
    return o.result();
}

py::tuple max_matching_py(const py::array& indptr, const py::array& indices, int64_t n,
                          int64_t m, const py::object& costs) {
    require<int64_t>(indptr, "indptr", 1, n + 1);
    const int64_t* p = static_cast<const int64_t*>(indptr.data());
    const int64_t nnz = p[n];
    if (indices.ndim() != 1 || indices.shape(0) != nnz)
        throw py::value_error("indices must be 1-D with indptr[-1] entries");
    for (int64_t i = 0; i < n; ++i)
        if (p[i + 1] < p[i] || p[0] != 0) throw py::value_error("indptr must be non-decreasing");
    py::array_t<int64_t> r2c(n);
    int64_t size = 0;
    auto check_range = [&](auto* idx) {
        for (int64_t a = 0; a < nnz; ++a)
            if (idx[a] < 0 || int64_t(idx[a]) >= m)
                throw py::value_error("column index out of range");
    };
    // costs: None, or one float32 / float64 per arc (the greedy start's preference only)
    const float* cf = nullptr;
    const double* cd = nullptr;
    py::array cost_arr;
    if (!costs.is_none()) {
        cost_arr = py::array::ensure(costs);
        if (!cost_arr || cost_arr.ndim() != 1 || cost_arr.shape(0) != nnz)
            throw py::value_error("costs must be 1-D with indptr[-1] entries");
        if (is_c_array<float>(cost_arr))
            cf = static_cast<const float*>(cost_arr.data());
        else if (is_c_array<double>(cost_arr))
            cd = static_cast<const double*>(cost_arr.data());
        else
            throw py::value_error("costs must be a contiguous float32 or float64 array, got " +
                                  dtype_name(cost_arr));
    }
    auto run = [&](auto* idx) {
        check_range(idx);
        py::gil_scoped_release release;
        size = cd != nullptr ? max_matching(p, idx, n, m, r2c.mutable_data(), cd)
                             : max_matching(p, idx, n, m, r2c.mutable_data(), cf);
    };
    if (is_c_array<int32_t>(indices)) {
        run(static_cast<const int32_t*>(indices.data()));
    } else if (is_c_array<int64_t>(indices)) {
        run(static_cast<const int64_t*>(indices.data()));
    } else {
        throw py::value_error("indices must be a contiguous int32 or int64 array, got " +
                              dtype_name(indices));
    }
    return py::make_tuple(size, r2c);
}

py::dict candidates_dict(Candidates& out);

template <class V>
py::array_t<V> to_numpy(std::vector<V>&& vec) {
    auto* heap = new std::vector<V>(std::move(vec));
    py::capsule owner(heap, [](void* p) { delete static_cast<std::vector<V>*>(p); });
    return py::array_t<V>(py::ssize_t(heap->size()), heap->data(), owner);
}

py::dict dense_candidates_py(const py::array& cost, int64_t k_row, int64_t k_col) {
    require_2d(cost, "cost");
    const int64_t n = cost.shape(0), m = cost.shape(1);
    if (n > m) throw py::value_error("dense_candidates needs n <= m; transpose the problem");
    if (k_row < 0 || k_col < 0) throw py::value_error("k must be non-negative");
    PollState poll;
    const SolveOptions opt = polled(poll);
    Candidates out;
    const Status st = with_floats(cost, "cost", [&](const auto* c) {
        return dense_candidates(c, n, m, k_row, k_col, opt, out);
    });
    raise_status(st, "cost contains NaN or infinity", poll);
    return candidates_dict(out);
}

CandidateBuilder* make_builder(int64_t n, int64_t m, int64_t k_row, int64_t k_col,
                               const py::array& col_offset, const py::array& row_offset) {
    if (n < 0 || m < 0 || k_row < 0 || k_col < 0)
        throw py::value_error("CandidateBuilder: sizes and k must be non-negative");
    const double* a = require<double>(col_offset, "col_offset", 1, m);
    const double* b = require<double>(row_offset, "row_offset", 1, n);
    return new CandidateBuilder(n, m, k_row, k_col, std::vector<double>(a, a + m),
                                std::vector<double>(b, b + n));
}

void builder_add(CandidateBuilder& self, const py::array& tile, int64_t r0) {
    if (tile.ndim() != 2 || tile.shape(1) != self.m())
        throw py::value_error("tile must be 2-D with " + std::to_string(self.m()) + " columns");
    const int64_t rows = tile.shape(0);
    if (r0 < 0 || r0 + rows > self.n())
        throw py::value_error("tile rows out of range [0, " + std::to_string(self.n()) + ")");
    PollState poll;
    const SolveOptions opt = polled(poll);
    const Status st =
        with_floats(tile, "tile", [&](const auto* c) { return self.add(c, r0, rows, opt); });
    raise_status(st, "cost contains NaN or infinity", poll);
}

py::dict candidates_dict(Candidates& out) {
    py::dict d;
    d["indptr"] = to_numpy(std::move(out.indptr));
    d["indices"] = to_numpy(std::move(out.indices));
    d["costs"] = to_numpy(std::move(out.costs));
    d["row_bound"] = to_numpy(std::move(out.row_bound));
    d["col_bound"] = to_numpy(std::move(out.col_bound));
    d["row_offset"] = to_numpy(std::move(out.row_offset));
    d["col_offset"] = to_numpy(std::move(out.col_offset));
    return d;
}

py::dict builder_finish(CandidateBuilder& self, bool diagonal) {
    Candidates out;
    {
        py::gil_scoped_release release;
        self.finish(diagonal, out);
    }
    return candidates_dict(out);
}

py::tuple dense_price_py(const py::array& cost, const py::array& rows, const py::array& u,
                         const py::array& v, double tol, int64_t max_per_row) {
    require_2d(cost, "cost");
    const int64_t n = cost.shape(0), m = cost.shape(1);
    const int64_t* r = require<int64_t>(rows, "rows", 1);
    const int64_t nr = rows.shape(0);
    const double* up = require<double>(u, "u", 1, n);
    const double* vp = require<double>(v, "v", 1, m);
    PollState poll;
    const SolveOptions opt = polled(poll);
    Priced out;
    py::array_t<double> row_min(nr);
    double* rm = row_min.mutable_data();
    const Status st = with_floats(cost, "cost", [&](const auto* c) {
        return dense_price(c, n, m, r, nr, up, vp, tol, max_per_row, opt, out, rm);
    });
    raise_status(st, "rows out of range", poll);
    return py::make_tuple(to_numpy(std::move(out.rows)), to_numpy(std::move(out.cols)),
                          to_numpy(std::move(out.costs)), row_min);
}

py::array_t<double> dense_margins_py(const py::array& cost, const py::array& row_to_col,
                                     const py::array& u, const py::array& v) {
    require_2d(cost, "cost");
    const int64_t n = cost.shape(0), m = cost.shape(1);
    const int64_t* r2c = require<int64_t>(row_to_col, "row_to_col", 1, n);
    const double* up = require<double>(u, "u", 1, n);
    const double* vp = require<double>(v, "v", 1, m);
    PollState poll;
    const SolveOptions opt = polled(poll);
    py::array_t<double> out(n);
    double* o = out.mutable_data();
    const Status st = with_floats(cost, "cost", [&](const auto* c) {
        return dense_margins(c, n, m, r2c, up, vp, opt, o);
    });
    raise_status(st, "row_to_col out of range", poll);
    return out;
}

py::array_t<int64_t> argsort_py(const py::array& x, int threads) {
    const double* xp = require<double>(x, "x", 1);
    const int64_t n = x.shape(0);
    py::array_t<int64_t> out(n);
    int64_t* o = out.mutable_data();
    {
        py::gil_scoped_release release;
        argsort(xp, n, o, std::max(1, threads));
    }
    return out;
}

py::array_t<int64_t> searchsorted_py(const py::array& sorted, const py::array& queries, int threads) {
    const double* sp = require<double>(sorted, "sorted", 1);
    const int64_t m = sorted.shape(0);
    for (int64_t j = 1; j < m; ++j)
        if (sp[j] < sp[j - 1] || (std::isnan(sp[j - 1]) && !std::isnan(sp[j])))
            throw py::value_error("sorted must be ascending (NaN last): entry " + std::to_string(j) +
                                  " orders before entry " + std::to_string(j - 1));
    const double* qp = require<double>(queries, "queries", 1);
    const int64_t nq = queries.shape(0);
    py::array_t<int64_t> out(nq);
    int64_t* o = out.mutable_data();
    {
        py::gil_scoped_release release;
        searchsorted_left(sp, m, qp, nq, o, std::max(1, threads));
    }
    return out;
}

py::array_t<double> envelope_min_py(const py::array& w, const py::array& x, const py::array& s,
                                    const py::object& by_slope, int threads, const py::object& by_query) {
    const double* wp = require<double>(w, "w", 1);
    const int64_t m = w.shape(0);
    const double* xp = require<double>(x, "x", 1, m);
    const int64_t* order = nullptr;
    if (!by_slope.is_none()) order = require<int64_t>(by_slope.cast<py::array>(), "by_slope", 1, m);  // checked inside
    const double* sp = require<double>(s, "s", 1);
    const int64_t nq = s.shape(0);
    const int64_t* q_order = nullptr;
    if (!by_query.is_none()) q_order = require<int64_t>(by_query.cast<py::array>(), "by_query", 1, nq);  // likewise
    py::array_t<double> out(nq);
    double* o = out.mutable_data();
    int status = kEnvelopeOk;
    int64_t bad_line, bad_query;
    {
        py::gil_scoped_release release;
        bad_line = first_bad(m, threads, [&](int64_t j) { return !std::isfinite(wp[j]) || !std::isfinite(xp[j]); });
        bad_query = first_bad(nq, threads, [&](int64_t q) { return !std::isfinite(sp[q]); });
        if (bad_line < 0 && bad_query < 0)
            status = envelope_min(wp, xp, m, sp, nq, o, order, std::max(1, threads), q_order);
    }
    if (bad_line >= 0) throw py::value_error("w and x must be finite (entry " + std::to_string(bad_line) + ")");
    if (bad_query >= 0) throw py::value_error("s must be finite (entry " + std::to_string(bad_query) + ")");
    if (status == kEnvelopeBadSlopeOrder) throw py::value_error("by_slope must be a permutation sorting x ascending");
    if (status == kEnvelopeBadQueryOrder) throw py::value_error("by_query must be a permutation sorting s ascending");
    return out;
}


ScreenSide side_stats(const py::array& stats, const char* name, int64_t len) {
    const double* s = require<double>(stats, name, 2, 4);
    if (stats.shape(1) != len)
        throw py::value_error(std::string(name) + " must be [4, " + std::to_string(len) + "], got [4, " +
                              std::to_string(stats.shape(1)) + "]");
    return ScreenSide{s, s + len, s + 2 * len, s + 3 * len};
}

py::tuple screen_lower_bounds_py(py::array& cost, const py::array& a_stats, const py::array& b_stats,
                                 double gamma, double abs_slack, const py::array& u,
                                 const py::array& v, double tau) {
    require<float>(cost, "cost", 2);
    if (!cost.writeable()) throw py::value_error("cost must be writeable (it is updated in place)");
    const int64_t n = cost.shape(0), m = cost.shape(1);
    const ScreenSide sa = side_stats(a_stats, "a_stats", n), sb = side_stats(b_stats, "b_stats", m);
    const double* up = require<double>(u, "u", 1, n);
    const double* vp = require<double>(v, "v", 1, m);
    float* c = static_cast<float*>(cost.mutable_data());
    std::vector<int64_t> rows, cols;
    {
        py::gil_scoped_release release;
        screen_lower_bounds(c, n, m, sa, sb, gamma, abs_slack, up, vp, tau, rows, cols);
    }
    return py::make_tuple(to_numpy(std::move(rows)), to_numpy(std::move(cols)));
}

py::tuple screen_side_py(const py::array& x, const py::array& sq_norm, int threads) {
    const float* xp = require<float>(x, "x", 2);
    const int64_t F = x.shape(0), D = x.shape(1), dp = D + (D % 2);
    const float* sq = require<float>(sq_norm, "sq_norm", 1, F);
    py::array_t<uint16_t> bits({F, dp});
    py::array_t<double> stats({int64_t(4), F});
    uint16_t* b = bits.mutable_data();
    double* st = stats.mutable_data();
    int64_t bad;
    {
        py::gil_scoped_release release;
        bad = screen_side(xp, F, D, dp, sq, b, st, std::max(1, threads));
    }
    return py::make_tuple(bits, stats, bad);
}

py::tuple screen_side_int8_py(const py::array& x, const py::array& sq_norm, int threads) {
    const float* xp = require<float>(x, "x", 2);
    const int64_t F = x.shape(0), D = x.shape(1), dp = (D + 3) / 4 * 4;
    const float* sq = require<float>(sq_norm, "sq_norm", 1, F);
    py::array_t<int8_t> codes({F, dp});
    py::array_t<float> scale(F);
    py::array_t<double> stats({int64_t(4), F});
    int8_t* q = codes.mutable_data();
    float* sc = scale.mutable_data();
    double* st = stats.mutable_data();
    int64_t bad;
    {
        py::gil_scoped_release release;
        bad = screen_side_int8(xp, F, D, dp, sq, q, sc, st, std::max(1, threads));
    }
    return py::make_tuple(codes, scale, stats, bad);
}

py::array_t<double> pair_dots_py(const py::array& a, const py::array& b, const py::array& rows,
                                 const py::array& cols, int threads, const py::object& a_scale,
                                 const py::object& b_scale, int isa, bool grouped) {
    const float* ap = require<float>(a, "a", 2);
    const float* bp = require<float>(b, "b", 2);
    const int64_t d = a.shape(1);
    if (b.shape(1) != d)
        throw py::value_error("a and b must have the same width, got " + std::to_string(d) + " and " +
                              std::to_string(b.shape(1)));
    const int64_t* r = require<int64_t>(rows, "rows", 1);
    const int64_t count = rows.shape(0);
    const int64_t* c = require<int64_t>(cols, "cols", 1, count);
    for (int64_t t = 0; t < count; ++t)
        if (r[t] < 0 || r[t] >= a.shape(0) || c[t] < 0 || c[t] >= b.shape(0))
            throw py::value_error("pair " + std::to_string(t) + " (" + std::to_string(r[t]) + ", " +
                                  std::to_string(c[t]) + ") is out of range");
    const float* sa = a_scale.is_none() ? nullptr : require<float>(a_scale.cast<py::array>(), "a_scale", 1, a.shape(0));
    const float* sb = b_scale.is_none() ? nullptr : require<float>(b_scale.cast<py::array>(), "b_scale", 1, b.shape(0));
    py::array_t<double> out(count);
    double* o = out.mutable_data();
    {
        py::gil_scoped_release release;
        pair_dots(ap, bp, d, r, c, count, o, std::max(1, threads), sa, sb, isa, grouped);
    }
    return out;
}

// The rows/cols pair lists of the CSR edits, checked against the graph's shape.
void csr_pairs(const py::array& indptr, const py::array& rows, const py::array& cols, int64_t& n,
               const int64_t*& r, const int64_t*& c, int64_t& q) {
    if (indptr.ndim() != 1 || indptr.shape(0) < 1) throw py::value_error("indptr must be 1-D with n + 1 entries");
    n = indptr.shape(0) - 1;
    r = require<int64_t>(rows, "rows", 1);
    q = rows.shape(0);
    c = require<int64_t>(cols, "cols", 1, q);
    for (int64_t t = 0; t < q; ++t)
        if (r[t] < 0 || r[t] >= n || c[t] < 0)
            throw py::value_error("pair " + std::to_string(t) + " (" + std::to_string(r[t]) + ", " +
                                  std::to_string(c[t]) + ") is out of range for " + std::to_string(n) + " rows");
}

py::array_t<int64_t> csr_find_py(const py::array& indptr, const py::array& indices, const py::array& rows,
                                 const py::array& cols, int threads) {
    threads = std::max(1, threads);
    int64_t n, q;
    const int64_t *r, *c;
    csr_pairs(indptr, rows, cols, n, r, c, q);
    const int64_t* p = require<int64_t>(indptr, "indptr", 1, n + 1);
    py::array_t<int64_t> out(q);
    int64_t* o = out.mutable_data();
    if (is_c_array<int32_t>(indices)) {
        const int32_t* ix = static_cast<const int32_t*>(indices.data());
        py::gil_scoped_release release;
        csr_find(p, ix, r, c, q, o, threads);
    } else {
        const int64_t* ix = require<int64_t>(indices, "indices", 1);
        py::gil_scoped_release release;
        csr_find(p, ix, r, c, q, o, threads);
    }
    return out;
}

template <class I, class T>
int64_t csr_margins_typed(const int64_t* p, const py::array& indices, const py::array& costs, int64_t n, int64_t m,
                          const int64_t* r2c, const double* u, const double* v, int threads, double* o) {
    const I* ix = require<I>(indices, "indices", 1, p[n]);
    const T* cs = require<T>(costs, "costs", 1, p[n]);
    py::gil_scoped_release release;
    return csr_margins(p, ix, cs, n, m, r2c, u, v, threads, o);
}

// A CSR indptr [n + 1] (n = its length - 1): int64, starting at 0, non-decreasing.
const int64_t* require_indptr(const py::array& indptr) {
    if (indptr.ndim() != 1 || indptr.shape(0) < 1) throw py::value_error("indptr must be 1-D with n + 1 entries");
    const int64_t n = indptr.shape(0) - 1;
    const int64_t* p = require<int64_t>(indptr, "indptr", 1, n + 1);
    if (p[0] != 0) throw py::value_error("indptr[0] must be 0");
    for (int64_t i = 0; i < n; ++i)
        if (p[i + 1] < p[i]) throw py::value_error("indptr must be non-decreasing");
    return p;
}

py::tuple union_sorted_keys_py(const py::array& keys, int pos_bits, int64_t n, int64_t m, const py::array& costs) {
    if (pos_bits < 1 || pos_bits > 60) throw py::value_error("pos_bits must lie in [1, 60]");
    const int64_t* k = require<int64_t>(keys, "keys", 1);
    const int64_t e = keys.shape(0);
    const float* c = require<float>(costs, "costs", 1);
    const int64_t nc = costs.shape(0), limit = n * m * 4;
    for (int64_t t = 0; t < e; ++t) {
        if (t > 0 && k[t] < k[t - 1]) throw py::value_error("keys must be sorted ascending");
        if (k[t] < 0 || (k[t] >> pos_bits) >= limit)
            throw py::value_error("keys[" + std::to_string(t) + "]: its pair lies outside [0, n * m)");
        if ((k[t] & ((int64_t(1) << pos_bits) - 1)) >= nc)
            throw py::value_error("keys[" + std::to_string(t) + "]: its position lies outside [0, len(costs))");
    }
    const int64_t count = union_count_pairs(k, e, pos_bits);
    py::array_t<int64_t> indptr(n + 1), cols(count);
    py::array_t<float> out_costs(count);
    py::array_t<uint8_t> sources(count);
    {
        py::gil_scoped_release release;
        union_sorted_keys(k, e, pos_bits, n, m, c, indptr.mutable_data(), cols.mutable_data(),
                          out_costs.mutable_data(), sources.mutable_data());
    }
    return py::make_tuple(indptr, cols, out_costs, sources);
}

py::array_t<double> csr_margins_py(const py::array& indptr, const py::array& indices, const py::array& costs,
                                   const py::array& row_to_col, const py::array& u, const py::array& v,
                                   int threads) {
    const int64_t* p = require_indptr(indptr);
    const int64_t n = indptr.shape(0) - 1;
    const int64_t* r2c = require<int64_t>(row_to_col, "row_to_col", 1, n);
    const double* up = require<double>(u, "u", 1, n);
    if (v.ndim() != 1) throw py::value_error("v must be 1-D");
    const int64_t m = v.shape(0);
    const double* vp = require<double>(v, "v", 1, m);
    py::array_t<double> out(n);
    double* o = out.mutable_data();
    const bool i32 = is_c_array<int32_t>(indices), f32 = is_c_array<float>(costs);
    const int64_t bad = i32 ? (f32 ? csr_margins_typed<int32_t, float>(p, indices, costs, n, m, r2c, up, vp, threads, o)
                                   : csr_margins_typed<int32_t, double>(p, indices, costs, n, m, r2c, up, vp, threads, o))
                            : (f32 ? csr_margins_typed<int64_t, float>(p, indices, costs, n, m, r2c, up, vp, threads, o)
                                   : csr_margins_typed<int64_t, double>(p, indices, costs, n, m, r2c, up, vp, threads, o));
    if (bad >= 0) throw py::value_error("column index at position " + std::to_string(bad) + " is out of range [0, " +
                                        std::to_string(m) + ") (len(v))");
    return out;
}

// suspect_pairs (bounds.hpp): the scan over the rows' columns, its outputs flattened.
py::array_t<double> rank_bounds_py(const py::array& order, const py::array& idx, const py::array& row_bound,
                                   const py::array& col_bound, const py::object& row_offset,
                                   const py::object& col_offset, const py::array& u, const py::array& v,
                                   int threads) {
    const double* rb = require<double>(row_bound, "row_bound", 1);
    const int64_t n = row_bound.shape(0);
    const double* cb = require<double>(col_bound, "col_bound", 1);
    const int64_t m = col_bound.shape(0);
    const int64_t* op = require<int64_t>(order, "order", 1, m);
    const int64_t* ip = require<int64_t>(idx, "idx", 1, n);
    const double* up = require<double>(u, "u", 1, n);
    const double* vp = require<double>(v, "v", 1, m);
    const double* ro = row_offset.is_none() ? nullptr : require<double>(row_offset.cast<py::array>(), "row_offset", 1, n);
    const double* co = col_offset.is_none() ? nullptr : require<double>(col_offset.cast<py::array>(), "col_offset", 1, m);
    for (int64_t k = 0; k < m; ++k)
        if (op[k] < 0 || op[k] >= m) throw py::value_error("order[" + std::to_string(k) + "] is out of range");
    for (int64_t i = 0; i < n; ++i)
        if (ip[i] < 0 || ip[i] > m) throw py::value_error("idx[" + std::to_string(i) + "] is out of range [0, m]");
    py::array_t<double> out(n);
    double* o = out.mutable_data();
    {
        py::gil_scoped_release release;
        rank_bounds(op, ip, n, m, rb, cb, ro, co, up, vp, o, std::max(1, threads));
    }
    return out;
}

py::tuple suspect_pairs_py(const py::array& indptr, const py::array& indices, const py::array& rows, int64_t m,
                           const py::list& families, int64_t limit, int64_t mult, int64_t min_cols, int threads) {
    const int64_t* p = require_indptr(indptr);
    const int64_t n = indptr.shape(0) - 1;
    const bool i32 = is_c_array<int32_t>(indices);
    const void* idx = i32 ? static_cast<const void*>(require<int32_t>(indices, "indices", 1, p[n]))
                          : static_cast<const void*>(require<int64_t>(indices, "indices", 1, p[n]));
    for (int64_t k = 0; k < p[n]; ++k) {
        const int64_t j = i32 ? int64_t(static_cast<const int32_t*>(idx)[k]) : static_cast<const int64_t*>(idx)[k];
        if (j < 0 || j >= m)
            throw py::value_error("column index at position " + std::to_string(k) + " is out of range [0, " +
                                  std::to_string(m) + ")");
    }
    const int64_t nr = rows.ndim() == 1 ? rows.shape(0) : -1;
    const int64_t* r = require<int64_t>(rows, "rows", 1);
    for (int64_t t = 0; t < nr; ++t)
        if (r[t] < 0 || r[t] >= n) throw py::value_error("rows must lie in [0, " + std::to_string(n) + ")");
    if (limit < 0 || mult < 0 || min_cols < 0) throw py::value_error("limit, mult and min_cols must be >= 0");
    std::vector<BoundFamily> fam;
    for (const py::handle& h : families) {
        const py::tuple f = h.cast<py::tuple>();
        if (f.size() != 4) throw py::value_error("each family is (a [n], b [m], p [n] or None, q [m] or None)");
        BoundFamily b{require<double>(f[0].cast<py::array>(), "a", 1, n),
                      require<double>(f[1].cast<py::array>(), "b", 1, m), optional_f64(f[2], "p", n),
                      optional_f64(f[3], "q", m)};
        if ((b.p == nullptr) != (b.q == nullptr)) throw py::value_error("p and q: both arrays or both None");
        fam.push_back(b);
    }
    std::vector<uint8_t> ok;
    std::vector<std::vector<int64_t>> cols;
    std::vector<double> bound;
    {
        py::gil_scoped_release release;
        const int t = std::max(1, threads);
        if (i32)
            suspect_pairs(p, static_cast<const int32_t*>(idx), m, r, nr, fam, limit, mult, min_cols, t, ok, cols, bound);
        else
            suspect_pairs(p, static_cast<const int64_t*>(idx), m, r, nr, fam, limit, mult, min_cols, t, ok, cols, bound);
    }
    int64_t total = 0, settled = 0;
    for (int64_t t = 0; t < nr; ++t)
        if (ok[t]) {
            total += int64_t(cols[t].size());
            ++settled;
        }
    py::array_t<bool> ok_out(nr);
    py::array_t<int64_t> pr(total), pc(total);
    py::array_t<double> bd(settled);
    bool* o = ok_out.mutable_data();
    int64_t* prp = pr.mutable_data();
    int64_t* pcp = pc.mutable_data();
    double* bdp = bd.mutable_data();
    for (int64_t t = 0, at = 0, s = 0; t < nr; ++t) {
        o[t] = ok[t] != 0;
        if (!ok[t]) continue;
        for (int64_t j : cols[t]) {
            prp[at] = r[t];
            pcp[at++] = j;
        }
        bdp[s++] = bound[t];
    }
    return py::make_tuple(ok_out, pr, pc, bd);
}

// Whether the graph's column indices are int32 (else int64, checked), the new columns fitting them.
bool int32_columns(const py::array& indices, const int64_t* c, int64_t q) {
    const bool i32 = is_c_array<int32_t>(indices);
    if (!i32) require<int64_t>(indices, "indices", 1);
    if (i32)
        for (int64_t t = 0; t < q; ++t)
            if (c[t] > INT32_MAX) throw py::value_error("column " + std::to_string(c[t]) + " does not fit int32 indices");
    return i32;
}

template <class I, class T>
int64_t csr_insert_inplace_typed(int64_t* p, const py::array& indices, const py::array& costs, int64_t n,
                                 const int64_t* r, const int64_t* c, const py::array& new_costs, int64_t q,
                                 int threads) {
    const T* w = require<T>(new_costs, "new_costs", 1, q);
    if (!is_c_array<T>(costs)) throw py::value_error("costs and new_costs must have one dtype");
    I* ix = static_cast<I*>(const_cast<void*>(indices.data()));
    T* cs = static_cast<T*>(const_cast<void*>(costs.data()));
    py::gil_scoped_release release;
    return csr_insert_inplace(p, ix, cs, n, r, c, w, q, std::max(1, threads));
}

int64_t csr_insert_inplace_py(const py::array& indptr, const py::array& indices, const py::array& costs,
                              const py::array& rows, const py::array& cols, const py::array& new_costs, int threads) {
    int64_t n, q;
    const int64_t *r, *c;
    csr_pairs(indptr, rows, cols, n, r, c, q);
    require<int64_t>(indptr, "indptr", 1, n + 1);
    if (!indptr.writeable() || !indices.writeable() || !costs.writeable())
        throw py::value_error("csr_insert_inplace needs writeable indptr, indices and costs");
    int64_t* p = static_cast<int64_t*>(const_cast<void*>(indptr.data()));
    const int64_t nnz = p[n];
    if (indices.ndim() != 1 || costs.ndim() != 1 || indices.shape(0) < nnz + q || costs.shape(0) < nnz + q)
        throw py::value_error("indices and costs must have room for indptr[-1] + len(rows) = " +
                              std::to_string(nnz + q) + " arcs");
    const bool i32 = int32_columns(indices, c, q);
    if (is_c_array<float>(costs))
        return i32 ? csr_insert_inplace_typed<int32_t, float>(p, indices, costs, n, r, c, new_costs, q, threads)
                   : csr_insert_inplace_typed<int64_t, float>(p, indices, costs, n, r, c, new_costs, q, threads);
    return i32 ? csr_insert_inplace_typed<int32_t, double>(p, indices, costs, n, r, c, new_costs, q, threads)
               : csr_insert_inplace_typed<int64_t, double>(p, indices, costs, n, r, c, new_costs, q, threads);
}

template <class I, class T>
int64_t csr_insert_into_typed(const py::array& indptr, const py::array& indices, const py::array& costs, int64_t n,
                              const int64_t* r, const int64_t* c, const py::array& new_costs, int64_t q,
                              const py::array& out_indptr, const py::array& out_indices, const py::array& out_costs,
                              int threads) {
    const T* w = require<T>(new_costs, "new_costs", 1, q);
    if (!is_c_array<T>(costs) || !is_c_array<T>(out_costs))
        throw py::value_error("costs, new_costs and out_costs must have one dtype");
    if (!is_c_array<I>(out_indices)) throw py::value_error("indices and out_indices must have one dtype");
    const int64_t* p = static_cast<const int64_t*>(indptr.data());
    const I* ix = static_cast<const I*>(indices.data());
    const T* cs = static_cast<const T*>(costs.data());
    int64_t* op = static_cast<int64_t*>(const_cast<void*>(out_indptr.data()));
    I* oix = static_cast<I*>(const_cast<void*>(out_indices.data()));
    T* ocs = static_cast<T*>(const_cast<void*>(out_costs.data()));
    py::gil_scoped_release release;
    return csr_insert_into(p, ix, cs, n, r, c, w, q, op, oix, ocs, std::max(1, threads));
}

int64_t csr_insert_into_py(const py::array& indptr, const py::array& indices, const py::array& costs,
                           const py::array& rows, const py::array& cols, const py::array& new_costs,
                           const py::array& out_indptr, const py::array& out_indices, const py::array& out_costs,
                           int threads) {
    int64_t n, q;
    const int64_t *r, *c;
    csr_pairs(indptr, rows, cols, n, r, c, q);
    const int64_t nnz = require<int64_t>(indptr, "indptr", 1, n + 1)[n];
    require<int64_t>(out_indptr, "out_indptr", 1, n + 1);
    if (!out_indptr.writeable() || !out_indices.writeable() || !out_costs.writeable())
        throw py::value_error("csr_insert_into needs writeable out_indptr, out_indices and out_costs");
    if (indices.ndim() != 1 || costs.ndim() != 1 || indices.shape(0) < nnz || costs.shape(0) < nnz)
        throw py::value_error("indices and costs must hold indptr[-1] = " + std::to_string(nnz) + " arcs");
    if (out_indices.ndim() != 1 || out_costs.ndim() != 1 || out_indices.shape(0) < nnz + q ||
        out_costs.shape(0) < nnz + q)
        throw py::value_error("out_indices and out_costs must have room for indptr[-1] + len(rows) = " +
                              std::to_string(nnz + q) + " arcs");
    auto overlaps = [](const py::array& a, const py::array& b) {
        const char* a0 = static_cast<const char*>(a.data());
        const char* b0 = static_cast<const char*>(b.data());
        return a0 < b0 + b.nbytes() && b0 < a0 + a.nbytes();
    };
    if (overlaps(indices, out_indices) || overlaps(costs, out_costs) || overlaps(indptr, out_indptr))
        throw py::value_error("csr_insert_into writes other arrays than it reads (see csr_insert_inplace)");
    const bool i32 = int32_columns(indices, c, q);
    if (is_c_array<float>(costs))
        return i32 ? csr_insert_into_typed<int32_t, float>(indptr, indices, costs, n, r, c, new_costs, q, out_indptr,
                                                           out_indices, out_costs, threads)
                   : csr_insert_into_typed<int64_t, float>(indptr, indices, costs, n, r, c, new_costs, q, out_indptr,
                                                           out_indices, out_costs, threads);
    return i32 ? csr_insert_into_typed<int32_t, double>(indptr, indices, costs, n, r, c, new_costs, q, out_indptr,
                                                        out_indices, out_costs, threads)
               : csr_insert_into_typed<int64_t, double>(indptr, indices, costs, n, r, c, new_costs, q, out_indptr,
                                                        out_indices, out_costs, threads);
}

// A selection's state (vals [owners, k] float32, idx [owners, k] int64, extra or None), checked.
TopKHeaps topk_heaps(const py::object& o, const char* name, int64_t min_owners) {
    TopKHeaps h;
    if (o.is_none()) return h;
    const py::tuple t = o.cast<py::tuple>();
    if (t.size() != 3) throw py::value_error(std::string(name) + " must be (vals, idx, extra or None)");
    py::array vals = t[0].cast<py::array>(), idx = t[1].cast<py::array>();
    require<float>(vals, name, 2);
    require<int64_t>(idx, name, 2, vals.shape(0));
    if (!vals.writeable() || !idx.writeable()) throw py::value_error(std::string(name) + " must be writeable");
    h.k = vals.shape(1);
    if (idx.shape(1) != h.k || vals.shape(0) < min_owners)
        throw py::value_error(std::string(name) + ": state of " + std::to_string(vals.shape(0)) + " x " +
                              std::to_string(h.k) + " does not cover the tile");
    h.vals = static_cast<float*>(vals.mutable_data());
    h.idx = static_cast<int64_t*>(idx.mutable_data());
    if (!t[2].is_none()) {
        py::array extra = t[2].cast<py::array>();
        require<float>(extra, name, 2, vals.shape(0));
        if (extra.shape(1) != h.k || !extra.writeable()) throw py::value_error(std::string(name) + ": bad extra");
        h.extra = static_cast<float*>(extra.mutable_data());
    }
    return h;
}

void topk_tile_py(const py::array& tile, const py::object& cos_obj, int64_t r0, int64_t c0, const py::object& rows_c,
                  const py::object& cols_c, const py::object& rows_s, const py::object& cols_s, int threads,
                  const py::object& cos_factors) {
    if (tile.ndim() != 2 || !py::isinstance<py::array_t<float>>(tile))
        throw py::value_error("tile must be a 2-D float32 array, got " + dtype_name(tile));
    const int64_t n = tile.shape(0), m = tile.shape(1);
    if (tile.strides(1) != int64_t(sizeof(float)) || tile.strides(0) % int64_t(sizeof(float)) != 0 ||
        tile.strides(0) < m * int64_t(sizeof(float)))
        throw py::value_error("tile must have unit-stride rows");
    const int64_t ld = tile.strides(0) / int64_t(sizeof(float));
    const float* cos = nullptr;
    if (!cos_obj.is_none()) {
        const py::array c = cos_obj.cast<py::array>();
        cos = require<float>(c, "cos", 2, n);
        if (c.shape(1) != m) throw py::value_error("cos must have the tile's shape");
    }
    CosFactors cf;
    py::tuple factors;
    if (!cos_factors.is_none()) {
        if (cos != nullptr) throw py::value_error("give cos or cos_factors, not both");
        factors = cos_factors.cast<py::tuple>();
        if (factors.size() != 4) throw py::value_error("cos_factors must be (na, nb, half_inv_a, inv_b)");
        const int64_t want[4] = {n, m, n, m};
        const char* names[4] = {"cos_factors na", "cos_factors nb", "cos_factors half_inv_a", "cos_factors inv_b"};
        const float* p[4];
        for (int t = 0; t < 4; ++t) p[t] = require<float>(factors[t].cast<py::array>(), names[t], 1, want[t]);
        cf = CosFactors{p[0], p[1], p[2], p[3]};
    }
    if (r0 < 0 || c0 < 0) throw py::value_error("r0 and c0 must be >= 0");
    const TopKHeaps rc = topk_heaps(rows_c, "rows_c", r0 + n), cc = topk_heaps(cols_c, "cols_c", c0 + m);
    const TopKHeaps rs = topk_heaps(rows_s, "rows_s", r0 + n), cs = topk_heaps(cols_s, "cols_s", c0 + m);
    const float* tp = static_cast<const float*>(tile.data());
    py::gil_scoped_release release;
    topk_tile(tp, ld, cos, n, m, r0, c0, rc, cc, rs, cs, std::max(1, threads), cos_factors.is_none() ? nullptr : &cf);
}

void topk_finish_py(const py::object& heaps, int threads) {
    const TopKHeaps h = topk_heaps(heaps, "heaps", 0);
    if (h.k == 0) return;
    const int64_t owners = heaps.cast<py::tuple>()[0].cast<py::array>().shape(0);
    py::gil_scoped_release release;
    topk_finish(h, owners, std::max(1, threads));
}

ScreenKind screen_kind(const std::string& kind) {
    if (kind == "bf16") return ScreenKind::kBf16;
    if (kind == "int8") return ScreenKind::kInt8;
    throw py::value_error("kind must be 'bf16' or 'int8', got '" + kind + "'");
}

ScreenB make_screen_b(const py::array& b, const py::array& nb, int threads, const py::object& scale) {
    if (b.ndim() == 2 && py::isinstance<py::array_t<int8_t>>(b)) {
        const int8_t* q = require<int8_t>(b, "b", 2);
        const int64_t m = b.shape(0), d = b.shape(1);
        if (d % 4 != 0 || d > 65536)  // wider rows would overflow the kernel's int32 sums
            throw py::value_error("int8 rows b must have a width that is a multiple of 4 and at most 65536, got " +
                                  std::to_string(d));
        if (scale.is_none()) throw py::value_error("int8 rows b need their scales (scale=)");
        const float* sp = require<float>(scale.cast<py::array>(), "scale", 1, m);
        const float* nbp = require<float>(nb, "nb", 1, m);
        py::gil_scoped_release release;
        return ScreenB(q, sp, m, d, nbp, std::max(1, threads));
    }
    if (!scale.is_none()) throw py::value_error("scale= goes with int8 rows; b must then have dtype int8");
    const uint16_t* b16 = require<uint16_t>(b, "b", 2);
    const int64_t m = b.shape(0), d = b.shape(1);
    const float* nbp = require<float>(nb, "nb", 1, m);
    py::gil_scoped_release release;
    return ScreenB(b16, m, d, nbp, std::max(1, threads));
}

// A's rows in the ScreenB's kind: bf16 bits (uint16), or int8 codes with their scales.
ScreenRows screen_rows(const ScreenB& sb, const py::array& a, const py::object& a_scale) {
    ScreenRows rows;
    if (sb.kind() == ScreenKind::kInt8) {
        rows.int8 = require<int8_t>(a, "a (int8 codes, like B's)", 2);
        if (a_scale.is_none()) throw py::value_error("int8 rows a need their scales (a_scale=)");
        rows.scale = require<float>(a_scale.cast<py::array>(), "a_scale", 1, a.shape(0));
    } else {
        rows.bf16 = require<uint16_t>(a, "a (bf16 bits, like B's)", 2);
        if (!a_scale.is_none()) throw py::value_error("a_scale goes with int8 rows; this ScreenB holds bf16 rows");
    }
    if (a.shape(1) != sb.d())
        throw py::value_error("a must have width " + std::to_string(sb.d()) + " like B, got " +
                              std::to_string(a.shape(1)));
    return rows;
}

py::array screen_b_costs(const ScreenB& sb, const py::array& a16, const py::array& na, int threads,
                         const py::object& out_obj, int64_t c0, int64_t c1, const py::object& a_scale) {
    const ScreenRows a = screen_rows(sb, a16, a_scale);
    if (c1 < 0) c1 = sb.m();
    if (c0 < 0 || c0 % ScreenB::kColumnAlign != 0 || c1 > sb.m() || c1 < c0)
        throw py::value_error("columns [" + std::to_string(c0) + ", " + std::to_string(c1) +
                              ") must lie in [0, " + std::to_string(sb.m()) + ") and start at a multiple of " +
                              std::to_string(ScreenB::kColumnAlign));
    const int64_t n = a16.shape(0), m = c1 - c0;
    const float* nap = require<float>(na, "na", 1, n);
    py::array out = out_obj.is_none() ? py::array(py::array_t<float>({n, m})) : out_obj.cast<py::array>();
    require<float>(out, "out", 2, n);
    if (out.shape(1) != m || !out.writeable())
        throw py::value_error("out must be a writeable float32 [" + std::to_string(n) + ", " +
                              std::to_string(m) + "] array");
    float* o = static_cast<float*>(out.mutable_data());
    {
        py::gil_scoped_release release;
        sb.costs(a, n, nap, o, std::max(1, threads), c0, c1);
    }
    return out;
}

py::tuple screen_b_price(const ScreenB& sb, const py::array& a16, const py::array& na,
                         const py::array& a_stats, const py::array& b_stats, double gamma,
                         double abs_slack, const py::array& u, const py::array& v, int64_t q,
                         int threads, const py::object& a_scale) {
    const ScreenRows a = screen_rows(sb, a16, a_scale);
    const int64_t n = a16.shape(0), m = sb.m();
    if (q < 1) throw py::value_error("q must be >= 1, got " + std::to_string(q));
    const float* nap = require<float>(na, "na", 1, n);
    const ScreenSide sa = side_stats(a_stats, "a_stats", n), sbs = side_stats(b_stats, "b_stats", m);
    const double* up = require<double>(u, "u", 1, n);
    const double* vp = require<double>(v, "v", 1, m);
    const int64_t qq = std::min(q, m);
    py::array_t<int64_t> cols({n, qq});
    py::array_t<double> bound(n);
    int64_t* c = cols.mutable_data();
    double* bd = bound.mutable_data();
    {
        py::gil_scoped_release release;
        screen_price(sb, a, n, nap, sa, sbs, gamma, abs_slack, up, vp, q, std::max(1, threads), c, bd);
    }
    return py::make_tuple(cols, bound);
}
}  // namespace

PYBIND11_MODULE(_auction, m) {
    m.doc() = "mechperm native assignment solver (auction algorithm, C++17).";
    py::register_exception<Infeasible>(m, "InfeasibleError", PyExc_ValueError);
    m.def("build_info", &mechperm::build_info,
          "How the native core was compiled: version, C++ standard, compiler, optimisation.");
    m.def("solve_dense", &solve_dense_py, py::arg("cost"), py::arg("unmatched_cost") = py::none(),
          py::arg("init_v") = py::none(), py::arg("init_row_to_col") = py::none(),
          py::arg("eps_start") = 0.0,
          py::arg("eps_final") = 0.0, py::arg("eps_factor") = 0.0, py::arg("sap_budget") = 1.0, py::arg("threads") = 1,
          py::arg("scan_ahead") = py::none(),
          "Min-cost assignment of every row of a dense [n, m] float32/float64 array (n <= m). scan_ahead "
          "(threads > 1): auction scans on the threads ahead of their bids, the same solve (None: "
          "MECHPERM_SCAN_AHEAD=1).");
    m.def("solve_sparse", &solve_sparse_py, py::arg("indptr"), py::arg("indices"),
          py::arg("costs"), py::arg("n"), py::arg("m"), py::arg("unmatched_cost") = py::none(),
          py::arg("init_v") = py::none(), py::arg("init_row_to_col") = py::none(),
          py::arg("eps_start") = 0.0,
          py::arg("eps_final") = 0.0, py::arg("eps_factor") = 0.0,
          py::arg("check_feasible") = true, py::arg("sap_budget") = 1.0, py::arg("threads") = 1,
          py::arg("changed_rows") = py::none(), py::arg("check_arcs") = true, py::arg("scan_ahead") = py::none(),
          "Min-cost assignment of every row of a CSR graph (int64 indptr, int32/int64 indices, "
          "float32/float64 costs). changed_rows (warm starts with eps_start <= 0): the rows whose arcs "
          "changed since the solve that gave init_v and init_row_to_col (default: all). check_arcs=False "
          "skips the column-range and finite-cost checks of every arc (a caller that checked them). "
          "check_feasible='lazy': the maximum matching only before an auction phase (shortest augmenting "
          "paths that finish prove the graph feasible, or infeasible where a row has none). scan_ahead: as in "
          "solve_dense.");
    m.def("max_matching", &max_matching_py, py::arg("indptr"), py::arg("indices"), py::arg("n"),
          py::arg("m"), py::arg("costs") = py::none(),
          "Maximum bipartite matching (Hopcroft-Karp): (size, row_to_col). costs (float32/float64, "
          "one per arc): the greedy start takes each row's cheapest free column.");
    m.def("dense_candidates", &dense_candidates_py, py::arg("cost"), py::arg("k_row"),
          py::arg("k_col"),
          "Candidate CSR graph of a dense array with the bounds on every pair left out.");
    m.def("argsort", &argsort_py, py::arg("x"), py::arg("threads") = 1,
          "np.argsort(x, kind='stable') of float64 x (NaN last, ties by index), sorted on threads.");
    m.def("searchsorted", &searchsorted_py, py::arg("sorted"), py::arg("queries"), py::arg("threads") = 1,
          "np.searchsorted(sorted, queries, side='left') of float64 arrays (NaN last), on threads.");
    m.attr("ENVELOPE_WALK_MAX_QUERIES") = kWalkMaxQueries;  // by_query used (and checked) up to this
    m.def("envelope_min", &envelope_min_py, py::arg("w"), py::arg("x"), py::arg("s"),
          py::arg("by_slope") = py::none(), py::arg("threads") = 1, py::arg("by_query") = py::none(),
          "out[q] = min_j (w[j] - x[j] * s[q]) (lower envelope of lines; O((m + q) log m)); by_slope / "
          "by_query: argsort of x / of s, reused across calls with the same x / s (by_query used and "
          "checked up to ENVELOPE_WALK_MAX_QUERIES queries); threads: for the hull's blocks and "
          "the queries.");
    m.def("dense_margins", &dense_margins_py, py::arg("cost"), py::arg("row_to_col"), py::arg("u"),
          py::arg("v"),
          "Per row, min over the other columns of c_ij - u_i - v_j (NaN where row_to_col = -1).");
    m.def("dense_price", &dense_price_py, py::arg("cost"), py::arg("rows"), py::arg("u"),
          py::arg("v"), py::arg("tol"), py::arg("max_per_row") = 0,
          "Pairs of the given rows with reduced cost < -tol: (rows, cols, costs, row_min).");
    py::class_<CandidateBuilder>(m, "CandidateBuilder",
                                 "Candidate graph from streamed row tiles of a cost matrix.")
        .def(py::init(&make_builder), py::arg("n"), py::arg("m"), py::arg("k_row"),
             py::arg("k_col"), py::arg("col_offset"), py::arg("row_offset"))
        .def("add", &builder_add, py::arg("tile"), py::arg("r0"),
             "Offer rows r0 .. r0+len(tile)-1 (C-contiguous float32/float64 [rows, m]).")
        .def("finish", &builder_finish, py::arg("diagonal") = true,
             "The CSR graph and bounds as a dict (indptr, indices, costs, row_bound, ...).");
    m.def("screen_side", &screen_side_py, py::arg("x"), py::arg("sq_norm"), py::arg("threads") = 1,
          "bf16 bits [F, D'] (even D'), stats [4, F] (|x~|, |x~ - x|, |x|, sq_norm) and the first "
          "non-finite row or -1.");
    m.def("screen_side_int8", &screen_side_int8_py, py::arg("x"), py::arg("sq_norm"), py::arg("threads") = 1,
          "int8 codes [F, D'] (D' a multiple of 4), scales [F] (x~ = scale * codes), stats [4, F] (|x~|, "
          "|x~ - x|, |x|, sq_norm) and the first non-finite row or -1.");
    m.def("topk_tile", &topk_tile_py, py::arg("tile"), py::arg("cos"), py::arg("r0"), py::arg("c0"),
          py::arg("rows_c"), py::arg("cols_c"), py::arg("rows_s"), py::arg("cols_s"), py::arg("threads") = 1,
          py::arg("cos_factors") = py::none(),
          "Offer a cost tile (and -cosine tile, or the factors (na, nb, half_inv_a, inv_b) [tile rows / columns] "
          "that make -cosines of the costs, ((c - na) - nb) * half_inv_a * inv_b) to running top-k heaps "
          "(csrc/topk.hpp).");
    m.def("topk_finish", &topk_finish_py, py::arg("heaps"), py::arg("threads") = 1,
          "Sort each owner's heap ascending by (value, index).");
    m.def("csr_find", &csr_find_py, py::arg("indptr"), py::arg("indices"), py::arg("rows"), py::arg("cols"),
          py::arg("threads") = 1,
          "Position of each pair (rows[t], cols[t]) among the arcs of a CSR graph sorted by column within rows "
          "(-1: not an arc); blocks of pairs on `threads` threads.");
    m.def("csr_insert_inplace", &csr_insert_inplace_py, py::arg("indptr"), py::arg("indices"), py::arg("costs"),
          py::arg("rows"), py::arg("cols"), py::arg("new_costs"), py::arg("threads") = 1,
          "Add the arcs not in a column-sorted CSR graph yet (the first of duplicates), in place: indices and costs hold indptr[-1] arcs and room for len(rows) more; indptr is "
          "updated; returns the number of arcs added. The new arcs are sorted and checked on `threads` threads.");
    m.def("csr_insert_into", &csr_insert_into_py, py::arg("indptr"), py::arg("indices"), py::arg("costs"),
          py::arg("rows"), py::arg("cols"), py::arg("new_costs"), py::arg("out_indptr"), py::arg("out_indices"),
          py::arg("out_costs"), py::arg("threads") = 1,
          "csr_insert_inplace into other arrays (out_indptr [n + 1]; out_indices and out_costs with room for "
          "indptr[-1] + len(rows) arcs), rows merged on `threads` threads; returns the number of arcs added.");
    m.def("union_sorted_keys", &union_sorted_keys_py, py::arg("keys"), py::arg("pos_bits"), py::arg("n"),
          py::arg("m"), py::arg("costs"),
          "The candidate graph's union from sorted keys ((row * m + col) * 4 + part) << pos_bits | position: "
          "(indptr [n + 1], cols, costs (of each pair's first copy), sources (OR of 1 << part)).");
    m.def("csr_margins", &csr_margins_py, py::arg("indptr"), py::arg("indices"), py::arg("costs"),
          py::arg("row_to_col"), py::arg("u"), py::arg("v"), py::arg("threads") = 1,
          "Per row, max(0, least (c_ij - u_i) - v_j over its arcs but row_to_col[i]) (inf without one; NaN "
          "where row_to_col[i] < 0).");
    m.def("rank_bounds", &rank_bounds_py, py::arg("order"), py::arg("idx"), py::arg("row_bound"),
          py::arg("col_bound"), py::arg("row_offset"), py::arg("col_offset"), py::arg("u"), py::arg("v"),
          py::arg("threads") = 1,
          "The exact loop's rank bound per row (assign._rank_bounds), from the columns in the order of "
          "col_offset - col_bound and each row's place among them: float64 [n].");
    m.def("suspect_pairs", &suspect_pairs_py, py::arg("indptr"), py::arg("indices"), py::arg("rows"), py::arg("m"),
          py::arg("families"), py::arg("limit"), py::arg("mult"), py::arg("min_cols"), py::arg("threads") = 1,
          "Per row of rows, the columns left out of the CSR graph whose largest family bound "
          "a[i] + b[j] - p[i] * q[j] is < 0: where at most limit, the min(left, limit, max(mult * count, "
          "min_cols)) of least bound and the least bound of the others. Returns (ok [len(rows)] bool, "
          "pair rows, pair cols, bound [ok.sum()]).");
    m.def("pair_dots", &pair_dots_py, py::arg("a"), py::arg("b"), py::arg("rows"), py::arg("cols"),
          py::arg("threads") = 1, py::arg("a_scale") = py::none(), py::arg("b_scale") = py::none(),
          py::arg("isa") = -1, py::arg("grouped") = true,
          "float64 dots of the pairs (a[rows[t]], b[cols[t]]) of float32 rows; with a_scale / b_scale "
          "(float32, one per row) of the rows fl32(a_scale[i] * a[i]) and fl32(b_scale[j] * b[j]). The same bits "
          "with every instruction set; isa (tests): 0 scalar, 1 AVX2, 2 AVX-512, -1 the widest this CPU has. "
          "Long lists go in groups of b's rows that fit in a cache; grouped=False (tests, benches): in order.");
    py::class_<ScreenB>(m, "ScreenB",
                        "B's rows (bf16 bits, or int8 codes with scale=) packed once for screened costs and pricing.")
        .def(py::init(&make_screen_b), py::arg("b"), py::arg("nb"), py::arg("threads") = 1,
             py::arg("scale") = py::none())
        .def_property_readonly("m", &ScreenB::m)
        .def_property_readonly("kind", [](const ScreenB& sb) { return sb.kind() == ScreenKind::kInt8 ? "int8" : "bf16"; })
        .def("costs", &screen_b_costs, py::arg("a"), py::arg("na"), py::arg("threads") = 1,
             py::arg("out") = py::none(), py::arg("c0") = 0, py::arg("c1") = -1, py::arg("a_scale") = py::none(),
             "Screened costs [n, c1 - c0] of rows a (B's kind; int8 with a_scale) against columns [c0, c1) "
             "(c0 a multiple of 32; see ScreenB::costs).")
        .def("price", &screen_b_price, py::arg("a"), py::arg("na"), py::arg("a_stats"),
             py::arg("b_stats"), py::arg("gamma"), py::arg("abs_slack"), py::arg("u"), py::arg("v"),
             py::arg("q"), py::arg("threads") = 1, py::arg("a_scale") = py::none(),
             "Per row: the q columns of least lower-bound reduced cost [n, q] and a lower bound on "
             "it over every other column [n].");
    m.def("screen_has_fast_kernel", [](const std::string& kind) { return screen_has_fast_kernel(screen_kind(kind)); },
          py::arg("kind") = "bf16",
          "Whether the screen of this kind ('bf16', 'int8') runs its AVX-512 kernel here (AVX-512 BF16, resp. "
          "VNNI), else a scalar loop.");
    m.def("screen_lower_bounds", &screen_lower_bounds_py, py::arg("cost"), py::arg("a_stats"),
          py::arg("b_stats"), py::arg("gamma"), py::arg("abs_slack"), py::arg("u"), py::arg("v"),
          py::arg("tau"),
          "In place: screened costs -> lower bounds on the exact costs; returns the pairs "
          "(rows, cols) with bound - u_i - v_j < tau.");
#ifdef MECHPERM_VERSION
    m.attr("__version__") = MECHPERM_VERSION;
#endif
}
