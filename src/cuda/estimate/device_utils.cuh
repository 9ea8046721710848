// Device building blocks of the estimation kernels: element types, tensor-core MMA
// (mma.sync m16n8k16, fp32 accumulate), ldmatrix, cp.async and warp reductions.
//
// Fragment layouts of mma.sync.m16n8k16 (PTX ISA, "Matrix fragments for mma.m16n8k16"),
// with g = lane / 4 (the row group) and q = lane % 4 (the thread in the quad):
//   A [16 x 16] row-major, 4 registers of 2 elements:
//     a0 = A[g][2q..2q+1], a1 = A[g+8][2q..], a2 = A[g][2q+8..], a3 = A[g+8][2q+8..]
//   B [16 x 8] (k x n), 2 registers: b0 = B[2q..2q+1][g], b1 = B[2q+8..][g]
//   C [16 x 8] fp32, 4 registers: c0, c1 = C[g][2q..2q+1], c2, c3 = C[g+8][2q..2q+1]
// B = K^T with K stored [keys, d] row-major is exactly the "col" operand: b0 holds two
// consecutive d-elements of key g, which ldmatrix (non-transposed) delivers from K rows.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

namespace proxyattn::cuda::est {

// Element type of the tensors (bf16 or fp16): conversions and the MMA instruction.
template <typename T>
struct Element;

template <>
struct Element<__nv_bfloat16> {
  static __device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
  static __device__ __forceinline__ __nv_bfloat16 from_float(float x) { return __float2bfloat16_rn(x); }
  // C += A * B on tensor cores.
  static __device__ __forceinline__ void mma(float (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                             uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
};

template <>
struct Element<__half> {
  static __device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
  static __device__ __forceinline__ __half from_float(float x) { return __float2half_rn(x); }
  static __device__ __forceinline__ void mma(float (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                             uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
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

// 2^x with the CPU's flush rule (x <= 0 in use; x = -inf gives 0).
__device__ __forceinline__ float exp2_flushed(float x) {
  return x < kExp2FlushBelow ? 0.0f : exp2f(x);
}

// ---- shared-memory movement ---------------------------------------------------------
__device__ __forceinline__ uint32_t smem_address(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16-byte asynchronous copy global -> shared; zero-fills when !valid (src is not read).
__device__ __forceinline__ void cp_async_16(void* smem, const void* gmem, bool valid) {
  const int src_bytes = valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_address(smem)),
               "l"(gmem), "r"(src_bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int Pending>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(Pending));
}

// Four 8x8 matrices of 2-byte elements; lane l gives the row address of matrix l / 8.
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* smem_row) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_address(smem_row)));
}

// Eight consecutive elements from global memory: one 16-byte load when `vector` (address
// 16-byte aligned), else element by element (strided views with odd strides).
template <typename T>
__device__ __forceinline__ void load8(const T* src, bool vector, float (&out)[kVecElems]) {
  if (vector) {
    const uint4 raw = __ldg(reinterpret_cast<const uint4*>(src));
    const T* e = reinterpret_cast<const T*>(&raw);
#pragma unroll
    for (int i = 0; i < kVecElems; ++i) out[i] = Element<T>::to_float(e[i]);
  } else {
#pragma unroll
    for (int i = 0; i < kVecElems; ++i) out[i] = Element<T>::to_float(src[i]);
  }
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
// Over the 4 lanes of a quad (the threads that hold one accumulator row).
__device__ __forceinline__ float quad_max(float v) { return max_xor(max_xor(v, 1), 2); }
__device__ __forceinline__ float quad_sum(float v) { return sum_xor(sum_xor(v, 1), 2); }

}  // namespace proxyattn::cuda::est
