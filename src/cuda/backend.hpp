// The CUDA backend as the API layer sees it: plain C++ declarations, no CUDA types, so
// that nothing outside src/cuda includes a CUDA header. Every call is asynchronous on the
// caller's stream (a cudaStream_t passed as void*) except upload/download, which the
// plan's creation and inspection use.
#pragma once

#include <cstddef>

#include "core/given_budgets.hpp"
#include "core/plan.hpp"
#include "proxyattn/proxyattn.h"

namespace proxyattn::cuda {

// True when CUDA reports p as device (or managed) memory; false for host memory, for
// null, and when no CUDA device is present.
bool is_device_pointer(const void* p);

// Synchronous copies between host and device memory.
pa_status upload(void* device_dst, const void* host_src, size_t bytes);
pa_status download(void* host_dst, const void* device_src, size_t bytes);

// Whether the GPU attention can run this plan: dtype, head_dim, block size and sequence
// lengths, what the plan fixes (the tensors' alignment is checked per call). The estimation
// takes the same dtypes and head dims. pa_plan_create checks it when the storage is device
// memory, so that no device plan exists that the GPU would refuse for its shapes; pa_attend
// checks again. `call` names the API function in the message.
pa_status check_attend_supported(const char* call, const PlanDesc& plan);

// Bytes of device workspace pa_estimate needs for this plan (its shapes and tuning).
size_t estimate_workspace_bytes(const PlanDesc& plan);

// Fills the plan's block index (device memory) from Q and the keys of kv (packed or paged
// through kv.block_table; kv.v is not read) on `stream`, and writes the call's positions to
// kv.proxy_state when there is one (reading the prefix's from it). given: step 5's results from
// the caller (every sequence then runs sparse; copied to the device synchronously), or null.
pa_status estimate(const PlanDesc& plan, const pa_tensor& q, const pa_kv_cache& kv, void* workspace,
                   void* stream, const GivenBudgets* given = nullptr);

// Block-sparse attention over the plan's index on `stream`, with the plan's tuning. lse may
// be null.
pa_status attend(const PlanDesc& plan, const pa_tensor& q, const pa_kv_cache& kv, const pa_tensor& o,
                 float* lse, void* stream);

// Exact causal attention on `stream`, with the given tuning.
pa_status dense_attention(const pa_problem& problem, float scale, const pa_tuning& tuning,
                          const pa_tensor& q, const pa_tensor& k, const pa_tensor& v,
                          const pa_tensor& o, float* lse, void* stream);

}  // namespace proxyattn::cuda
