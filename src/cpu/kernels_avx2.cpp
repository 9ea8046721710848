// kernels.cpp compiled for AVX2 + FMA (CMake gives this file -mavx2 -mfma), run where the CPU
// has them (kernels_dispatch.cpp).
#define PROXYATTN_KERNELS_VARIANT avx2
#include "cpu/kernels.cpp"
