// Speed settings of the GPU kernels (include/proxyattn/proxyattn_tuning.h): the defaults in
// one table with the reason beside each value, and their validation. Settings that change
// results are pa_config's (core/config.hpp); a tuning changes speed only (the kernel choice
// moves outputs within rounding, the other fields leave each output's arithmetic as it is).
// Carried by the plan (PlanDesc::tuning); the library reads no environment.
#pragma once

#include "proxyattn/proxyattn_tuning.h"

namespace proxyattn {

// Measurements: H100 SXM, bench/results (the files named below); docs/history.md has the runs.
constexpr pa_tuning default_tuning() {
  pa_tuning t{};
  // sm90 on compute capability 9.0 (wgmma + TMA: >= 1.6x the sm80 kernel at 14 of 25 points
  // at d = 128), sm80 elsewhere and for batches whose token count overflows the TMA's int32
  // coordinates.
  t.attn_kernel = PA_TUNING_KERNEL_AUTO;
  // The row chunks of one head per CTA, every warp on the same count: 2.98 / 13.8 ms
  // against 3.66 / 17.0 ms with the heads of a chunk packed (32K, density 0.1 / 0.5).
  t.attn_packing = PA_TUNING_PACKING_CHUNKS_OF_HEAD;
  // Automatic: sm90 chunks whose one KV head fills the GPU, at least 8 per launch (L2 holds
  // one KV head's K/V: +1% on average, +10-14% at 128K density 0.1, attention-sm90-chunks-*,
  // attention-sm90-v8-*); sm80 one row per chunk (chunks measured 2.4% slower: mma.sync, not
  // L2, limits it).
  t.attn_rows_per_chunk = 0;
  // Persistent CTAs taking items in order from a counter: the next item's Q load and
  // pipeline fill overlap the current one's tail; against one CTA per item 1-14% faster at
  // 12 of 15 points up to 32K, no consistent difference from 64K (attention-sm90-persistent-*).
  t.attn_persistent = 1;
  // Consumers take turns issuing their products (FA3's ping-pong): +0.5-2.6% on average
  // over five runs (attention-sm90-turns-*).
  t.attn_consumer_turns = 1;
  // d = 64: a row's heads by count, so a CTA's consumers hold heads of like counts:
  // 1.03-1.27x from 16K on uneven budgets, 2-5% slower at 8K-16K density <= 0.1
  // (attention-sm90-v21-*: sm90_unranked_ms).
  t.attn_rank_heads = 1;
  // One CTA per SM (its shared memory fills the SM); a cap is for tests only.
  t.attn_max_ctas = 0;
  // Block logits where b / s is 16 or 32 and they take <= 1 GiB: the proxy products once,
  // not twice: 1.10-1.61x faster estimation than the second pass.
  t.est_block_logits = 1;
  return t;
}

// PA_STATUS_INVALID_CONFIG with a message naming the first bad field ("tuning.<field> = ...").
pa_status validate_tuning(const pa_tuning& tuning);

}  // namespace proxyattn
