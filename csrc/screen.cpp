// Screened squared distances (see screen.hpp): the bfloat16 GEMM kernel, the ScreenB of both
// kinds (the int8 kernels in screen_int8.cpp) and the bound and pricing passes.
#include "screen.hpp"

#include "parallel.hpp"
#include "screen_int8.hpp"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <thread>
#include <utility>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) && !defined(MECHPERM_PORTABLE)
#include <immintrin.h>
#define MECHPERM_SCREEN_X86 1
#endif
// AVX-512 / AVX2 clones of the loops the compiler vectorises, picked at load time (an ifunc:
// ELF only, so not on macOS), the plain loop elsewhere.
#if defined(MECHPERM_SCREEN_X86) && defined(__linux__)
#define MECHPERM_SCREEN_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define MECHPERM_SCREEN_CLONES
#endif

namespace mechperm {
namespace {

constexpr int64_t kMC = 64;  // rows per block; a block's bf16 rows stay in L2 across the column panels
#ifdef MECHPERM_SCREEN_X86
constexpr int64_t kMR = 8;   // rows per register tile
constexpr int64_t kNR = 32;  // columns per register tile: two 16-lane float32 vectors
constexpr int64_t kNC = 16;  // panels per column group (512 columns)
#endif
constexpr double kRound = 1e-6;  // covers the float32 roundings on either side of the bound

inline float bf16_value(uint16_t h) {
    const uint32_t x = uint32_t(h) << 16;
    float f;
    std::memcpy(&f, &x, sizeof f);
    return f;
}


// The reference arithmetic: bf16 products are exact in float32, summed in k order.
// Columns [c0, c1) of b16 into out [n, c1 - c0].
void screen_costs_scalar(const uint16_t* a16, int64_t n, const uint16_t* b16, int64_t c0, int64_t c1,
                         int64_t d, const float* na, const float* nb, float* out, int threads) {
    screen_detail::scalar_costs(n, c0, c1, na, nb, out, threads, [&](int64_t i, int64_t j) {
        const uint16_t* a = a16 + i * d;
        const uint16_t* b = b16 + j * d;
        float s = 0.0f;
        for (int64_t k = 0; k < d; ++k) s += bf16_value(a[k]) * bf16_value(b[k]);
        return s;
    });
}

#ifdef MECHPERM_SCREEN_X86
// One kMR x kNR tile over all of k: rows a[r] (bf16 pairs as 32-bit words), panel bp (word kk
// of the panel's kNR columns at bp[kk * kNR]), then out = max(na + nb - 2 s, 0) for the tile's
// `rows` x `cols` valid entries.
__attribute__((target("avx512f,avx512bf16"))) void tile_avx512(
    const uint32_t* const* a, const uint32_t* bp, int64_t dw, const float* na, const float* nbp,
    float* out, int64_t ldo, int64_t rows, int64_t cols) {
    __m512 acc[kMR][2];
    for (int r = 0; r < kMR; ++r) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
    for (int64_t kk = 0; kk < dw; ++kk) {
        const __m512bh b0 = (__m512bh)_mm512_loadu_si512(bp + kk * kNR);
        const __m512bh b1 = (__m512bh)_mm512_loadu_si512(bp + kk * kNR + 16);
#pragma GCC unroll 8
        for (int r = 0; r < kMR; ++r) {
            const __m512bh x = (__m512bh)_mm512_set1_epi32(int(a[r][kk]));
            acc[r][0] = _mm512_dpbf16_ps(acc[r][0], x, b0);
            acc[r][1] = _mm512_dpbf16_ps(acc[r][1], x, b1);
        }
    }
    const __m512 nb0 = _mm512_loadu_ps(nbp), nb1 = _mm512_loadu_ps(nbp + 16);
    const __m512 two = _mm512_set1_ps(2.0f), zero = _mm512_setzero_ps();
    const __mmask16 m0 = cols >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << cols) - 1u);
    const __mmask16 m1 = cols >= 32 ? __mmask16(0xFFFF) : cols <= 16 ? __mmask16(0) : __mmask16((1u << (cols - 16)) - 1u);
    for (int64_t r = 0; r < rows; ++r) {
        const __m512 ni = _mm512_set1_ps(na[r]);
        const __m512 v0 = _mm512_max_ps(_mm512_sub_ps(_mm512_add_ps(ni, nb0), _mm512_mul_ps(two, acc[r][0])), zero);
        const __m512 v1 = _mm512_max_ps(_mm512_sub_ps(_mm512_add_ps(ni, nb1), _mm512_mul_ps(two, acc[r][1])), zero);
        _mm512_mask_storeu_ps(out + r * ldo, m0, v0);
        _mm512_mask_storeu_ps(out + r * ldo + 16, m1, v1);
    }
}

