// Warpgroup matrix multiply-accumulate (wgmma, sm_90a) wrappers: shared-memory matrix
// descriptors, the m64nNk16 products with fp32 accumulators in both operand forms the
// attention uses, the ordering instructions around them, and the warp-uniform broadcast the
// branches around them need.
//
// Operand forms (PTX ISA "Asynchronous Warpgroup Level Matrix Multiply-Accumulate"):
//   SS: D[64 x N] (+)= A[64 x 16] B[16 x N], A and B from shared memory, both K-major
//       (S = Q K^T: Q rows and K rows are head_dim-contiguous).
//   RS: the same with A from registers; B MN-major ("transposed", tnspB = 1)
//       (O += P V: P in registers, V rows are head_dim-contiguous, so N = head_dim is the
//       contiguous dimension of B).
// Register layouts (per warp w of the warpgroup, rows 16 w .. 16 w + 15; g = lane / 4,
// t = lane % 4), identical to mma.sync m16n8k16 tiled along N:
//   D, fp32, N / 2 registers: d[4 i + c] = D[16 w + g + 8 (c / 2)][8 i + 2 t + (c % 2)]
//   A, 16-bit, 4 registers of 2 elements: a0 = A[g][2t..], a1 = A[g+8][2t..],
//       a2 = A[g][2t+8..], a3 = A[g+8][2t+8..]
// so the D registers of n8 tiles 2 k and 2 k + 1, packed in pairs, are the A registers of
// k-step k (the FlashAttention register reuse of P).
//
// Shared-memory layout, 128-byte swizzle (the TMA's CU_TENSOR_MAP_SWIZZLE_128B): rows of 64
// 16-bit elements (128 B), 16-byte chunk j of row r stored at chunk j ^ (r % 8), 8-row
// atoms of 1024 B, atoms 1024-byte aligned. Descriptor fields (cute::GmmaDescriptor):
//   bits  0-13 start address >> 4, 16-29 leading byte offset >> 4, 32-45 stride byte
//   offset >> 4, 62-63 layout (1 = 128-byte swizzle); base offset 0 (aligned atoms).
//   K-major: SBO = byte step between 8-row groups (1024 for 128-byte rows); LBO unused (1).
//     A k-step moves the start address by 32 B inside the swizzled row.
//   MN-major: LBO = byte step between 64-element column chunks of N, SBO = byte step
//     between groups of 8 rows of K.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

namespace proxyattn::cuda::attention::sm90 {

inline constexpr int kDescriptorShift = 4;           // descriptor fields count 16-byte units
inline constexpr uint64_t kDescriptorAddressMask = 0x3FFFF;
inline constexpr uint64_t kLayoutSwizzle128 = 1;    // layout field value of the 128-byte swizzle
inline constexpr int kLayoutShift = 62;

// Descriptor of a 128-byte-swizzled shared-memory matrix at byte address `address`.
__device__ __forceinline__ uint64_t make_descriptor(uint32_t address, uint32_t leading_bytes,
                                                    uint32_t stride_bytes) {
  return ((uint64_t(address) & kDescriptorAddressMask) >> kDescriptorShift) |
         (uint64_t(leading_bytes >> kDescriptorShift) << 16) |
         (uint64_t(stride_bytes >> kDescriptorShift) << 32) | (kLayoutSwizzle128 << kLayoutShift);
}
// The same descriptor moved by `bytes` (a multiple of 16) in shared memory.
__device__ __forceinline__ constexpr uint64_t descriptor_offset(int bytes) {
  return uint64_t(bytes >> kDescriptorShift);
}

// The value of lane 0 for the whole warp. Branches around wgmma must be provably uniform,
// or ptxas serialises every wgmma of the kernel (warning C7518); a broadcast is what its
// uniformity analysis recognises (as cutlass::canonical_warp_idx_sync does).
__device__ __forceinline__ int warp_uniform(int value) { return __shfl_sync(0xffffffffu, value, 0); }

// Orders earlier register accesses before the wgmma that follow (accumulators, A registers).
__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
// Waits until at most `Pending` committed wgmma groups of this warpgroup are in flight.
template <int Pending>
__device__ __forceinline__ void wgmma_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(Pending) : "memory");
}
// Keeps the compiler from moving accesses of these registers across this point (the
// registers of an in-flight wgmma must not be touched).
template <int N>
__device__ __forceinline__ void fence_registers(float (&r)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+f"(r[i])::"memory");
}
template <int M, int N>
__device__ __forceinline__ void fence_registers(uint32_t (&r)[M][N]) {
#pragma unroll
  for (int i = 0; i < M; ++i)
#pragma unroll
    for (int j = 0; j < N; ++j) asm volatile("" : "+r"(r[i][j])::"memory");
}

