#include "cpu/kernels.hpp"

#include <algorithm>
#include <limits>

namespace proxyattn::cpu {
namespace {
// GCC/Clang vector extension: 8 floats, lowered to AVX (one register) or SSE (two).
typedef float v8 __attribute__((vector_size(32)));

// Register tile of the micro-kernel: kTileM rows x kTileN columns of C stay in registers
// (8 vector accumulators) while K streams; fits the 16 registers of AVX2.
constexpr int kTileM = 4;
constexpr int kTileN = 16;
constexpr int kVec = 8;
constexpr int kVecsN = kTileN / kVec;

inline v8 load8(const float* p) {
  v8 v;
  __builtin_memcpy(&v, p, sizeof(v));
  return v;
}
inline void store8(float* p, v8 v) { __builtin_memcpy(p, &v, sizeof(v)); }

void tile_full(const float* A, int lda, const float* B, int ldb, float* C, int ldc, int K) {
  v8 acc[kTileM][kVecsN];
  for (int r = 0; r < kTileM; ++r)
    for (int x = 0; x < kVecsN; ++x) acc[r][x] = load8(C + r * ldc + x * kVec);
  for (int k = 0; k < K; ++k) {
    const float* b = B + int64_t(k) * ldb;
    v8 bv[kVecsN];
    for (int x = 0; x < kVecsN; ++x) bv[x] = load8(b + x * kVec);
    for (int r = 0; r < kTileM; ++r) {
      const float a = A[r * lda + k];
      for (int x = 0; x < kVecsN; ++x) acc[r][x] += a * bv[x];
    }
  }
  for (int r = 0; r < kTileM; ++r)
    for (int x = 0; x < kVecsN; ++x) store8(C + r * ldc + x * kVec, acc[r][x]);
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
}  // namespace

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
  for (int i = 0; i < n; ++i) m = std::max(m, x[i]);
  return m;
}

void exp_shifted(float* x, int n, float shift) {
  typedef int32_t vi8 __attribute__((vector_size(32)));
  const int full = n / kVec * kVec;
  for (int i = 0; i < full; i += kVec) {
    const v8 arg = load8(x + i) - shift;
    v8 y = arg * kLog2e;
    y = y < kExpFlushBelow * kLog2e ? kExpFlushBelow * kLog2e : y;  // also maps -inf
    vi8 ni = __builtin_convertvector(y, vi8);                        // truncates toward 0
    ni -= (__builtin_convertvector(ni, v8) > y) ? 1 : 0;             // floor (mask is -1)
    const v8 f = y - __builtin_convertvector(ni, v8);
    v8 p = kExp2Poly[0] + f * 0.0f;
    for (int c = 1; c < 6; ++c) p = p * f + kExp2Poly[c];
    p = p * f + 1.0f;
    const vi8 bits = (ni + 127) << 23;
    v8 scale;
    __builtin_memcpy(&scale, &bits, sizeof(scale));
    v8 r = p * scale;
    r = arg < kExpFlushBelow ? 0.0f : r;
    store8(x + i, r);
  }
  for (int i = full; i < n; ++i) x[i] = exp_nonpositive(x[i] - shift);
}

void softmax_fold(float* tile, int ld, int rows, int cols, float* row_max, float* row_sum,
                  float* correction) {
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();
  for (int r = 0; r < rows; ++r) {
    float* x = tile + int64_t(r) * ld;
    const float mx = max_of(x, cols, row_max[r]);
    if (mx == kNegInf) {  // no key yet: nothing to add, nothing to rescale
      // ... unless the row's logits are NaN (max_of skips them): the row becomes NaN, and
      // stays so (a NaN max is kept by max_of, and every exp of it is NaN).
      const bool nan = std::any_of(x, x + cols, [](float e) { return e != e; });
      std::fill(x, x + cols, 0.0f);
      correction[r] = nan ? std::numeric_limits<float>::quiet_NaN() : 1.0f;
      if (nan) row_max[r] = row_sum[r] = correction[r];
      continue;
    }
    correction[r] = exp_nonpositive(row_max[r] - mx);
    exp_shifted(x, cols, mx);
    row_sum[r] = row_sum[r] * correction[r] + sum(x, cols);
    row_max[r] = mx;
  }
}

}  // namespace proxyattn::cpu