// B packed panel by panel: word kk of the panel's kNR columns contiguous (zero padding).
void pack_panels(const uint16_t* b16, int64_t m, int64_t d, const float* nb, std::vector<uint32_t>& bp,
                 std::vector<float>& nbp, int threads) {
    const int64_t dw = d / 2, panels = (m + kNR - 1) / kNR;
    bp.assign(size_t(panels * dw * kNR), 0u);
    nbp.assign(size_t(panels * kNR), 0.0f);
    parallel_blocks(panels, threads, [&](int64_t p) {
        uint32_t* dst = bp.data() + p * dw * kNR;
        for (int64_t jj = 0; jj < kNR && p * kNR + jj < m; ++jj) {
            const int64_t j = p * kNR + jj;
            const uint32_t* src = reinterpret_cast<const uint32_t*>(b16 + j * d);
            for (int64_t kk = 0; kk < dw; ++kk) dst[kk * kNR + jj] = src[kk];
            nbp[size_t(j)] = nb[j];
        }
    });
}

// Columns [c0, c1) (c0 a multiple of kNR) into out [n, c1 - c0].
void screen_costs_avx512(const uint16_t* a16, int64_t n, const uint32_t* bp, const float* nbp, int64_t c0,
                         int64_t c1, int64_t d, const float* na, float* out, int threads) {
    const int64_t dw = d / 2, m = c1 - c0, p0 = c0 / kNR;
    const int64_t panels = (m + kNR - 1) / kNR;
    const std::vector<uint32_t> zero_row(size_t(std::max<int64_t>(dw, 1)), 0u);
    // Column groups of kNC panels (2.4 MB of packed B at D = 2304: stays in L3) outermost, so
    // that B streams from memory once; every row block of a group reads its panels from L3.
    const int64_t row_blocks = (n + kMC - 1) / kMC, groups = (panels + kNC - 1) / kNC;
    parallel_blocks(groups * row_blocks, threads, [&](int64_t task) {
        const int64_t grp = task / row_blocks, blk = task % row_blocks;
        const int64_t i0 = blk * kMC, i1 = std::min(n, i0 + kMC);
        const uint32_t* rows[kMR];
        for (int64_t p = grp * kNC; p < std::min(panels, (grp + 1) * kNC); ++p) {
            const int64_t j0 = p * kNR, cols = std::min(kNR, m - j0);  // j0: local to the range
            for (int64_t i = i0; i < i1; i += kMR) {
                const int64_t nr = std::min(kMR, i1 - i);
                for (int64_t r = 0; r < kMR; ++r)
                    rows[r] = r < nr ? reinterpret_cast<const uint32_t*>(a16 + (i + r) * d) : zero_row.data();
                tile_avx512(rows, bp + (p0 + p) * dw * kNR, dw, na + i, nbp + c0 + j0, out + i * m + j0, m, nr,
                            cols);
            }
        }
    });
}
#endif

// One row of the bound pass (vectorised by the compiler for the CPU it runs on).
MECHPERM_SCREEN_CLONES void lower_bound_row(
    float* c, int64_t m, double P, double Q, double R, double S, double K, const double* X,
    const double* Y, const double* Z, const double* T, const double* W) {
    // (float)(x * (1 - 2^-22)) <= x for x >= 0: the stored bound never rounds up.
    constexpr double kDown = 1.0 - 0x1p-22;
    for (int64_t j = 0; j < m; ++j) {
        const double e = P * X[j] + Q * Y[j] + R * Z[j] + S * T[j] + W[j] + K;
        const double lo = double(c[j]) - e;
        c[j] = float((lo > 0.0 ? lo : 0.0) * kDown);
    }
}

}  // namespace