// ---- operand lists (generated: %0.. accumulators, then the inputs) --------------------
// m64n64k16: 32 fp32 accumulators per thread, operands %0..%31.
#define PA_WGMMA_D32_LIST "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}"
#define PA_WGMMA_D32_OUTS(d) "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
#define PA_WGMMA_SS_TAIL_32 " %32, %33, p, 1, 1, 0, 0;\n"
#define PA_WGMMA_SS_PRED_32 "setp.ne.b32 p, %34, 0;\n"
#define PA_WGMMA_RS_TAIL_32 " {%32, %33, %34, %35}, %36, p, 1, 1, 1;\n"
#define PA_WGMMA_RS_PRED_32 "setp.ne.b32 p, %37, 0;\n"

// m64n128k16: 64 fp32 accumulators per thread, operands %0..%63.
#define PA_WGMMA_D64_LIST "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}"
#define PA_WGMMA_D64_OUTS(d) "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
#define PA_WGMMA_SS_TAIL_64 " %64, %65, p, 1, 1, 0, 0;\n"
#define PA_WGMMA_SS_PRED_64 "setp.ne.b32 p, %66, 0;\n"
#define PA_WGMMA_RS_TAIL_64 " {%64, %65, %66, %67}, %68, p, 1, 1, 1;\n"
#define PA_WGMMA_RS_PRED_64 "setp.ne.b32 p, %69, 0;\n"

#define PA_WGMMA_SS(K, N, TYPE, d, desc_a, desc_b, scale_d)                                   \
  asm volatile("{\n.reg .pred p;\n" PA_WGMMA_SS_PRED_##K                                      \
               "wgmma.mma_async.sync.aligned.m64n" #N "k16.f32." TYPE "." TYPE " "            \
               PA_WGMMA_D##K##_LIST "," PA_WGMMA_SS_TAIL_##K "}\n"                            \
               : PA_WGMMA_D##K##_OUTS(d)                                                      \
               : "l"(desc_a), "l"(desc_b), "r"(scale_d))
#define PA_WGMMA_RS(K, N, TYPE, d, a, desc_b, scale_d)                                        \
  asm volatile("{\n.reg .pred p;\n" PA_WGMMA_RS_PRED_##K                                      \
               "wgmma.mma_async.sync.aligned.m64n" #N "k16.f32." TYPE "." TYPE " "            \
               PA_WGMMA_D##K##_LIST "," PA_WGMMA_RS_TAIL_##K "}\n"                            \
               : PA_WGMMA_D##K##_OUTS(d)                                                      \
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(scale_d))

template <typename Element>
inline constexpr bool kIsBf16 = std::is_same_v<Element, __nv_bfloat16>;

// D (+)= A B, A and B K-major in shared memory; scale_d = 0 overwrites D.
template <typename Element, int N>
__device__ __forceinline__ void wgmma_ss(float (&d)[N / 2], uint64_t desc_a, uint64_t desc_b, int scale_d) {
  static_assert(std::is_same_v<Element, __nv_bfloat16> || std::is_same_v<Element, __half>, "bf16 or fp16");
  static_assert(N == 64 || N == 128, "m64n64k16 or m64n128k16");
  if constexpr (N == 128) {
    if constexpr (kIsBf16<Element>) PA_WGMMA_SS(64, 128, "bf16", d, desc_a, desc_b, scale_d);
    else PA_WGMMA_SS(64, 128, "f16", d, desc_a, desc_b, scale_d);
  } else {
    if constexpr (kIsBf16<Element>) PA_WGMMA_SS(32, 64, "bf16", d, desc_a, desc_b, scale_d);
    else PA_WGMMA_SS(32, 64, "f16", d, desc_a, desc_b, scale_d);
  }
}

// D (+)= A B, A in registers (layout above), B MN-major in shared memory.
template <typename Element, int N>
__device__ __forceinline__ void wgmma_rs(float (&d)[N / 2], const uint32_t (&a)[4], uint64_t desc_b,
                                         int scale_d) {
  static_assert(std::is_same_v<Element, __nv_bfloat16> || std::is_same_v<Element, __half>, "bf16 or fp16");
  static_assert(N == 64 || N == 128, "m64n64k16 or m64n128k16");
  if constexpr (N == 128) {
    if constexpr (kIsBf16<Element>) PA_WGMMA_RS(64, 128, "bf16", d, a, desc_b, scale_d);
    else PA_WGMMA_RS(64, 128, "f16", d, a, desc_b, scale_d);
  } else {
    if constexpr (kIsBf16<Element>) PA_WGMMA_RS(32, 64, "bf16", d, a, desc_b, scale_d);
    else PA_WGMMA_RS(32, 64, "f16", d, a, desc_b, scale_d);
  }
}

}  // namespace proxyattn::cuda::attention::sm90
