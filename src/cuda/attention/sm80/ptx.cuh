// What the attention kernel adds to the shared sm_80 wrappers (common/mma_sm80.cuh:
// cp.async, ldmatrix, mma.sync, their fragment layouts and the fast exp2): packing fp32
// pairs into 16-bit operands and 32-bit shared stores.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "common/mma_sm80.cuh"

namespace proxyattn::cuda::attention::sm80 {

using cuda::cp_async_16;
using cuda::cp_async_commit;
using cuda::cp_async_wait_all;
using cuda::ldmatrix_x4;
using cuda::ldmatrix_x4_trans;
using cuda::mma_16x8x16;
using cuda::smem_address;

// The element types, with their mma spelling and a packed pair conversion from fp32.
template <typename Element> struct ElementTraits;
template <> struct ElementTraits<__nv_bfloat16> {
  __device__ __forceinline__ static uint32_t pack(float lo, float hi) {
    const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<const uint32_t*>(&v);
  }
};
template <> struct ElementTraits<__half> {
  __device__ __forceinline__ static uint32_t pack(float lo, float hi) {
    const __half2 v = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<const uint32_t*>(&v);
  }
};

__device__ __forceinline__ void st_shared_32(uint32_t address, uint32_t value) {
  asm volatile("st.shared.b32 [%0], %1;\n" ::"r"(address), "r"(value) : "memory");
}

// Online softmax with a lazy max (both kernels): the max a row's exponents are taken
// against moves only when a tile's max exceeds it by more than this (log2 units), so
// probabilities stay <= 2^kRescaleBound (256: fp32 sums and 16-bit P hold it) and O is
// rescaled only on such a move, which after a row's first tiles is rare.
inline constexpr float kRescaleBound = 8.0f;

}  // namespace proxyattn::cuda::attention::sm80
