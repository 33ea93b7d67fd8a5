// Internal helpers shared by auction.cpp and dense_ops.cpp: interruption polling and the
// vectorised (AVX2, dispatched at run time) row kernels: the dense bid (best and second best of
// c_ij + p_j), the candidate filter, the minima pass and the pricing scan. Not part of the API.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <limits>

#include "auction.hpp"

// MECHPERM_PORTABLE: build the code every other CPU gets (ARM, ...); tests/test_portable_build.py
#if (defined(__GNUC__) || defined(__clang__)) && (defined(__x86_64__) || defined(__i386__)) && \
    !defined(MECHPERM_PORTABLE)
#define MECHPERM_X86_DISPATCH 1
#include <immintrin.h>
#endif

namespace mechperm {
namespace detail {

constexpr double kInf = std::numeric_limits<double>::infinity();

// Counts work (arc scans) and asks the caller whether to stop about once a millisecond, so that
// Ctrl-C is honoured quickly without paying for a poll on every bid.
class Poller {
public:
    explicit Poller(const SolveOptions& opt) : opt_(opt) {}
    bool tick(int64_t work) {
        work_ += work;
        if (work_ < kWorkPerPoll) return stopped_;
        work_ = 0;
        return check();
    }
    bool check() {
        if (stopped_) return true;
        if (opt_.interrupt != nullptr && opt_.interrupt->load(std::memory_order_relaxed))
            stopped_ = true;
        else if (opt_.poll != nullptr && opt_.poll(opt_.poll_ctx))
            stopped_ = true;
        return stopped_;
    }
    bool stopped() const { return stopped_; }

private:
    static constexpr int64_t kWorkPerPoll = int64_t(1) << 20;
    const SolveOptions& opt_;
    int64_t work_ = 0;
    bool stopped_ = false;
};

// Best (smallest) and second best value of a row; j1 is the first column attaining b1, j2 a
// column attaining b2 (-1: none; the vectorised scans set it only when asked, kSecond).
// Prices only rise during an auction phase, so while p[j1] and p[j2] stay where a scan saw
// them, that scan's b1, b2 and j1 stay the row's (the auction's scans ahead rely on it).
struct Best {
    double b1 = kInf;
    double b2 = kInf;
    int64_t j1 = -1;
    int64_t j2 = -1;
    void add(double val, int64_t j) {
        if (val < b2) {
            if (val < b1) {
                b2 = b1;
                j2 = j1;
                b1 = val;
                j1 = j;
            } else {
                b2 = val;
                j2 = j;
            }
        }
    }
    // Merge a summary of columns that all come after (or, on ties, have larger index than) j1
    // (kSecond: and j2; without, the bids' merge as it was, branch-free).
    template <bool kSecond = false>
    void merge(double o1, double o2, int64_t oj, int64_t oj2) {
        if (oj < 0) return;
        if (o1 < b1 || (o1 == b1 && oj < j1) || j1 < 0) {
            if constexpr (kSecond) j2 = b1 < o2 ? j1 : oj2;
            b2 = b1 < o2 ? b1 : o2;
            b1 = o1;
            j1 = oj;
        } else {
            if constexpr (kSecond) j2 = o1 < b2 ? oj : j2;
            b2 = o1 < b2 ? o1 : b2;
        }
    }
};

template <class T>
inline Best scan_row_scalar(const T* c, const double* p, int64_t m) {
    Best b;
    for (int64_t j = 0; j < m; ++j) b.add(double(c[j]) + p[j], j);
    return b;
}

#ifdef MECHPERM_X86_DISPATCH
__attribute__((target("avx2"))) inline __m256d load4(const float* c) {
    return _mm256_cvtps_pd(_mm_loadu_ps(c));
}
__attribute__((target("avx2"))) inline __m256d load4(const double* c) {
    return _mm256_loadu_pd(c);
}

// Two independent accumulator sets of 4 lanes each: per lane, second = min(second, max(best,
// val)), best = min(best, val), and the index of the first strict improvement. Prices: p[j]
// (a dense row) or p[idx[j]] (a sparse row's arcs, see PricesAt), four at a time or one.
// kSecond: also j2 (the scans ahead need it; two blends a vector that the bids spare).
template <bool kSecond, class T, class Prices>
__attribute__((target("avx2"))) Best scan_avx2(const T* c, int64_t m, const Prices& p) {
    const __m256d inf = _mm256_set1_pd(kInf);
    const __m256d step = _mm256_set1_pd(8.0);
    __m256d b1a = inf, b2a = inf, b1b = inf, b2b = inf;
    __m256d ia = _mm256_set1_pd(-1.0), ib = ia, i2a = ia, i2b = ia;
    __m256d ja = _mm256_setr_pd(0, 1, 2, 3), jb = _mm256_setr_pd(4, 5, 6, 7);
    int64_t j = 0;
    for (; j + 8 <= m; j += 8) {
        __m256d va = _mm256_add_pd(load4(c + j), p.four(j));
        __m256d vb = _mm256_add_pd(load4(c + j + 4), p.four(j + 4));
        __m256d lta = _mm256_cmp_pd(va, b1a, _CMP_LT_OQ);
        __m256d ltb = _mm256_cmp_pd(vb, b1b, _CMP_LT_OQ);
        if constexpr (kSecond) {  // the second best's column: the new one's if below b2, the old best's if below b1
            i2a = _mm256_blendv_pd(_mm256_blendv_pd(i2a, ja, _mm256_cmp_pd(va, b2a, _CMP_LT_OQ)), ia, lta);
            i2b = _mm256_blendv_pd(_mm256_blendv_pd(i2b, jb, _mm256_cmp_pd(vb, b2b, _CMP_LT_OQ)), ib, ltb);
        }
        b2a = _mm256_min_pd(b2a, _mm256_max_pd(b1a, va));
        b2b = _mm256_min_pd(b2b, _mm256_max_pd(b1b, vb));
        b1a = _mm256_min_pd(b1a, va);
        b1b = _mm256_min_pd(b1b, vb);
        ia = _mm256_blendv_pd(ia, ja, lta);
        ib = _mm256_blendv_pd(ib, jb, ltb);
        ja = _mm256_add_pd(ja, step);
        jb = _mm256_add_pd(jb, step);
    }
    alignas(32) double B1[8], B2[8], IX[8], I2[8];
    _mm256_store_pd(B1, b1a);
    _mm256_store_pd(B1 + 4, b1b);
    _mm256_store_pd(B2, b2a);
    _mm256_store_pd(B2 + 4, b2b);
    _mm256_store_pd(IX, ia);
    _mm256_store_pd(IX + 4, ib);
    if constexpr (kSecond) {
        _mm256_store_pd(I2, i2a);
        _mm256_store_pd(I2 + 4, i2b);
    }
    Best r;
    for (int l = 0; l < 8; ++l) r.merge<kSecond>(B1[l], B2[l], int64_t(IX[l]), kSecond ? int64_t(I2[l]) : -1);
    for (; j < m; ++j) r.merge<kSecond>(double(c[j]) + p.one(j), kInf, j, -1);
    return r;
}

struct PricesDense {  // a dense row's prices: p[j]
    const double* p;
    __attribute__((target("avx2"))) __m256d four(int64_t j) const { return _mm256_loadu_pd(p + j); }
    double one(int64_t j) const { return p[j]; }
};

// A sparse row's prices p[idx[a]]: bids scan rows of a candidate graph (~200 arcs on
// make_stack's pair at F = 16384, k = 64), where the scalar loop's compares were half of a
// cold solve. Four by scalar loads: on this AMD EPYC VM vgatherdpd kept the scan
// gather-bound (a cold solve 0.55 s against 0.50 s).
template <class I>
struct PricesAt {
    const double* p;
    const I* idx;
    __attribute__((target("avx2"))) __m256d four(int64_t a) const {
        const __m128d lo = _mm_loadh_pd(_mm_load_sd(p + idx[a]), p + idx[a + 1]);
        const __m128d hi = _mm_loadh_pd(_mm_load_sd(p + idx[a + 2]), p + idx[a + 3]);
        return _mm256_insertf128_pd(_mm256_castpd128_pd256(lo), hi, 1);
    }
    double one(int64_t a) const { return p[idx[a]]; }
};
#endif  // MECHPERM_X86_DISPATCH

// lo/hi: running min/max of c[0..m); colmin[j] = min(colmin[j], c[j]) unless colmin is null.
// (The scalar kernel every build has: row_range falls back to it off x86.)
template <class T>
inline void row_range_scalar(const T* c, int64_t m, double* colmin, double& lo, double& hi) {
    double a = lo, b = hi;
    for (int64_t j = 0; j < m; ++j) {
        const double v = double(c[j]);
        a = v < a ? v : a;
        b = v > b ? v : b;
    }
    if (colmin != nullptr)
        for (int64_t j = 0; j < m; ++j) colmin[j] = double(c[j]) < colmin[j] ? double(c[j]) : colmin[j];
    lo = a;
    hi = b;
}

#ifdef MECHPERM_X86_DISPATCH
template <class T>
__attribute__((target("avx2"))) void row_range_avx2(const T* c, int64_t m, double* colmin, double& lo,
                                                     double& hi) {
    __m256d a = _mm256_set1_pd(lo), b = _mm256_set1_pd(hi);
    int64_t j = 0;
    for (; j + 4 <= m; j += 4) {
        const __m256d v = load4(c + j);
        a = _mm256_min_pd(a, v);
        b = _mm256_max_pd(b, v);
        if (colmin != nullptr) _mm256_storeu_pd(colmin + j, _mm256_min_pd(_mm256_loadu_pd(colmin + j), v));
    }
    alignas(32) double A[4], B[4];
    _mm256_store_pd(A, a);
    _mm256_store_pd(B, b);
    for (int l = 0; l < 4; ++l) {
        lo = std::min(lo, A[l]);
        hi = std::max(hi, B[l]);
    }
    if (j < m) row_range_scalar(c + j, m - j, colmin != nullptr ? colmin + j : nullptr, lo, hi);
}

// MECHPERM_NO_SIMD=1 forces the scalar kernels (tests compare both paths).
inline bool cpu_has_avx2() {
    static const bool has =
        __builtin_cpu_supports("avx2") != 0 && std::getenv("MECHPERM_NO_SIMD") == nullptr;
    return has;
}
#endif

// Pricing over a chunk: min of red_j = c_j - ui - v_j, and whether any red_j <= lim (or is
// not finite).
template <class T>
inline bool chunk_reduced_scalar(const T* c, const double* v, double ui, double lim,
                                 int64_t len, double& lo) {
    int hit = 0;
    for (int64_t j = 0; j < len; ++j) {
        const double red = double(c[j]) - ui - v[j];
        lo = red < lo ? red : lo;
        hit |= int(!(red > lim));
    }
    return hit != 0;
}

#ifdef MECHPERM_X86_DISPATCH
template <class T>
__attribute__((target("avx2"))) bool chunk_reduced_avx2(const T* c, const double* v, double ui,
                                                        double lim, int64_t len, double& lo) {
    const __m256d U = _mm256_set1_pd(ui), L = _mm256_set1_pd(lim);
    __m256d mn = _mm256_set1_pd(lo), acc = _mm256_setzero_pd();
    int64_t j = 0;
    for (; j + 4 <= len; j += 4) {
        const __m256d red = _mm256_sub_pd(_mm256_sub_pd(load4(c + j), U), _mm256_loadu_pd(v + j));
        mn = _mm256_min_pd(mn, red);
        acc = _mm256_or_pd(acc, _mm256_cmp_pd(red, L, _CMP_NGT_UQ));
    }
    alignas(32) double M[4];
    _mm256_store_pd(M, mn);
    for (int l = 0; l < 4; ++l) lo = M[l] < lo ? M[l] : lo;
    const bool tail = chunk_reduced_scalar(c + j, v + j, ui, lim, len - j, lo);
    return tail || _mm256_movemask_pd(acc) != 0;
}
#endif

// Calls on_hit(j) for every j that may be a candidate (c_j - a_j <= rlim or c_j - bi <= climit_j
// or c_j not finite); on_hit may lower rlim (passed by reference) and climit.
template <class T, class F>
inline void filter_row_scalar(const T* c, const double* a, const double& rlim, double bi,
                              const double* climit, int64_t m, F&& on_hit) {
    for (int64_t j = 0; j < m; ++j) {
        const double x = double(c[j]);
        if (x - a[j] <= rlim || x - bi <= climit[j] || !(x - x == 0.0)) on_hit(j);
    }
}

// Row minimum of c and running column minima cmin; false if a value is not finite.
template <class T>
inline bool minima_row_scalar(const T* c, int64_t m, double* cmin, double& lo) {
    int bad = 0;
    for (int64_t j = 0; j < m; ++j) {
        const double x = double(c[j]);
        lo = x < lo ? x : lo;
        cmin[j] = x < cmin[j] ? x : cmin[j];
        bad |= int(!(x - x == 0.0));
    }
    return bad == 0;
}

#ifdef MECHPERM_X86_DISPATCH
template <class T, class F>
__attribute__((target("avx2"))) void filter_row_avx2(const T* c, const double* a,
                                                     const double& rlim, double bi,
                                                     const double* climit, int64_t m,
                                                     F&& on_hit) {
    const __m256d B = _mm256_set1_pd(bi);
    __m256d R = _mm256_set1_pd(rlim);
    int64_t j = 0;
    for (; j + 4 <= m; j += 4) {
        const __m256d x = load4(c + j);
        const __m256d y = _mm256_sub_pd(x, _mm256_loadu_pd(a + j));
        const __m256d z = _mm256_sub_pd(x, B);
        const __m256d d = _mm256_sub_pd(x, x);
        __m256d hit = _mm256_cmp_pd(y, R, _CMP_LE_OQ);
        hit = _mm256_or_pd(hit, _mm256_cmp_pd(z, _mm256_loadu_pd(climit + j), _CMP_LE_OQ));
        hit = _mm256_or_pd(hit, _mm256_cmp_pd(d, d, _CMP_UNORD_Q));
        int mask = _mm256_movemask_pd(hit);
        if (mask == 0) continue;
        for (int l = 0; l < 4; ++l)
            if (mask & (1 << l)) on_hit(j + l);
        R = _mm256_set1_pd(rlim);
    }
    filter_row_scalar(c + j, a + j, rlim, bi, climit + j, m - j,
                      [&](int64_t q) { on_hit(j + q); });
}

template <class T>
__attribute__((target("avx2"))) bool minima_row_avx2(const T* c, int64_t m, double* cmin,
                                                     double& lo) {
    __m256d mn = _mm256_set1_pd(lo), bad = _mm256_setzero_pd();
    int64_t j = 0;
    for (; j + 4 <= m; j += 4) {
        const __m256d x = load4(c + j);
        mn = _mm256_min_pd(mn, x);
        _mm256_storeu_pd(cmin + j, _mm256_min_pd(_mm256_loadu_pd(cmin + j), x));
        const __m256d d = _mm256_sub_pd(x, x);
        bad = _mm256_or_pd(bad, _mm256_cmp_pd(d, d, _CMP_UNORD_Q));
    }
    alignas(32) double M[4];
    _mm256_store_pd(M, mn);
    for (int l = 0; l < 4; ++l) lo = M[l] < lo ? M[l] : lo;
    const bool ok = minima_row_scalar(c + j, m - j, cmin + j, lo);
    return ok && _mm256_movemask_pd(bad) == 0;
}
#endif

template <class T, class F>
inline void filter_row(const T* c, const double* a, const double& rlim, double bi,
                       const double* climit, int64_t m, F&& on_hit) {
#ifdef MECHPERM_X86_DISPATCH
    if (cpu_has_avx2()) return filter_row_avx2(c, a, rlim, bi, climit, m, on_hit);
#endif
    filter_row_scalar(c, a, rlim, bi, climit, m, on_hit);
}

template <class T>
inline bool minima_row(const T* c, int64_t m, double* cmin, double& lo) {
#ifdef MECHPERM_X86_DISPATCH
    if (cpu_has_avx2()) return minima_row_avx2(c, m, cmin, lo);
#endif
    return minima_row_scalar(c, m, cmin, lo);
}

template <class T>
inline bool chunk_reduced(const T* c, const double* v, double ui, double lim, int64_t len,
                          double& lo) {
#ifdef MECHPERM_X86_DISPATCH
    if (cpu_has_avx2()) return chunk_reduced_avx2(c, v, ui, lim, len, lo);
#endif
    return chunk_reduced_scalar(c, v, ui, lim, len, lo);
}

template <class T>
inline void row_range(const T* c, int64_t m, double* colmin, double& lo, double& hi) {
#ifdef MECHPERM_X86_DISPATCH
    if (m >= 16 && cpu_has_avx2()) return row_range_avx2(c, m, colmin, lo, hi);
#endif
    row_range_scalar(c, m, colmin, lo, hi);
}

// Best and second best of c[a] + p[idx[a]], a < len (first position on ties): a sparse row's
// bid; j1 is the position a (the caller maps it to its column).
template <bool kSecond = false, class T, class I>
inline Best scan_arcs(const T* c, const I* idx, const double* p, int64_t len) {
#ifdef MECHPERM_X86_DISPATCH
    if (len >= 16 && cpu_has_avx2()) return scan_avx2<kSecond>(c, len, PricesAt<I>{p, idx});
#endif
    Best b;
    for (int64_t a = 0; a < len; ++a) b.add(double(c[a]) + p[idx[a]], a);
    return b;
}

// Best and second best of c[j] + p[j], j < m (first index on ties): the dense bid.
template <bool kSecond = false, class T>
inline Best scan_row(const T* c, const double* p, int64_t m) {
#ifdef MECHPERM_X86_DISPATCH
    if (m >= 16 && cpu_has_avx2()) return scan_avx2<kSecond>(c, m, PricesDense{p});
#endif
    return scan_row_scalar(c, p, m);
}

}  // namespace detail
}  // namespace mechperm
