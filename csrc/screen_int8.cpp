// The int8 screen (screen_int8.hpp): rows rounded to int8 codes times a per-row scale, their
// dots exact in int32 (|q_a . q_b| <= d 127^2; the kernel's unsigned A adds d 128 127), so the
// only error besides the rounding of the inputs is that of three float32 roundings after it.
// AVX-512 VNNI multiplies 64 int8 pairs per instruction, four times float32's 16: on the Intel
// VM without AVX-512 BF16 the tile kernel ran 4032 x 2304 x 16384 in 0.91-0.94 s against
// 2.4-3.9 s for MKL's float32 GEMM (one thread, ad hoc).
#include "screen.hpp"
#include "screen_int8.hpp"

#include "parallel.hpp"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) && !defined(MECHPERM_PORTABLE)
#include <immintrin.h>
#define MECHPERM_INT8_X86 1
#endif

namespace mechperm {
namespace int8screen {
namespace {

constexpr int64_t kNR = 64;          // columns per panel: four 16-lane int32 vectors
[[maybe_unused]] constexpr int64_t kMR = 6;   // rows per register tile
[[maybe_unused]] constexpr int64_t kMC = 60;  // rows per task (10 tiles); its packed rows stay in L2
[[maybe_unused]] constexpr int64_t kNC = 8;   // panels per column group (512 columns)
static_assert(kMC % kMR == 0, "tasks start on a register tile's first row (A is packed by tiles)");
constexpr uint32_t kBias = 0x80808080u;  // q + 128 in each byte: the kernel's A is unsigned

inline uint32_t word(const int8_t* q) {
    uint32_t w;
    std::memcpy(&w, q, sizeof w);
    return w;
}

#ifdef MECHPERM_INT8_X86
// acc += the dots of 4-byte groups of x (unsigned) and b (signed). Inline assembly because
// GCC 12 copies the accumulator to another register and back around every
// _mm512_dpbusd_epi32 (85 moves in the 8 x 2 tile's loop: 1.6-2.2 s against 0.91-0.94 s).
#define MECHPERM_DPBUSD(acc, x, b) asm("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(x), "v"(b))

// One kMR x kNR tile over all of k: A's rows packed (word kk of the kMR rows at ap[kk * kMR],
// biased), panel bp (word kk of the panel's kNR columns at bp[kk * kNR]); then
// out = max(na + nb - 2 ((float(acc - corr) * sa) * sb), 0) for the `rows` valid rows and the
// panel's columns [lo, hi), panel column c stored at out_row + (c + j0) (j0 = the panel's first
// column in out, negative when the range starts inside the panel: lo = -j0 then).
// Six rows by four vectors: per word of depth 4 loads of B, 6 broadcasts and 24 dots, ~3 uops
// issued a cycle at two dots a cycle where 8 rows by 2 vectors (10 loads, 16 dots) needed 3.6 of
// the core's 4: the issue width, not the two dot ports, bound that tile; unrolled twice, the
// loop's own uops halve. make_stack's folded decoders, a 1024 x 8192 tile at d = 2304, 1 thread
// on the Intel VM (ad hoc, alternated): 108-118 ms -> 90-100 ms, the same bits; a register-only
// loop of dots peaks at 520-600 GOP/s there.
#define MECHPERM_ROW(r, x)                                            \
    x = _mm512_set1_epi32(int(p[r]));                                 \
    MECHPERM_DPBUSD(a##r##0, x, b0); MECHPERM_DPBUSD(a##r##1, x, b1); \
    MECHPERM_DPBUSD(a##r##2, x, b2); MECHPERM_DPBUSD(a##r##3, x, b3)
__attribute__((target("avx512f,avx512vnni"))) void tile_vnni(
    const uint32_t* ap, const uint32_t* bp, int64_t dw, const int32_t* corr, const float* sbp,
    const float* nbp, const float* sa, const float* na, float* out_row, int64_t j0, int64_t ldo, int64_t rows,
    int64_t lo, int64_t hi) {
    __m512i a00 = _mm512_setzero_si512(), a01 = a00, a02 = a00, a03 = a00, a10 = a00, a11 = a00, a12 = a00,
            a13 = a00, a20 = a00, a21 = a00, a22 = a00, a23 = a00, a30 = a00, a31 = a00, a32 = a00, a33 = a00,
            a40 = a00, a41 = a00, a42 = a00, a43 = a00, a50 = a00, a51 = a00, a52 = a00, a53 = a00;
    // named accumulators: GCC keeps an array of them in memory once the dots are inline assembly
#pragma GCC unroll 2
    for (int64_t kk = 0; kk < dw; ++kk) {
        const uint32_t* q = bp + kk * kNR;
        const __m512i b0 = _mm512_loadu_si512(q), b1 = _mm512_loadu_si512(q + 16), b2 = _mm512_loadu_si512(q + 32),
                      b3 = _mm512_loadu_si512(q + 48);
        const uint32_t* p = ap + kk * kMR;
        __m512i x;
        MECHPERM_ROW(0, x); MECHPERM_ROW(1, x); MECHPERM_ROW(2, x);
        MECHPERM_ROW(3, x); MECHPERM_ROW(4, x); MECHPERM_ROW(5, x);
    }
    const __m512i acc[kMR][4] = {{a00, a01, a02, a03}, {a10, a11, a12, a13}, {a20, a21, a22, a23},
                                 {a30, a31, a32, a33}, {a40, a41, a42, a43}, {a50, a51, a52, a53}};
    const __m512 two = _mm512_set1_ps(2.0f), zero = _mm512_setzero_ps();
    for (int v = 0; v < 4; ++v) {
        const int64_t c = 16 * v, from = std::max<int64_t>(lo, c), to = std::min<int64_t>(hi, c + 16);
        if (from >= to) continue;
        const __mmask16 mask = __mmask16(((1u << (to - c)) - 1u) & ~((1u << (from - c)) - 1u));
        const __m512i cv = _mm512_loadu_si512(corr + c);
        const __m512 sv = _mm512_loadu_ps(sbp + c), nbv = _mm512_loadu_ps(nbp + c);
        for (int64_t r = 0; r < rows; ++r) {
            const __m512 sr = _mm512_set1_ps(sa[r]), ni = _mm512_set1_ps(na[r]);
            const __m512 d = _mm512_mul_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(acc[r][v], cv)), sr), sv);
            const __m512 val = _mm512_max_ps(_mm512_sub_ps(_mm512_add_ps(ni, nbv), _mm512_mul_ps(two, d)), zero);
            // stored from column c of the panel: out_row + r ldo + j0 + c (>= the row's start: c + 16 > lo)
            _mm512_mask_storeu_ps(out_row + r * ldo + (j0 + c), mask, val);
        }
    }
}
#undef MECHPERM_ROW
#undef MECHPERM_DPBUSD
#endif

}  // namespace

bool has_fast_kernel() {
#ifdef MECHPERM_INT8_X86
    static const bool has = __builtin_cpu_supports("avx512vnni") != 0 && __builtin_cpu_supports("avx512f") != 0 &&
                            std::getenv("MECHPERM_NO_SIMD") == nullptr;
    return has;
#else
    return false;
#endif
}

void pack(const int8_t* q, const float* scale, int64_t m, int64_t d, const float* nb, std::vector<uint32_t>& bp,
          std::vector<float>& nbp, std::vector<float>& sbp, std::vector<int32_t>& corr, int threads) {
    const int64_t dw = d / 4, panels = (m + kNR - 1) / kNR;
    bp.assign(size_t(panels * dw * kNR), 0u);
    nbp.assign(size_t(panels * kNR), 0.0f);
    sbp.assign(size_t(panels * kNR), 0.0f);
    corr.assign(size_t(panels * kNR), 0);
    parallel_blocks(panels, threads, [&](int64_t p) {
        uint32_t* dst = bp.data() + p * dw * kNR;
        for (int64_t jj = 0; jj < kNR && p * kNR + jj < m; ++jj) {
            const int64_t j = p * kNR + jj;
            const int8_t* src = q + j * d;
            int32_t sum = 0;
            for (int64_t kk = 0; kk < dw; ++kk) dst[kk * kNR + jj] = word(src + 4 * kk);
            for (int64_t k = 0; k < d; ++k) sum += src[k];
            nbp[size_t(j)] = nb[j];
            sbp[size_t(j)] = scale[j];
            corr[size_t(j)] = 128 * sum;
        }
    });
}

void costs_fast(const int8_t* qa, const float* sa, int64_t n, const uint32_t* bp, const float* nbp,
                const float* sbp, const int32_t* corr, int64_t c0, int64_t c1, int64_t d, const float* na,
                float* out, int threads) {
#ifdef MECHPERM_INT8_X86
    const int64_t dw = d / 4, m = c1 - c0, p0 = c0 / kNR;
    const int64_t panels = (c1 - p0 * kNR + kNR - 1) / kNR, row_panels = (n + kMR - 1) / kMR;
    // A packed once per call, biased, kMR rows interleaved word by word: the tile's broadcasts
    // read one stream (rows past n read as code 0: their values are never stored).
    std::vector<uint32_t> ap(size_t(row_panels * dw * kMR));
    std::vector<float> sa_pad(size_t(row_panels * kMR), 0.0f), na_pad(size_t(row_panels * kMR), 0.0f);
    std::copy(sa, sa + n, sa_pad.begin());
    std::copy(na, na + n, na_pad.begin());
    parallel_blocks(row_panels, threads, [&](int64_t rp) {
        uint32_t* dst = ap.data() + rp * dw * kMR;
        for (int64_t r = 0; r < kMR; ++r) {
            const int64_t i = rp * kMR + r;
            for (int64_t kk = 0; kk < dw; ++kk) dst[kk * kMR + r] = i < n ? word(qa + i * d + 4 * kk) ^ kBias : kBias;
        }
    });
    // Column groups of kNC panels outermost (1.2 MB of packed B at d = 2304, in L2 / L3), so B
    // streams from memory once; each task reads its row block's packed rows from L2. The range
    // may start half-way into a panel (c0 a multiple of 32): its first panel stores from skip.
    const int64_t skip = c0 - p0 * kNR;
    const int64_t row_blocks = (n + kMC - 1) / kMC, groups = (panels + kNC - 1) / kNC;
    parallel_blocks(groups * row_blocks, threads, [&](int64_t task) {
        const int64_t grp = task / row_blocks, blk = task % row_blocks;
        const int64_t i0 = blk * kMC, i1 = std::min(n, i0 + kMC);
        for (int64_t p = grp * kNC; p < std::min(panels, (grp + 1) * kNC); ++p) {
            const int64_t j0 = p * kNR - skip;  // the panel's first column in out
            const int64_t lo = std::max<int64_t>(0, -j0), hi = std::min(kNR, m - j0);
            const size_t jg = size_t((p0 + p) * kNR);
            for (int64_t i = i0; i < i1; i += kMR)
                tile_vnni(ap.data() + (i / kMR) * dw * kMR, bp + (p0 + p) * dw * kNR, dw, corr + jg, sbp + jg,
                          nbp + jg, sa_pad.data() + i, na_pad.data() + i, out + i * m, j0, m,
                          std::min(kMR, i1 - i), lo, hi);
        }
    });
#else
    (void)qa, (void)sa, (void)n, (void)bp, (void)nbp, (void)sbp, (void)corr, (void)c0, (void)c1, (void)d, (void)na,
        (void)out, (void)threads;
#endif
}

void costs_scalar(const int8_t* qa, const float* sa, int64_t n, const int8_t* qb, const float* sb, int64_t c0,
                  int64_t c1, int64_t d, const float* na, const float* nb, float* out, int threads) {
    screen_detail::scalar_costs(n, c0, c1, na, nb, out, threads, [&](int64_t i, int64_t j) {
        const int8_t* a = qa + i * d;
        const int8_t* b = qb + j * d;
        int32_t s = 0;
        for (int64_t k = 0; k < d; ++k) s += int32_t(a[k]) * int32_t(b[k]);
        return (float(s) * sa[i]) * sb[j];  // the fast kernel's order
    });
}

}  // namespace int8screen

