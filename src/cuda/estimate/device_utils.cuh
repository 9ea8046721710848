// Device building blocks of the estimation kernels beyond the shared sm_80 wrappers
// (common/mma_sm80.cuh: cp.async, ldmatrix, mma.sync and their fragment layouts) and the
// online softmax (common/online_softmax.cuh, with the quad reductions): element conversions,
// global loads, the CPU's exp flush rule and warp reductions.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "common/mma_sm80.cuh"
#include "common/online_softmax.cuh"

namespace proxyattn::cuda::est {

// Element type of the tensors (bf16 or fp16): conversions to and from fp32.
template <typename T>
struct Element;

template <>
struct Element<__nv_bfloat16> {
  static __device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
  static __device__ __forceinline__ __nv_bfloat16 from_float(float x) { return __float2bfloat16_rn(x); }
};

template <>
struct Element<__half> {
  static __device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
  static __device__ __forceinline__ __half from_float(float x) { return __float2half_rn(x); }
};

inline constexpr int kWarpSize = 32;
inline constexpr int kMmaM = 16;           // rows of one MMA tile
inline constexpr int kMmaN = 8;            // columns of one MMA tile
inline constexpr int kMmaK = 16;           // reduction depth of one MMA
inline constexpr int kVecElems = 8;        // 16-byte vector of 2-byte elements
inline constexpr float kLog2e = 1.4426950408889634f;
// The CPU backend flushes exp(x) to 0 for x < -87 (cpu/kernels.hpp, kExpFlushBelow);
// the same rule here, in log2 units, so that blocks whose probabilities underflow tie at
// exactly 0 on both backends (ties go to the lower block index).
inline constexpr float kExp2FlushBelow = -87.0f * kLog2e;

__device__ __forceinline__ float neg_inf() { return -__int_as_float(0x7f800000); }

// 2^x with the CPU's flush rule (x <= 0 in use; x = -inf gives 0): the same bits as
// exp2f above the threshold, which keeps 2^x a normal float (fast_exp2 skips exp2f's
// denormal path, common/mma_sm80.cuh).
static_assert(kExp2FlushBelow > -126.0f, "the flush threshold keeps 2^x a normal float");
__device__ __forceinline__ float exp2_flushed(float x) { return x < kExp2FlushBelow ? 0.0f : fast_exp2(x); }

// ---- shared-memory movement and MMA: common/mma_sm80.cuh ----------------------------
using cuda::cp_async_16;
using cuda::cp_async_commit;
using cuda::cp_async_wait;
using cuda::fast_exp2;
using cuda::ldmatrix_x4;
using cuda::mma_16x8x16;
using cuda::smem_address;

// Eight consecutive elements from global memory as they are stored (no conversion): one
// 16-byte load when `vector` (address 16-byte aligned), else element by element (strided
// views with odd strides). Loads whose use comes later (batches) stay in 4 registers.
template <typename T>
__device__ __forceinline__ uint4 load8_raw(const T* src, bool vector) {
  if (vector) return __ldg(reinterpret_cast<const uint4*>(src));
  uint4 raw;
  T* e = reinterpret_cast<T*>(&raw);
#pragma unroll
  for (int i = 0; i < kVecElems; ++i) e[i] = src[i];
  return raw;
}

// Two consecutive elements as one MMA operand register (element pair at an even index).
template <typename T>
__device__ __forceinline__ uint32_t load_pair(const T* src, bool aligned) {
  if (aligned) return __ldg(reinterpret_cast<const uint32_t*>(src));
  const uint16_t lo = __ldg(reinterpret_cast<const unsigned short*>(src));
  const uint16_t hi = __ldg(reinterpret_cast<const unsigned short*>(src + 1));
  return uint32_t(lo) | (uint32_t(hi) << 16);
}

// ---- warp reductions ------------------------------------------------------------------
__device__ __forceinline__ float max_xor(float v, int mask) {
  return fmaxf(v, __shfl_xor_sync(0xffffffffu, v, mask));
}
__device__ __forceinline__ float sum_xor(float v, int mask) {
  return v + __shfl_xor_sync(0xffffffffu, v, mask);
}

}  // namespace proxyattn::cuda::est
