// The int8 screen's kernels (see screen.hpp: ScreenB with int8 rows): B packed for AVX-512 VNNI,
// the tiles, and the scalar loop with the same arithmetic. Internal to screen.cpp.
#pragma once

#include <cstdint>
#include <vector>

namespace mechperm {
namespace int8screen {

// True where the AVX-512 VNNI kernel runs (and MECHPERM_NO_SIMD is unset).
bool has_fast_kernel();

// B's codes q [m, d] (d a multiple of 4) packed in panels of 64 columns, word kk (4 bytes of
// depth) of the panel's columns contiguous; nb, scale and corr (128 * the column's code sum)
// padded to whole panels.
void pack(const int8_t* q, const float* scale, int64_t m, int64_t d, const float* nb, std::vector<uint32_t>& bp,
          std::vector<float>& nbp, std::vector<float>& sbp, std::vector<int32_t>& corr, int threads);

// Columns [c0, c1) (c0 a multiple of 32) of the screened costs of rows (qa, sa) [n, d] into out
// [n, c1 - c0], from packed B.
void costs_fast(const int8_t* qa, const float* sa, int64_t n, const uint32_t* bp, const float* nbp,
                const float* sbp, const int32_t* corr, int64_t c0, int64_t c1, int64_t d, const float* na,
                float* out, int threads);

// The same values from B's raw codes (any CPU).
void costs_scalar(const int8_t* qa, const float* sa, int64_t n, const int8_t* qb, const float* sb, int64_t c0,
                  int64_t c1, int64_t d, const float* na, const float* nb, float* out, int threads);

}  // namespace int8screen
}  // namespace mechperm
