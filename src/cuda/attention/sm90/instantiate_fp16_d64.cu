// One compiled variant of the sm90 attention kernel per file (compiled for sm_90a only, see
// src/cuda/CMakeLists.txt), so that builds compile the variants in parallel. Generated
// pattern: dtype x head_dim, see params.hpp.
#include "attention/sm90/launch.cuh"

namespace proxyattn::cuda::attention {
template pa_status run_sm90<PA_DTYPE_FLOAT16, 64>(const Params&, int64_t, const pa_tuning&, void*);
}  // namespace proxyattn::cuda::attention
