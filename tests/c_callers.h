// Calls of the C API as a C program makes them, with any int where the API takes an enum.
// C lets a pa_dtype or pa_status hold any value of its integer type; C++ gives an enum only the
// values of its enumerators' bit width, and loading another one is undefined behaviour. So the
// tests and the fuzz target pass such ints through these C functions (c_callers.c), the way an
// application written in C (or a ctypes binding) reaches the library.
#pragma once

#include <stdint.h>

#include "proxyattn/proxyattn.h"

#ifdef __cplusplus
extern "C" {
#endif

const char* c_status_string(int32_t status);
pa_status c_to_float32(int32_t dtype, const void* src, int64_t count, float* dst);
pa_status c_from_float32(int32_t dtype, const float* src, int64_t count, void* dst);
/* The problem (config) with its dtype (budget_mode) field set to any int, then the call. */
pa_status c_plan_bytes_with_dtype(const pa_problem* problem, int32_t dtype, const pa_config* config, size_t* bytes);
pa_status c_plan_bytes_with_budget_mode(const pa_problem* problem, const pa_config* config, int32_t budget_mode,
                                        size_t* bytes);
/* The state with its dtype field set to any int, then pa_estimate_kv over it. */
pa_status c_estimate_kv_with_state_dtype(pa_plan* plan, const pa_tensor* q, const pa_kv_cache* kv, int32_t dtype,
                                         void* workspace, size_t workspace_bytes);

#ifdef __cplusplus
}
#endif