int64_t screen_side(const float* x, int64_t F, int64_t D, int64_t dp, const float* sq_norm,
                    uint16_t* bits, double* stats, int threads) {
    return screen_detail::each_row(F, threads, [&](int64_t i) {
        const float* r = x + i * D;
        uint16_t* o = bits + i * dp;
        double s16 = 0.0, sres = 0.0, sx = 0.0;
        bool finite = true;
        for (int64_t k = 0; k < D; ++k) {
            uint32_t u;
            std::memcpy(&u, &r[k], sizeof u);
            // round to nearest even on the upper 16 bits (finite inputs)
            uint32_t h = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
            if ((h & 0x7F80u) == 0) h &= 0x8000u;  // bf16 subnormal: AVX-512 BF16 reads 0
            if ((h & 0x7F80u) == 0x7F80u || !std::isfinite(r[k])) finite = false;
            o[k] = uint16_t(h);
            const double xv = double(r[k]), hv = double(bf16_value(uint16_t(h)));
            s16 += hv * hv;
            sres += (hv - xv) * (hv - xv);
            sx += xv * xv;
        }
        for (int64_t k = D; k < dp; ++k) o[k] = 0;
        // float64 sums of float32 squares: relative error < D 2^-53 (D < 2^17); round the norms up
        constexpr double kUp = 1.0 + 0x1p-36;
        stats[i] = std::sqrt(s16) * kUp;
        stats[F + i] = std::sqrt(sres) * kUp;
        stats[2 * F + i] = std::sqrt(sx) * kUp;
        stats[3 * F + i] = double(sq_norm[i]);
        return finite;
    });
}

namespace {

// One pair's dot: 32 partial sums, lane l summing the elements l, l + 32, ... in order, then
// the lanes added in a fixed order, so the scalar, AVX2 and AVX-512 versions give the same bits
// (products of floats are exact in double: FMA or not changes nothing). Four lanes in one chain
// were bound by the FMA latency (0.58 us a pair at d = 2304, rows in cache); sixteen in two
// AVX-512 chains, by the chains and the float32 halves' extraction (0.51-0.61 us a pair, B's row
// in L2); 32 in four chains, each fed by a 256-bit load converted whole: 0.29-0.39 us (ad hoc).
// Scaled rows are rounded as they are read: float32 products, as the materialised rows were made.
constexpr int kDotLanes = 32;

inline double dot_finish(double* acc, const float* x, const float* y, int64_t k, int64_t d, float sx, float sy,
                         bool scaled) {
    for (int l = 0; k + l < d; ++l) {
        const float xf = scaled ? x[k + l] * sx : x[k + l];
        const float yf = scaled ? y[k + l] * sy : y[k + l];
        acc[l] += double(xf) * double(yf);
    }
    double s16[16], s8[8];
    for (int l = 0; l < 16; ++l) s16[l] = acc[l] + acc[l + 16];
    for (int l = 0; l < 8; ++l) s8[l] = s16[l] + s16[l + 8];
    return ((s8[0] + s8[4]) + (s8[2] + s8[6])) + ((s8[1] + s8[5]) + (s8[3] + s8[7]));
}

template <bool kScaled>
double dot_scalar(const float* x, const float* y, int64_t d, float sx, float sy, const char*) {
    double acc[kDotLanes] = {};
    int64_t k = 0;
    for (; k + kDotLanes <= d; k += kDotLanes)
        for (int l = 0; l < kDotLanes; ++l) {
            const float xf = kScaled ? x[k + l] * sx : x[k + l];
            const float yf = kScaled ? y[k + l] * sy : y[k + l];
            acc[l] += double(xf) * double(yf);
        }
    return dot_finish(acc, x, y, k, d, sx, sy, kScaled);
}

#ifdef MECHPERM_SCREEN_X86
template <bool kScaled>
__attribute__((target("avx2,fma"))) double dot_avx2(const float* x, const float* y, int64_t d, float sx, float sy,
                                                    const char* y_next) {
    __m256d acc[8];
    for (auto& a : acc) a = _mm256_setzero_pd();
    const __m256 vx = _mm256_set1_ps(sx), vy = _mm256_set1_ps(sy);
    int64_t k = 0;
    for (; k + kDotLanes <= d; k += kDotLanes) {
        // the next pair's row of B, fetched while this one is summed (its rows are random)
        __builtin_prefetch(y_next + k * sizeof(float));
        __builtin_prefetch(y_next + (k + 16) * sizeof(float));
        for (int h = 0; h < 4; ++h) {
            __m256 xs = _mm256_loadu_ps(x + k + 8 * h), ys = _mm256_loadu_ps(y + k + 8 * h);
            if (kScaled) {
                xs = _mm256_mul_ps(xs, vx);
                ys = _mm256_mul_ps(ys, vy);
            }
            acc[2 * h] = _mm256_fmadd_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(xs)),
                                         _mm256_cvtps_pd(_mm256_castps256_ps128(ys)), acc[2 * h]);
            acc[2 * h + 1] = _mm256_fmadd_pd(_mm256_cvtps_pd(_mm256_extractf128_ps(xs, 1)),
                                             _mm256_cvtps_pd(_mm256_extractf128_ps(ys, 1)), acc[2 * h + 1]);
        }
    }
    alignas(32) double out[kDotLanes];
    for (int q = 0; q < 8; ++q) _mm256_store_pd(out + 4 * q, acc[q]);
    return dot_finish(out, x, y, k, d, sx, sy, kScaled);
}

