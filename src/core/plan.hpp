// What a backend needs to know about a plan: the problem, the config, the tuning and where
// the block index lives. The C API's opaque pa_plan wraps one of these.
#pragma once

#include "core/block_index.hpp"
#include "core/config.hpp"
#include "core/problem.hpp"
#include "core/tuning.hpp"
#include "proxyattn/proxyattn.h"

namespace proxyattn {

struct PlanDesc {
  pa_problem problem;     // cu_seqlens points into batch-independent storage of the owner
  pa_config config;
  pa_tuning tuning = default_tuning();  // speed only; sizes the GPU estimation's workspace
  BatchLayout batch;
  IndexArrays index;      // in the memory space of the tensors
  StorageLayout storage;

  int groups() const { return config.num_proxy_groups; }
  int q_heads_per_group() const { return problem.num_q_heads / config.num_proxy_groups; }
  int kv_heads_per_group() const { return problem.num_kv_heads / config.num_proxy_groups; }
  int q_heads_per_kv() const { return problem.num_q_heads / problem.num_kv_heads; }
  // Dense: keys below dense_below, or a chunk of fewer queries than a block (a decode step),
  // whose estimation would cost more than it saves (ALGORITHM.md, "Chunked prefill").
  bool runs_dense(const SeqSpan& span) const {
    return span.kv_length < config.dense_below || span.short_chunk(config.block_size);
  }
  bool paged() const { return problem.page_size > 0; }
};

// The plan of a validated problem and config at the default tuning, its index not bound to
// storage yet (pa_plan_create binds it).
inline PlanDesc describe_plan(const pa_problem& problem, const pa_config& config) {
  PlanDesc d;
  d.problem = problem;
  d.config = resolve_config(config, problem);
  d.batch = make_batch_layout(problem, config.block_size, config.num_proxy_groups);
  d.storage = storage_layout(d.batch, problem.num_q_heads, problem.num_seqs, d.config.anchor_blocks);
  return d;
}

}  // namespace proxyattn
