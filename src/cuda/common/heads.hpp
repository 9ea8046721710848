// Head arithmetic of grouped-query attention shared by the attention kernels, their
// dispatcher and the estimation: the Q heads that read one KV head (a KV group). Local head
// h of KV head kv is Q head kv * q_heads_per_kv + h. Plain C++ (host and device).
#pragma once

#include "core/problem.hpp"  // PA_HOST_DEVICE

namespace proxyattn::cuda {

// Shape: anything with num_q_heads and num_kv_heads (attention::Params, est::Geometry).
template <typename Shape>
PA_HOST_DEVICE inline int q_heads_per_kv(const Shape& shape) {
  return shape.num_q_heads / shape.num_kv_heads;
}

}  // namespace proxyattn::cuda