template <bool kScaled>
__attribute__((target("avx512f"))) double dot_avx512(const float* x, const float* y, int64_t d, float sx, float sy,
                                                     const char* y_next) {
    __m512d acc[4] = {_mm512_setzero_pd(), _mm512_setzero_pd(), _mm512_setzero_pd(), _mm512_setzero_pd()};
    const __m256 vx = _mm256_set1_ps(sx), vy = _mm256_set1_ps(sy);
    int64_t k = 0;
    for (; k + kDotLanes <= d; k += kDotLanes) {
        __builtin_prefetch(y_next + k * sizeof(float));
        __builtin_prefetch(y_next + (k + 16) * sizeof(float));
        for (int h = 0; h < 4; ++h) {  // 8 floats of each, converted whole (no halves extracted)
            __m256 xs = _mm256_loadu_ps(x + k + 8 * h), ys = _mm256_loadu_ps(y + k + 8 * h);
            if (kScaled) {
                xs = _mm256_mul_ps(xs, vx);
                ys = _mm256_mul_ps(ys, vy);
            }
            acc[h] = _mm512_fmadd_pd(_mm512_cvtps_pd(xs), _mm512_cvtps_pd(ys), acc[h]);
        }
    }
    alignas(64) double out[kDotLanes];
    for (int h = 0; h < 4; ++h) _mm512_store_pd(out + 8 * h, acc[h]);
    return dot_finish(out, x, y, k, d, sx, sy, kScaled);
}
#endif

using DotFn = double (*)(const float*, const float*, int64_t, float, float, const char*);

// The widest version this CPU runs, or `isa` (0 scalar, 1 AVX2, 2 AVX-512) where it runs it.
template <bool kScaled>
DotFn dot_function(int isa) {
#ifdef MECHPERM_SCREEN_X86
    // MECHPERM_NO_SIMD (README): the scalar version, as for the screen's other kernels
    static const int best = std::getenv("MECHPERM_NO_SIMD") != nullptr ? 0
                            : __builtin_cpu_supports("avx512f")           ? 2
                            : (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) ? 1
                                                                                                : 0;
    const int level = isa < 0 ? best : std::min(isa, best);
    if (level == 2) return &dot_avx512<kScaled>;
    if (level == 1) return &dot_avx2<kScaled>;
#else
    (void)isa;
#endif
    return &dot_scalar<kScaled>;
}

void pair_dots_range(const float* a, const float* b, int64_t d, const int64_t* rows, const int64_t* cols,
                     const float* a_scale, const float* b_scale, int64_t t0, int64_t t1, double* dots, int isa) {
    const bool scaled = a_scale != nullptr || b_scale != nullptr;
    const DotFn dot = scaled ? dot_function<true>(isa) : dot_function<false>(isa);
    for (int64_t t = t0; t < t1; ++t) {
        const float sx = a_scale ? a_scale[rows[t]] : 1.0f;  // one side may be unscaled (factor 1: exact)
        const float sy = b_scale ? b_scale[cols[t]] : 1.0f;
        const char* y_next = reinterpret_cast<const char*>(b + cols[t + 1 < t1 ? t + 1 : t] * d);
        dots[t] = dot(a + rows[t] * d, b + cols[t] * d, d, sx, sy, y_next);
    }
}

}  // namespace

