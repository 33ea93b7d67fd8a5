// Screened squared distances: a bfloat16 or int8 GEMM, and a rigorous bound on how far its
// values can be from the exact costs (mechperm/kernels/screen.py explains the method).
// Plain C++17 on raw buffers; AVX-512 BF16 / VNNI where the CPU has them, scalar loops with the
// same arithmetic otherwise.
#pragma once

#include "parallel.hpp"

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <vector>

namespace mechperm {

// Two roundings of the rows (mechperm/kernels/screen.py): bfloat16 (AVX-512 BF16's dot
// products), or int8 codes times a per-row float32 scale (AVX-512 VNNI's: exact integer dots,
// a looser rounding).
enum class ScreenKind : int { kBf16 = 0, kInt8 = 1 };

// True where the kind's fast kernel runs (x86 with AVX-512 BF16, resp. AVX-512 VNNI);
// MECHPERM_NO_SIMD=1 forces the scalar ones.
bool screen_has_fast_kernel(ScreenKind kind = ScreenKind::kBf16);

// Rows of A as the kernels read them: bf16 bits [n, d], or int8 codes [n, d] and their scales [n].
struct ScreenRows {
    const uint16_t* bf16 = nullptr;
    const int8_t* int8 = nullptr;
    const float* scale = nullptr;
};

// B prepared once for many row blocks: packed panels for the fast kernel, the raw rows for the
// scalar one.
class ScreenB {
public:
    ScreenB(const uint16_t* b16, int64_t m, int64_t d, const float* nb, int threads);
    // int8 codes q [m, d] (d a multiple of 4, entries in [-127, 127]) and scales: rows scale[j] q[j].
    ScreenB(const int8_t* q, const float* scale, int64_t m, int64_t d, const float* nb, int threads);
    // out [n, c1 - c0] = the screened costs of rows a [n, d] (of this ScreenB's kind; bf16
    // subnormal inputs must be zero) against B's columns [c0, c1) (c0 a multiple of
    // kColumnAlign; c1 < 0: m): max(na[i] + nb[j] - 2 s_ij, 0), with s_ij the dot of the bf16
    // rows accumulated in float32 (exact bf16 products), or for int8
    // s_ij = fl(fl(fl(q_i . q_j) * scale_i) * scale_j) (an exact integer dot). Row blocks run on
    // `threads` threads.
    void costs(const ScreenRows& a, int64_t n, const float* na, float* out, int threads, int64_t c0 = 0,
               int64_t c1 = -1) const;
    static constexpr int64_t kColumnAlign = 32;
    int64_t m() const { return m_; }
    int64_t d() const { return d_; }
    ScreenKind kind() const { return kind_; }

private:
    int64_t m_, d_;
    ScreenKind kind_;
    [[maybe_unused]] bool fast_ = false;  // the AVX-512 kernel of the kind (x86 builds only)
    std::vector<uint32_t> packed_;
    std::vector<float> nbp_, nb_;
    std::vector<uint16_t> raw_;
    std::vector<int8_t> raw8_;
    std::vector<float> scale_;      // int8: B's scales (padded to whole panels where packed)
    std::vector<int32_t> corr_;     // int8 packed: 128 * sum_k q[j, k] (the kernel's unsigned A)
};

// The int8 side of the screen from float32 rows x [F, D]: codes q [F, dp] (dp = D rounded up
// to a multiple of 4, padding zero) and scale [F] with scale_i = fl32(max_k |x_ik| / 127) (0, and
// codes 0, below float32's normal range) and q_ik = x_ik / scale_i rounded to nearest; stats as screen_side's with x~ = scale_i q_i.
// Returns the first row with a non-finite value, or -1.
int64_t screen_side_int8(const float* x, int64_t F, int64_t D, int64_t dp, const float* sq_norm, int8_t* q,
                         float* scale, double* stats, int threads);

// One side of the screen from float32 rows x [F, D]: bits [F, dp] (dp = D rounded up to even)
// receives the bf16 rounding of x (round to nearest even, subnormals flushed to zero, padding
// zero); stats [4, F] receives |x~|, |x~ - x|, |x| (float64 sums) and sq_norm[i] as given.
// Returns the first row with a non-finite value or a bf16 overflow, or -1.
int64_t screen_side(const float* x, int64_t F, int64_t D, int64_t dp, const float* sq_norm,
                    uint16_t* bits, double* stats, int threads);

// dots[t] = sum_k a[rows[t], k] b[cols[t], k] in float64 (float32 rows [n, d] and [m, d]); with
// a_scale / b_scale (per row, float32), of the rows fl32(a_scale[i] * a[i]) and likewise b: the
// folded decoder rows, bit for bit, without a folded copy of the decoder. The same bits with
// every instruction set; isa (tests) picks one: 0 scalar, 1 AVX2, 2 AVX-512, -1 the widest.
// Long lists are taken in groups of B's rows that fit in a cache (the same dots); grouped =
// false (tests, benches) takes them in the given order.
void pair_dots(const float* a, const float* b, int64_t d, const int64_t* rows, const int64_t* cols,
               int64_t count, double* dots, int threads = 1, const float* a_scale = nullptr,
               const float* b_scale = nullptr, int isa = -1, bool grouped = true);

// Per-row statistics of one side, float64: |x~| (bf16 row), |x~ - x|, |x|, |x|^2 (as the cost
// kernels compute it, float32).
struct ScreenSide {
    const double* bf16_norm;
    const double* resid_norm;
    const double* norm;
    const double* sq_norm;
};

// In place over the screened costs `c` [n, m]: c_ij <- L_ij, a float32 lower bound on the exact
// cost (the screened value minus its error bound), and returns the pairs (row-major order) with
// L_ij - u_i - v_j < tau: the only ones whose exact cost can matter under duals near (u, v).
// gamma bounds the dot's float32 error relative to |a~||b~| (bf16: d 2^-24 / (1 - d 2^-24);
// int8: the three roundings after the exact integer dot).
void screen_lower_bounds(float* c, int64_t n, int64_t m, const ScreenSide& a, const ScreenSide& b,
                         double gamma, double abs_slack, const double* u, const double* v,
                         double tau, std::vector<int64_t>& rows, std::vector<int64_t>& cols);

// Screened pricing of rows a_rows [n, d] (stats a, duals u of these rows) against B: per row, the
// q columns of least lower-bound reduced cost L_ij - u_i - v_j (cols [n, min(q, m)], any
// order) and bound[i], a lower bound on that reduced cost over every other column (the
// (q+1)-th least; +inf if none): exact costs are needed for the q columns only.
void screen_price(const ScreenB& b, const ScreenRows& a_rows, int64_t n, const float* na, const ScreenSide& a,
                  const ScreenSide& bs, double gamma, double abs_slack, const double* u, const double* v,
                  int64_t q, int threads, int64_t* cols, double* bound);

namespace screen_detail {
// The scalar kernels' loop (both kinds): out[i, j - c0] = max(na[i] + nb[j] - 2 dot(i, j), 0)
// for rows [0, n) and columns [c0, c1), blocks of 64 rows on `threads` threads.
template <class Dot>
void scalar_costs(int64_t n, int64_t c0, int64_t c1, const float* na, const float* nb, float* out, int threads,
                  Dot dot) {
    const int64_t m = c1 - c0;
    constexpr int64_t kRows = 64;
    parallel_blocks((n + kRows - 1) / kRows, threads, [&](int64_t blk) {
        const int64_t i1 = std::min(n, (blk + 1) * kRows);
        for (int64_t i = blk * kRows; i < i1; ++i)
            for (int64_t j = c0; j < c1; ++j) out[i * m + (j - c0)] = std::max(na[i] + nb[j] - 2.0f * dot(i, j), 0.0f);
    });
}

// The sides' loop (both kinds): row(i) for rows [0, F) in blocks of 256 on `threads` threads,
// false for a row that cannot be screened. Returns the first such row, or -1.
template <class Row>
int64_t each_row(int64_t F, int threads, Row row) {
    std::atomic<int64_t> bad{F};
    constexpr int64_t kRows = 256;
    parallel_blocks((F + kRows - 1) / kRows, threads, [&](int64_t blk) {
        const int64_t i1 = std::min(F, (blk + 1) * kRows);
        for (int64_t i = blk * kRows; i < i1; ++i) {
            if (row(i)) continue;
            int64_t cur = bad.load();
            while (i < cur && !bad.compare_exchange_weak(cur, i)) {
            }
        }
    });
    return bad.load() < F ? bad.load() : -1;
}
}  // namespace screen_detail

}  // namespace mechperm
