/* See c_callers.h: the C API called from C with any int in its enums. */
#include "c_callers.h"

const char* c_status_string(int32_t status) { return pa_status_string((pa_status)status); }

pa_status c_to_float32(int32_t dtype, const void* src, int64_t count, float* dst) {
  return pa_to_float32((pa_dtype)dtype, src, count, dst);
}

pa_status c_from_float32(int32_t dtype, const float* src, int64_t count, void* dst) {
  return pa_from_float32((pa_dtype)dtype, src, count, dst);
}

pa_status c_plan_bytes_with_dtype(const pa_problem* problem, int32_t dtype, const pa_config* config, size_t* bytes) {
  pa_problem p = *problem;
  p.dtype = (pa_dtype)dtype;
  return pa_plan_bytes(&p, config, bytes);
}

pa_status c_plan_bytes_with_budget_mode(const pa_problem* problem, const pa_config* config, int32_t budget_mode,
                                        size_t* bytes) {
  pa_config c = *config;
  c.budget_mode = (pa_budget_mode)budget_mode;
  return pa_plan_bytes(problem, &c, bytes);
}

pa_status c_estimate_kv_with_state_dtype(pa_plan* plan, const pa_tensor* q, const pa_kv_cache* kv, int32_t dtype,
                                         void* workspace, size_t workspace_bytes) {
  pa_kv_cache c = *kv;
  pa_proxy_state state = *kv->proxy_state;
  state.dtype = (pa_dtype)dtype;
  c.proxy_state = &state;
  return pa_estimate_kv(plan, q, &c, workspace, workspace_bytes, NULL);
}