void pair_dots(const float* a, const float* b, int64_t d, const int64_t* rows, const int64_t* cols,
               int64_t count, double* dots, int threads, const float* a_scale, const float* b_scale, int isa,
               bool grouped) {
    // Gathers of B's rows bound it (memory, not arithmetic): threads add loads in flight.
    constexpr int64_t kChunk = 4096;
    // Grouping copies the pairs (32 bytes each): at most 2^22 at a time (128 MiB).
    constexpr int64_t kSlice = int64_t(1) << 22;
    if (grouped && count > kSlice) {
        for (int64_t s = 0; s < count; s += kSlice)
            pair_dots(a, b, d, rows + s, cols + s, std::min(kSlice, count - s), dots + s, threads, a_scale, b_scale,
                      isa, true);
        return;
    }
    // A graph's pairs come row by row, each row's columns spread over all of B: every pair reads
    // its B row (9 KB at d = 2304) from memory. Taken in groups of B's rows that fit in a
    // last-level cache (stable: rows still ascend within a group), B's rows come from the cache
    // and A's from memory once per group they have pairs in. 2 threads on this VM (32 MiB L3):
    // make_stack's 16384 graph (3.0M pairs) 1.23 -> 0.67-0.69 s with groups of 9-12 MiB (2 / 4 /
    // 18 MiB: 0.92 / 0.80 / 0.74 s); 200 random pairs a row in calls of 2^20, 16384 rows 1.60 ->
    // 0.75 s, 65536 rows 7.36 -> 4.13 s. Where rows have too few pairs in a group (a wide B,
    // F = 1M) grouping would read A's rows more often than it spares B's: then the given order.
    // A fixed size, since VMs report their host's L3 (this one: 320 MiB).
    constexpr int64_t kGroupBytes = int64_t(10) << 20;
    const int64_t group = std::max<int64_t>(1, kGroupBytes / (std::max<int64_t>(d, 1) * int64_t(sizeof(float))));
    int64_t m = 0;
    for (int64_t t = 0; t < count; ++t) m = std::max(m, cols[t] + 1);
    const int64_t groups = (m + group - 1) / group;
    if (grouped && groups > 1 && count >= 2 * kChunk) {
        // Rows each order reads from memory: in the given order, A's at each change of row and
        // B's at every pair; grouped, A's at each change of row within a group and B's at most
        // once per row of a group.
        std::vector<int64_t> start(groups + 1, 0), last(groups, -1);
        int64_t runs = 0, grouped_runs = 0;
        for (int64_t t = 0; t < count; ++t) {
            const int64_t g = cols[t] / group;
            ++start[g + 1];
            runs += t == 0 || rows[t] != rows[t - 1];
            if (last[g] != rows[t]) {
                last[g] = rows[t];
                ++grouped_runs;
            }
        }
        int64_t grouped_b = 0;
        for (int64_t g = 0; g < groups; ++g) grouped_b += std::min({start[g + 1], group, m - g * group});
        if (10 * (grouped_runs + grouped_b) < 7 * (runs + count)) {
            for (int64_t g = 0; g < groups; ++g) start[g + 1] += start[g];
            // The pairs copied in group order (the dots written back after), so that the pass
            // reads and writes them in sequence.
            std::vector<int64_t> order(count), r(count), c(count);
            for (int64_t t = 0; t < count; ++t) {
                const int64_t q = start[cols[t] / group]++;
                order[q] = t;
                r[q] = rows[t];
                c[q] = cols[t];
            }
            std::vector<double> out(count);
            parallel_blocks((count + kChunk - 1) / kChunk, threads, [&](int64_t blk) {
                pair_dots_range(a, b, d, r.data(), c.data(), a_scale, b_scale, blk * kChunk,
                                std::min(count, (blk + 1) * kChunk), out.data(), isa);
            });
            for (int64_t q = 0; q < count; ++q) dots[order[q]] = out[q];
            return;
        }
    }
    parallel_blocks((count + kChunk - 1) / kChunk, threads, [&](int64_t blk) {
        pair_dots_range(a, b, d, rows, cols, a_scale, b_scale, blk * kChunk, std::min(count, (blk + 1) * kChunk),
                        dots, isa);
    });
}

