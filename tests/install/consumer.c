/* A C program against the installed proxyattn (tests/install/install_test.sh builds it with
 * find_package and with pkg-config): ProxyAttn and dense attention on the CPU backend, the
 * sparse output close to the dense one at gamma = 1 (every block kept). */
#include <stdio.h>
#include <stdlib.h>

#include "proxyattn/proxyattn.h"

#define CHECK(call)                                                                  \
  do {                                                                               \
    pa_status s_ = (call);                                                           \
    if (s_ != PA_STATUS_SUCCESS) {                                                   \
      fprintf(stderr, "%s: %s (%s)\n", #call, pa_status_string(s_), pa_last_error()); \
      return 1;                                                                      \
    }                                                                                \
  } while (0)

int main(void) {
  enum { N = 1024, HQ = 4, HKV = 2, D = 64 };
  pa_problem p = {0};
  p.num_seqs = 1;
  p.total_tokens = N;
  p.num_q_heads = HQ;
  p.num_kv_heads = HKV;
  p.head_dim = D;
  p.dtype = PA_DTYPE_FLOAT32;
  float* q = malloc(sizeof(float) * N * HQ * D);
  float* k = malloc(sizeof(float) * N * HKV * D);
  float* v = malloc(sizeof(float) * N * HKV * D);
  float* o = malloc(sizeof(float) * N * HQ * D);
  float* o_dense = malloc(sizeof(float) * N * HQ * D);
  const pa_synth_params synth = pa_synth_default(7);
  CHECK(pa_synth_generate(&p, &synth, q, k, v));

  pa_config config = pa_config_default(D);
  config.gamma = 1.0f;
  config.block_size = 64;
  config.min_budget_tokens = 0;
  config.dense_below = 0;
  size_t plan_bytes = 0, ws_bytes = 0;
  CHECK(pa_plan_bytes(&p, &config, &plan_bytes));
  CHECK(pa_workspace_bytes(&p, &config, &ws_bytes));
  void* storage = malloc(plan_bytes);
  void* workspace = malloc(ws_bytes > 0 ? ws_bytes : 1);
  pa_plan* plan = NULL;
  CHECK(pa_plan_create(&p, &config, storage, plan_bytes, &plan));
  pa_tensor tq = pa_tensor_contiguous(q, HQ, D), tk = pa_tensor_contiguous(k, HKV, D);
  pa_tensor tv = pa_tensor_contiguous(v, HKV, D), to = pa_tensor_contiguous(o, HQ, D);
  pa_tensor td = pa_tensor_contiguous(o_dense, HQ, D);
  CHECK(pa_forward(plan, &tq, &tk, &tv, &to, NULL, workspace, ws_bytes, NULL));
  CHECK(pa_dense_attention(&p, config.softmax_scale, &tq, &tk, &tv, &td, NULL, NULL));
  pa_plan_stats stats;
  CHECK(pa_plan_get_stats(plan, &stats));
  double err = 0.0;
  for (long i = 0; i < (long)N * HQ * D; ++i) {  /* no libm: the program needs only the library */
    const double e = (double)o[i] - o_dense[i];
    if (e > err || -e > err) err = e > 0 ? e : -e;
  }
  pa_plan_free(plan);
  printf("proxyattn %d.%d.%d from C: N=%d, density %.3f, max |sparse - dense| %.2e\n",
         PROXYATTN_VERSION_MAJOR, PROXYATTN_VERSION_MINOR, PROXYATTN_VERSION_PATCH, N, stats.density, err);
  free(q); free(k); free(v); free(o); free(o_dense); free(storage); free(workspace);
  if (!(stats.density == 1.0 && err < 1e-4)) {
    fprintf(stderr, "unexpected: density %g (want 1), error %g (want < 1e-4)\n", stats.density, err);
    return 1;
  }
  return 0;
}
