// Deterministic structured long-context attention inputs (docs/design.md,
// "Structured inputs"): sinks, a local band, vertical columns, slash diagonals and
// retrieval needles, with per-head strengths so that heads need different budgets.
#pragma once

#include "proxyattn/proxyattn.h"

namespace proxyattn::synth {

pa_synth_params default_params(uint64_t seed);

// Contiguous Q [T, Hq, d], K and V [T, Hkv, d] on the host, in problem.dtype. Each
// sequence of the batch is generated on its own from (seed, sequence index).
pa_status generate(const pa_problem& problem, const pa_synth_params& params, void* q, void* k,
                   void* v);

}  // namespace proxyattn::synth