bool screen_has_fast_kernel(ScreenKind kind) {
    if (kind == ScreenKind::kInt8) return int8screen::has_fast_kernel();
#ifdef MECHPERM_SCREEN_X86
    static const bool has =
        __builtin_cpu_supports("avx512bf16") != 0 && __builtin_cpu_supports("avx512f") != 0 &&
        std::getenv("MECHPERM_NO_SIMD") == nullptr;
    return has;
#else
    return false;
#endif
}

ScreenB::ScreenB(const uint16_t* b16, int64_t m, int64_t d, const float* nb, int threads)
    : m_(m), d_(d), kind_(ScreenKind::kBf16), nb_(nb, nb + m) {
#ifdef MECHPERM_SCREEN_X86
    fast_ = d % 2 == 0 && screen_has_fast_kernel();
    if (fast_) {
        pack_panels(b16, m, d, nb, packed_, nbp_, threads);
        return;
    }
#else
    (void)threads;  // the plain copy below runs on one thread
#endif
    raw_.assign(b16, b16 + m * d);
}

ScreenB::ScreenB(const int8_t* q, const float* scale, int64_t m, int64_t d, const float* nb, int threads)
    : m_(m), d_(d), kind_(ScreenKind::kInt8), nb_(nb, nb + m) {
    fast_ = d % 4 == 0 && int8screen::has_fast_kernel();
    if (fast_) {
        int8screen::pack(q, scale, m, d, nb, packed_, nbp_, scale_, corr_, threads);
        return;
    }
    raw8_.assign(q, q + m * d);
    scale_.assign(scale, scale + m);
}

void ScreenB::costs(const ScreenRows& a, int64_t n, const float* na, float* out, int threads, int64_t c0,
                    int64_t c1) const {
    if (c1 < 0) c1 = m_;
    if (n == 0 || c1 <= c0) return;
    if (kind_ == ScreenKind::kInt8) {
        if (fast_)
            int8screen::costs_fast(a.int8, a.scale, n, packed_.data(), nbp_.data(), scale_.data(), corr_.data(), c0,
                                   c1, d_, na, out, threads);
        else
            int8screen::costs_scalar(a.int8, a.scale, n, raw8_.data(), scale_.data(), c0, c1, d_, na, nb_.data(),
                                     out, threads);
        return;
    }
#ifdef MECHPERM_SCREEN_X86
    if (fast_) {
        screen_costs_avx512(a.bf16, n, packed_.data(), nbp_.data(), c0, c1, d_, na, out, threads);
        return;
    }
#endif
    screen_costs_scalar(a.bf16, n, raw_.data(), c0, c1, d_, na, nb_.data(), out, threads);
}

namespace {
// Per-column factors of the bound (see screen_lower_bounds) and the row's own.
struct BoundTerms {
    std::vector<double> X, Y, Z, T, W;
    BoundTerms(const ScreenSide& b, int64_t m) : X(m), Y(m), Z(m), T(m), W(m) {
        for (int64_t j = 0; j < m; ++j) {
            X[j] = b.resid_norm[j];
            Y[j] = b.bf16_norm[j] + b.resid_norm[j];
            Z[j] = b.bf16_norm[j];
            T[j] = b.norm[j];
            W[j] = kRound * b.sq_norm[j];
        }
    }
    void apply(float* row, int64_t m, const ScreenSide& a, int64_t i, double gamma, double abs_slack) const {
        lower_bound_row(row, m, 2.0 * a.bf16_norm[i], 2.0 * a.resid_norm[i],
                        (2.0 * gamma + 2.0 * kRound) * a.bf16_norm[i], 2.0 * kRound * a.norm[i],
                        kRound * a.sq_norm[i] + abs_slack, X.data(), Y.data(), Z.data(), T.data(), W.data());
    }
};
}  // namespace

void screen_lower_bounds(float* c, int64_t n, int64_t m, const ScreenSide& a, const ScreenSide& b,
                         double gamma, double abs_slack, const double* u, const double* v,
                         double tau, std::vector<int64_t>& rows, std::vector<int64_t>& cols) {
    // |c - c~| <= 2 (|a~||rb| + |ra||b~| + |ra||rb|)   bf16 rounding of the inputs
    //           + 2 gamma |a~||b~|                       float32 accumulation
    //           + 1e-6 (|a|^2 + |b|^2 + 2 |a~||b~| + 2 |a||b|)   the few float32 roundings of
    //             c~ = |a|^2 + |b|^2 - 2 s and of the exact cost (each <= 2^-24 relative)
    const BoundTerms terms(b, m);
    for (int64_t i = 0; i < n; ++i) {
        float* row = c + i * m;
        terms.apply(row, m, a, i, gamma, abs_slack);
        const double lim = tau + u[i];
        for (int64_t j = 0; j < m; ++j) {
            if (double(row[j]) - v[j] < lim) {
                rows.push_back(i);
                cols.push_back(j);
            }
        }
    }
}

