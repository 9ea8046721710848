// kernels.cpp compiled for AVX-512 (CMake gives this file -mavx512f -mavx2 -mfma), run where
// the CPU has AVX-512F (kernels_dispatch.cpp).
#define PROXYATTN_KERNELS_VARIANT avx512
#include "cpu/kernels.cpp"
