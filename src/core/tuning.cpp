#include "core/tuning.hpp"

#include "core/status.hpp"

namespace proxyattn {

namespace {

pa_status check_switch(const char* field, int32_t value) {
  if (value != 0 && value != 1)
    return fail(PA_STATUS_INVALID_CONFIG, "tuning.%s = %d: must be 0 or 1", field, value);
  return PA_STATUS_SUCCESS;
}

pa_status check_count(const char* field, int32_t value, const char* zero_means) {
  if (value < 0)
    return fail(PA_STATUS_INVALID_CONFIG, "tuning.%s = %d: must be >= 0 (0: %s)", field, value, zero_means);
  return PA_STATUS_SUCCESS;
}

}  // namespace

pa_status validate_tuning(const pa_tuning& t) {
  if (t.attn_kernel != PA_TUNING_KERNEL_AUTO && t.attn_kernel != PA_TUNING_KERNEL_SM80)
    return fail(PA_STATUS_INVALID_CONFIG,
                "tuning.attn_kernel = %d: must be PA_TUNING_KERNEL_AUTO (%d) or PA_TUNING_KERNEL_SM80 (%d)",
                t.attn_kernel, PA_TUNING_KERNEL_AUTO, PA_TUNING_KERNEL_SM80);
  if (t.attn_packing != PA_TUNING_PACKING_CHUNKS_OF_HEAD && t.attn_packing != PA_TUNING_PACKING_HEADS_OF_CHUNK)
    return fail(PA_STATUS_INVALID_CONFIG,
                "tuning.attn_packing = %d: must be PA_TUNING_PACKING_CHUNKS_OF_HEAD (%d) or "
                "PA_TUNING_PACKING_HEADS_OF_CHUNK (%d)",
                t.attn_packing, PA_TUNING_PACKING_CHUNKS_OF_HEAD, PA_TUNING_PACKING_HEADS_OF_CHUNK);
  PA_TRY(check_count("attn_rows_per_chunk", t.attn_rows_per_chunk, "automatic"));
  PA_TRY(check_switch("attn_persistent", t.attn_persistent));
  PA_TRY(check_switch("attn_consumer_turns", t.attn_consumer_turns));
  PA_TRY(check_switch("attn_rank_heads", t.attn_rank_heads));
  PA_TRY(check_count("attn_max_ctas", t.attn_max_ctas, "one per SM"));
  return check_switch("est_block_logits", t.est_block_logits);
}

}  // namespace proxyattn