namespace {

// The `keep` least (reduced cost, column) of one row into `heap` (a max-heap on pairs), the
// reduced costs (row_j - u_i) - v_j in double. Once the heap is full, blocks of 16 columns
// are first tested against its top all at once (vectorised; almost all fail it).
MECHPERM_SCREEN_CLONES
void least_reduced(const float* row, int64_t m, double ui, const double* v, size_t keep,
                   std::vector<std::pair<double, int64_t>>& heap) {
    heap.clear();
    int64_t j = 0;
    for (; j < m && heap.size() < keep; ++j) {
        heap.emplace_back((double(row[j]) - ui) - v[j], j);
        std::push_heap(heap.begin(), heap.end());
    }
    constexpr int64_t kB = 16;
    for (; j < m; j += kB) {
        const int64_t j1 = std::min(m, j + kB);
        const double top = heap.front().first;
        int hit = 0;
        for (int64_t t = j; t < j1; ++t) hit |= ((double(row[t]) - ui) - v[t]) < top;
        if (!hit) continue;
        for (int64_t t = j; t < j1; ++t) {
            const double red = (double(row[t]) - ui) - v[t];
            if (red < heap.front().first) {
                std::pop_heap(heap.begin(), heap.end());
                heap.back() = {red, t};
                std::push_heap(heap.begin(), heap.end());
            }
        }
    }
}

}  // namespace

void screen_price(const ScreenB& b, const ScreenRows& a_rows, int64_t n, const float* na, const ScreenSide& a,
                  const ScreenSide& bs, double gamma, double abs_slack, const double* u, const double* v,
                  int64_t q, int threads, int64_t* cols, double* bound) {
    const int64_t m = b.m(), d = b.d(), qq = std::min(q, m);
    const BoundTerms terms(bs, m);
    // Rows per screened tile: each tile streams all of B's packed rows from memory, and the int8
    // kernel takes rows 6 at a time in tasks of 60 (make_stack F = 16384, 4079 rows priced,
    // 2 threads, alternated: 64 rows 0.96-1.06 s, 120 rows 0.83-0.86 s, 240 rows 0.90-0.92 s).
    constexpr int64_t kChunk = 120;
    parallel_blocks((n + kChunk - 1) / kChunk, threads, [&](int64_t blk) {
        const int64_t i0 = blk * kChunk, rows = std::min(kChunk, n - i0);
        std::vector<float> tile(size_t(rows * m));
        ScreenRows blk_rows = a_rows;  // this chunk's rows
        if (a_rows.bf16) blk_rows.bf16 += i0 * d;
        if (a_rows.int8) blk_rows.int8 += i0 * d;
        if (a_rows.scale) blk_rows.scale += i0;
        b.costs(blk_rows, rows, na + i0, tile.data(), 1);
        // The qq + 1 least reduced costs in a max-heap: after the first few hundred columns
        // almost every value fails the comparison with the top (a partition of all m pairs per
        // row cost as much as the row's GEMM at m = 65536).
        std::vector<std::pair<double, int64_t>> heap;
        heap.reserve(size_t(qq + 1));
        const size_t keep = size_t(std::min(qq + 1, m));
        for (int64_t r = 0; r < rows; ++r) {
            const int64_t i = i0 + r;
            float* row = tile.data() + r * m;
            terms.apply(row, m, a, i, gamma, abs_slack);
            least_reduced(row, m, u[i], v, keep, heap);
            std::sort_heap(heap.begin(), heap.end());
            for (int64_t t = 0; t < qq; ++t) cols[i * qq + t] = heap[size_t(t)].second;
            bound[i] = qq < m ? heap[size_t(qq)].first : std::numeric_limits<double>::infinity();
        }
    });
}

}  // namespace mechperm