namespace {

#if defined(MECHPERM_INT8_X86) && defined(__linux__)
#define MECHPERM_INT8_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define MECHPERM_INT8_CLONES
#endif

// One row: codes o [D], the scale, and the sums for the stats (sum of squared codes, exact;
// squared residuals and squares of x in float64). Lanes of kLanes partial sums in a fixed
// order, so that the compiler vectorises the loops (a float64 sum in one chain ran 0.8 s of a
// 16384 match) and every instruction set gives the same bits. Returns false if x has a
// non-finite value.
constexpr int64_t kLanes = 16;

MECHPERM_INT8_CLONES
bool round_row(const float* x, int64_t D, int8_t* o, float* scale, double* sums) {
    // |x| ordered as its bits: the largest, and whether any is inf or NaN
    uint32_t top[kLanes] = {};
    int64_t k = 0;
    for (; k + kLanes <= D; k += kLanes)
        for (int64_t l = 0; l < kLanes; ++l) {
            uint32_t u;
            std::memcpy(&u, x + k + l, sizeof u);
            top[l] = std::max(top[l], u & 0x7FFFFFFFu);
        }
    for (; k < D; ++k) {
        uint32_t u;
        std::memcpy(&u, x + k, sizeof u);
        top[0] = std::max(top[0], u & 0x7FFFFFFFu);
    }
    uint32_t amax_bits = 0;
    for (int64_t l = 0; l < kLanes; ++l) amax_bits = std::max(amax_bits, top[l]);
    if (amax_bits >= 0x7F800000u) return false;
    float amax;
    std::memcpy(&amax, &amax_bits, sizeof amax);
    // Below float32's normal range 1 / s could overflow: scale 0 and codes 0 there (residual x).
    const float s = amax / 127.0f >= 1.17549435e-38f ? amax / 127.0f : 0.0f;
    // Any rounding of x / s to codes is valid (the stats measure the residual); x * (1 / s)
    // rounded by adding and subtracting 1.5 * 2^23 (nearest even for |v| < 2^22) vectorises.
    const float inv = s > 0.0f ? 1.0f / s : 0.0f;
    constexpr float kMagic = 12582912.0f;
    int32_t c2[kLanes] = {};  // <= 127^2 D / kLanes: no overflow below D = 2^21
    double res[kLanes] = {}, sq[kLanes] = {};
    const double sd = double(s);
    for (k = 0; k < D; k += kLanes) {
        const int64_t n = std::min(kLanes, D - k);
        for (int64_t l = 0; l < n; ++l) {
            // |x * inv| <= 127 (1 + 3u): clamped as integers (float compares do not vectorise here)
            int32_t c = int32_t((x[k + l] * inv + kMagic) - kMagic);
            c = c > 127 ? 127 : c;
            c = c < -127 ? -127 : c;
            o[k + l] = int8_t(c);
            const double xv = double(x[k + l]), r = sd * double(c) - xv;  // exact: 24 x 8 bits, then a difference
            c2[l] += c * c;
            res[l] += r * r;
            sq[l] += xv * xv;
        }
    }
    int64_t c2s = 0;
    double r8[8], q8[8];
    for (int64_t l = 0; l < kLanes; ++l) c2s += int64_t(c2[l]);
    for (int l = 0; l < 8; ++l) {
        r8[l] = res[l] + res[l + 8];
        q8[l] = sq[l] + sq[l + 8];
    }
    *scale = s;
    sums[0] = double(c2s);
    sums[1] = ((r8[0] + r8[4]) + (r8[2] + r8[6])) + ((r8[1] + r8[5]) + (r8[3] + r8[7]));
    sums[2] = ((q8[0] + q8[4]) + (q8[2] + q8[6])) + ((q8[1] + q8[5]) + (q8[3] + q8[7]));
    return true;
}

}  // namespace

int64_t screen_side_int8(const float* x, int64_t F, int64_t D, int64_t dp, const float* sq_norm, int8_t* q,
                         float* scale, double* stats, int threads) {
    return screen_detail::each_row(F, threads, [&](int64_t i) {
        int8_t* o = q + i * dp;
        double sums[3];
        const bool finite = round_row(x + i * D, D, o, scale + i, sums);
        if (!finite) {
            std::fill(o, o + D, int8_t(0));
            scale[i] = 0.0f;
            sums[0] = sums[1] = sums[2] = 0.0;
        }
        for (int64_t k = D; k < dp; ++k) o[k] = 0;
        // float64 sums of exact squares: relative error < D 2^-53 (D < 2^17); round the norms up
        // (|x~|^2 = s^2 sum q^2: the sum exact, one rounding in the product and one in sqrt)
        constexpr double kUp = 1.0 + 0x1p-36;
        stats[i] = double(scale[i]) * std::sqrt(sums[0]) * kUp;
        stats[F + i] = std::sqrt(sums[1]) * kUp;
        stats[2 * F + i] = std::sqrt(sums[2]) * kUp;
        stats[3 * F + i] = double(sq_norm[i]);
        return finite;
    });
}

}  // namespace mechperm
