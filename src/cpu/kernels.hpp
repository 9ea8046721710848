// Small dense building blocks of the CPU backend, written so that the compiler
// vectorises them: a register-tiled C += A * B and a branch-free exp.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

namespace proxyattn::cpu {

// Coefficients of 2^f on [0, 1): 1 + f * (degree-5 least-squares fit of the relative
// error, 5e-9 in exact arithmetic, 1e-7 evaluated in float), highest power first.
inline constexpr float kExp2Poly[6] = {2.154058060828e-04f, 1.248286330156e-03f,
                                       9.674547649003e-03f, 5.548532169934e-02f,
                                       2.402294003359e-01f, 6.931470281883e-01f};
inline constexpr float kLog2e = 1.44269504088896341f;
inline constexpr float kExpFlushBelow = -87.0f;  // exp(x) < 2^-125 here: return 0

// exp(x) for x <= 0 (softmax arguments); exp(-inf) = 0, exp(NaN) = NaN. Relative error
// 1e-7 near 0, growing to 4e-6 at x = -87 from rounding x log2(e) in float.
// 2^(x log2 e) split into an integer power (built in the exponent bits) and the
// polynomial of the fraction. exp_shifted() is the vectorised loop over it.
inline float exp_nonpositive(float x) {
  if (!(x >= kExpFlushBelow)) return x != x ? x : 0.0f;  // NaN stays NaN; -inf gives 0
  const float y = x * kLog2e;
  const float n = std::floor(y);
  const float f = y - n;  // [0, 1)
  float p = kExp2Poly[0];
  for (int i = 1; i < 6; ++i) p = p * f + kExp2Poly[i];
  p = p * f + 1.0f;
  const int32_t bits_n = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits_n, 4);
  return p * scale;
}

// C[M, N] += A[M, K] * B[K, N], all row-major with leading dimensions lda, ldb, ldc.
void gemm_accumulate(const float* A, int lda, const float* B, int ldb, float* C, int ldc, int M,
                     int N, int K);

// One step of the online softmax over a tile of logits [rows, ld] (masked entries -inf):
// row_max and row_sum absorb the tile's first `cols` columns, the tile becomes
// exp(x - new max), and correction[r] = exp(old max - new max) rescales what was
// accumulated under the old max (1 while a row has seen no key). NaN propagates: a NaN logit
// makes its row's max (when the row has no finite logit), sum and correction NaN, so that the
// row's output and LSE come out NaN, never a plausible number.
void softmax_fold(float* tile, int ld, int rows, int cols, float* row_max, float* row_sum,
                  float* correction);

// Sum, max and in-place x <- exp(x - shift) over n floats, written to vectorise. max_of skips
// NaN entries (it returns init when every entry is NaN); exp_shifted keeps NaN.
float sum(const float* x, int n);
float max_of(const float* x, int n, float init);
void exp_shifted(float* x, int n, float shift);

// Instruction sets. The functions above run the kernels of one variant of kernels.cpp: the
// build's own flags (baseline: x86-64's SSE2, aarch64's NEON, or -march=native with
// PROXYATTN_NATIVE) and, in a portable x86-64 build, AVX2 + FMA and AVX-512 copies, of which
// the first call picks the widest this CPU runs (kernels_dispatch.cpp). The choice moves
// results within rounding only (vector width, fused multiply-add).
enum class KernelIsa { kBaseline = 0, kAvx2 = 1, kAvx512 = 2 };
inline constexpr int kNumKernelIsas = 3;
// Whether the variant is compiled into this build and this CPU can run it.
bool kernel_isa_available(KernelIsa isa);
// The variant in use, and its name: what its file was compiled for ("avx2", "sse2", "neon", ...).
KernelIsa kernel_isa();
const char* kernel_isa_name(KernelIsa isa);
// Tests and benchmarks: run this variant from now on (false, nothing changed, when it is not
// available). Not for use while other threads run kernels.
bool set_kernel_isa(KernelIsa isa);

}  // namespace proxyattn::cpu
