// One compiled variant of the sm80 attention kernel per file, so that builds compile the
// variants in parallel. Generated pattern: dtype x head_dim, see params.hpp.
#include "attention/sm80/launch.cuh"

namespace proxyattn::cuda::attention {
template pa_status run_sm80<PA_DTYPE_BFLOAT16, 128>(const Params&, int64_t, const pa_tuning&, void*);
}  // namespace proxyattn::cuda::attention
