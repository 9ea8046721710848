// The CPU backend's hot loops (kernels.hpp), written with GCC/Clang vector extensions in the
// width of the instruction set this file is compiled for. CMake compiles it once with the
// build's flags and, in a portable x86-64 build, again per instruction set (kernels_avx2.cpp,
// kernels_avx512.cpp: this file under other flags, each in its own namespace);
// kernels_dispatch.cpp picks one at run time.
//
// A file compiled with -mavx2 or -mavx512f must emit no function that another file could
// share: an inline function or template of external linkage compiled here (std::max, an
// out-of-line copy at -O0) could be the copy the linker keeps for every caller, and then run
// on a CPU without the instruction set. So nothing here calls into the standard library's
// headers: helpers have internal linkage, the rest are compiler builtins, and only the
// variant's entry points (in namespace proxyattn::cpu::PROXYATTN_KERNELS_VARIANT) are visible.
#include "cpu/kernels.hpp"

#ifndef PROXYATTN_KERNELS_VARIANT
#define PROXYATTN_KERNELS_VARIANT baseline
#endif

namespace proxyattn::cpu::PROXYATTN_KERNELS_VARIANT {
namespace {

// One vector register of the instruction set compiled for: 64 bytes with AVX-512, 32 with
// AVX, else 16 (SSE2, NEON). Wider vector types than the registers are not split well: GCC
// keeps such vectors in memory (-march=x86-64 with 32-byte vectors ran the CPU forward 15x
// slower than AVX2, bench/results/cpu-dispatch-*.json).
#if defined(PROXYATTN_KERNELS_VEC_BYTES)  // tests: a width other than the registers'
constexpr int kVecBytes = PROXYATTN_KERNELS_VEC_BYTES;
#elif defined(__AVX512F__)
constexpr int kVecBytes = 64;
#elif defined(__AVX__)
constexpr int kVecBytes = 32;
#else
constexpr int kVecBytes = 16;
#endif
constexpr int kVec = kVecBytes / 4;
typedef float vf __attribute__((vector_size(kVecBytes)));
typedef int32_t vi __attribute__((vector_size(kVecBytes)));

// Register tile of the micro-kernel: kTileM rows x kTileN columns of C stay in registers
// (8 vector accumulators) while K streams; fits the 16 registers of SSE2 and AVX2.
constexpr int kTileM = 4;
constexpr int kVecsN = 2;
constexpr int kTileN = kVecsN * kVec;

inline vf load(const float* p) {
  vf v;
  __builtin_memcpy(&v, p, sizeof(v));
  return v;
}
inline void store(float* p, vf v) { __builtin_memcpy(p, &v, sizeof(v)); }

void tile_full(const float* A, int lda, const float* B, int ldb, float* C, int ldc, int K) {
  vf acc[kTileM][kVecsN];
  for (int r = 0; r < kTileM; ++r)
    for (int x = 0; x < kVecsN; ++x) acc[r][x] = load(C + r * ldc + x * kVec);
  for (int k = 0; k < K; ++k) {
    const float* b = B + int64_t(k) * ldb;
    vf bv[kVecsN];
    for (int x = 0; x < kVecsN; ++x) bv[x] = load(b + x * kVec);
    for (int r = 0; r < kTileM; ++r) {
      const float a = A[r * lda + k];
      for (int x = 0; x < kVecsN; ++x) acc[r][x] += a * bv[x];
    }
  }
  for (int r = 0; r < kTileM; ++r)
    for (int x = 0; x < kVecsN; ++x) store(C + r * ldc + x * kVec, acc[r][x]);
}

void tile_edge(const float* A, int lda, const float* B, int ldb, float* C, int ldc, int M, int N,
               int K) {
  for (int r = 0; r < M; ++r) {
    float* c = C + int64_t(r) * ldc;
    for (int k = 0; k < K; ++k) {
      const float a = A[int64_t(r) * lda + k];
      const float* b = B + int64_t(k) * ldb;
      for (int x = 0; x < N; ++x) c[x] += a * b[x];
    }
  }
}

// exp_nonpositive (kernels.hpp) over one element: the scalar tail of exp_shifted.
float exp_scalar(float x) {
  if (!(x >= kExpFlushBelow)) return x != x ? x : 0.0f;
  const float y = x * kLog2e;
  const float n = __builtin_floorf(y);
  const float f = y - n;
  float p = kExp2Poly[0];
  for (int i = 1; i < 6; ++i) p = p * f + kExp2Poly[i];
  p = p * f + 1.0f;
  const int32_t bits_n = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  __builtin_memcpy(&scale, &bits_n, 4);
  return p * scale;
}
}  // namespace

const char* name() {
#if defined(PROXYATTN_KERNELS_VEC_BYTES)
  return "test-width";
#elif defined(__AVX512F__)
  return "avx512";
#elif defined(__AVX2__) && defined(__FMA__)
  return "avx2";
#elif defined(__AVX__)
  return "avx";
#elif defined(__ARM_NEON)
  return "neon";
#elif defined(__SSE2__)
  return "sse2";
#else
  return "generic";
#endif
}

void gemm_accumulate(const float* A, int lda, const float* B, int ldb, float* C, int ldc, int M,
                     int N, int K) {
  const int full_m = M / kTileM * kTileM;
  const int full_n = N / kTileN * kTileN;
  for (int r = 0; r < full_m; r += kTileM) {
    for (int x = 0; x < full_n; x += kTileN)
      tile_full(A + int64_t(r) * lda, lda, B + x, ldb, C + int64_t(r) * ldc + x, ldc, K);
    if (full_n < N)
      tile_edge(A + int64_t(r) * lda, lda, B + full_n, ldb, C + int64_t(r) * ldc + full_n, ldc,
                kTileM, N - full_n, K);
  }
  if (full_m < M)
    tile_edge(A + int64_t(full_m) * lda, lda, B, ldb, C + int64_t(full_m) * ldc, ldc, M - full_m,
              N, K);
}

float sum(const float* x, int n) {
  constexpr int kLanes = 16;  // independent partial sums, so the loop vectorises
  float acc[kLanes] = {0};
  const int full = n / kLanes * kLanes;
  for (int i = 0; i < full; i += kLanes)
    for (int l = 0; l < kLanes; ++l) acc[l] += x[i + l];
  float total = 0.0f;
  for (int l = 0; l < kLanes; ++l) total += acc[l];
  for (int i = full; i < n; ++i) total += x[i];
  return total;
}

float max_of(const float* x, int n, float init) {
  float m = init;
  for (int i = 0; i < n; ++i) m = m < x[i] ? x[i] : m;  // std::max: a NaN x[i] is skipped
  return m;
}

void exp_shifted(float* x, int n, float shift) {
  const int full = n / kVec * kVec;
  for (int i = 0; i < full; i += kVec) {
    const vf arg = load(x + i) - shift;
    vf y = arg * kLog2e;
    y = y < kExpFlushBelow * kLog2e ? kExpFlushBelow * kLog2e : y;  // also maps -inf
    vi ni = __builtin_convertvector(y, vi);                          // truncates toward 0
    ni -= (__builtin_convertvector(ni, vf) > y) ? 1 : 0;             // floor (mask is -1)
    const vf f = y - __builtin_convertvector(ni, vf);
    vf p = kExp2Poly[0] + f * 0.0f;
    for (int c = 1; c < 6; ++c) p = p * f + kExp2Poly[c];
    p = p * f + 1.0f;
    const vi bits = (ni + 127) << 23;
    vf scale;
    __builtin_memcpy(&scale, &bits, sizeof(scale));
    vf r = p * scale;
    r = arg < kExpFlushBelow ? 0.0f : r;
    store(x + i, r);
  }
  for (int i = full; i < n; ++i) x[i] = exp_scalar(x[i] - shift);
}

void softmax_fold(float* tile, int ld, int rows, int cols, float* row_max, float* row_sum,
                  float* correction) {
  const float neg_inf = -__builtin_inff(), nan = __builtin_nanf("");
  for (int r = 0; r < rows; ++r) {
    float* x = tile + int64_t(r) * ld;
    const float mx = max_of(x, cols, row_max[r]);
    if (mx == neg_inf) {  // no key yet: nothing to add, nothing to rescale
      // ... unless the row's logits are NaN (max_of skips them): the row becomes NaN, and
      // stays so (a NaN max is kept by max_of, and every exp of it is NaN).
      bool has_nan = false;
      for (int c = 0; c < cols; ++c) {
        has_nan |= x[c] != x[c];
        x[c] = 0.0f;
      }
      correction[r] = has_nan ? nan : 1.0f;
      if (has_nan) row_max[r] = row_sum[r] = correction[r];
      continue;
    }
    correction[r] = exp_scalar(row_max[r] - mx);
    exp_shifted(x, cols, mx);
    row_sum[r] = row_sum[r] * correction[r] + sum(x, cols);
    row_max[r] = mx;
  }
}

}  // namespace proxyattn::cpu::PROXYATTN_KERNELS_VARIANT
