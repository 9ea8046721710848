// Run-time choice of the CPU kernels' instruction set (kernels.hpp): the widest variant of
// kernels.cpp compiled into this build that this CPU runs, taken at the first call.
#include <atomic>

#include "cpu/kernels.hpp"

namespace proxyattn::cpu {

#define PROXYATTN_DECLARE_KERNELS(ns)                                                             \
  namespace ns {                                                                                  \
  const char* name();                                                                             \
  void gemm_accumulate(const float* A, int lda, const float* B, int ldb, float* C, int ldc, int M, \
                       int N, int K);                                                             \
  float sum(const float* x, int n);                                                               \
  float max_of(const float* x, int n, float init);                                                \
  void exp_shifted(float* x, int n, float shift);                                                 \
  void softmax_fold(float* tile, int ld, int rows, int cols, float* row_max, float* row_sum,      \
                    float* correction);                                                           \
  }
PROXYATTN_DECLARE_KERNELS(baseline)
#if PROXYATTN_KERNELS_AVX2
PROXYATTN_DECLARE_KERNELS(avx2)
#endif
#if PROXYATTN_KERNELS_AVX512
PROXYATTN_DECLARE_KERNELS(avx512)
#endif

namespace {

struct Kernels {
  const char* (*name)();
  decltype(&baseline::gemm_accumulate) gemm_accumulate;
  decltype(&baseline::sum) sum;
  decltype(&baseline::max_of) max_of;
  decltype(&baseline::exp_shifted) exp_shifted;
  decltype(&baseline::softmax_fold) softmax_fold;
};
#define PROXYATTN_KERNELS(ns) \
  Kernels { &ns::name, &ns::gemm_accumulate, &ns::sum, &ns::max_of, &ns::exp_shifted, &ns::softmax_fold }

// Indexed by KernelIsa; a variant not compiled in has no functions.
const Kernels kVariants[kNumKernelIsas] = {
    PROXYATTN_KERNELS(baseline),
#if PROXYATTN_KERNELS_AVX2
    PROXYATTN_KERNELS(avx2),
#else
    Kernels{},
#endif
#if PROXYATTN_KERNELS_AVX512
    PROXYATTN_KERNELS(avx512),
#else
    Kernels{},
#endif
};

bool cpu_runs(KernelIsa isa) {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();  // checks the OS saves the registers (XGETBV) besides CPUID
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  switch (isa) {
    case KernelIsa::kBaseline: return true;
    case KernelIsa::kAvx2: return avx2;
    case KernelIsa::kAvx512: return avx2 && __builtin_cpu_supports("avx512f");
  }
  return false;
#else
  return isa == KernelIsa::kBaseline;
#endif
}

std::atomic<const Kernels*> g_active{nullptr};

const Kernels& active() {
  const Kernels* k = g_active.load(std::memory_order_acquire);
  if (k != nullptr) return *k;
  for (int i = kNumKernelIsas - 1; i >= 0; --i) {
    if (kernel_isa_available(KernelIsa(i))) {
      k = &kVariants[i];
      break;
    }
  }
  g_active.store(k, std::memory_order_release);  // a race stores the same choice
  return *k;
}

}  // namespace

bool kernel_isa_available(KernelIsa isa) {
  const int i = int(isa);
  return i >= 0 && i < kNumKernelIsas && kVariants[i].name != nullptr && cpu_runs(isa);
}

KernelIsa kernel_isa() { return KernelIsa(&active() - kVariants); }

const char* kernel_isa_name(KernelIsa isa) {
  const int i = int(isa);
  return i >= 0 && i < kNumKernelIsas && kVariants[i].name != nullptr ? kVariants[i].name() : "none";
}

bool set_kernel_isa(KernelIsa isa) {
  if (!kernel_isa_available(isa)) return false;
  g_active.store(&kVariants[int(isa)], std::memory_order_release);
  return true;
}

void gemm_accumulate(const float* A, int lda, const float* B, int ldb, float* C, int ldc, int M,
                     int N, int K) {
  active().gemm_accumulate(A, lda, B, ldb, C, ldc, M, N, K);
}
float sum(const float* x, int n) { return active().sum(x, n); }
float max_of(const float* x, int n, float init) { return active().max_of(x, n, init); }
void exp_shifted(float* x, int n, float shift) { active().exp_shifted(x, n, shift); }
void softmax_fold(float* tile, int ld, int rows, int cols, float* row_max, float* row_sum,
                  float* correction) {
  active().softmax_fold(tile, ld, rows, cols, row_max, row_sum, correction);
}

}  // namespace proxyattn::cpu
