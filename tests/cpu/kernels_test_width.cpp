// kernels.cpp with 64-byte vectors (AVX-512's width) under any instruction set, for
// test_kernels_portable: the width-dependent code (tiles, tails, the vector exp) of the
// AVX-512 variant checked on machines without AVX-512.
#define PROXYATTN_KERNELS_VARIANT test_width
#define PROXYATTN_KERNELS_VEC_BYTES 64
#include "cpu/kernels.cpp"
