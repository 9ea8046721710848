// GPU estimation (issue 3): not written yet. The API reports PA_STATUS_UNSUPPORTED.
#include "cuda/backend.hpp"
#include "core/status.hpp"

namespace proxyattn::cuda {

size_t estimate_workspace_bytes(const PlanDesc&) { return 0; }

pa_status estimate(const PlanDesc&, const pa_tensor&, const pa_tensor&, void*, void*) {
  return fail(PA_STATUS_UNSUPPORTED, "pa_estimate: the CUDA estimation is not built yet");
}

}  // namespace proxyattn::cuda
