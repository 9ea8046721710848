// GPU attention (issue 4): not written yet. The API reports PA_STATUS_UNSUPPORTED.
#include "cuda/backend.hpp"
#include "core/status.hpp"

namespace proxyattn::cuda {

pa_status attend(const PlanDesc&, const pa_tensor&, const pa_tensor&, const pa_tensor&,
                 const pa_tensor&, float*, void*) {
  return fail(PA_STATUS_UNSUPPORTED, "pa_attend: the CUDA attention is not built yet");
}

pa_status dense_attention(const pa_problem&, float, const pa_tensor&, const pa_tensor&,
                          const pa_tensor&, const pa_tensor&, float*, void*) {
  return fail(PA_STATUS_UNSUPPORTED, "pa_dense_attention: the CUDA attention is not built yet");
}

}  // namespace proxyattn::cuda
