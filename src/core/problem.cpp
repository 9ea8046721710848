#include "core/problem.hpp"

#include <algorithm>

#include "core/status.hpp"

namespace proxyattn {

int dtype_bytes(pa_dtype dtype) { return dtype == PA_DTYPE_FLOAT32 ? 4 : 2; }

const char* dtype_name(pa_dtype dtype) {
  switch (dtype) {
    case PA_DTYPE_FLOAT32: return "float32";
    case PA_DTYPE_FLOAT16: return "float16";
    case PA_DTYPE_BFLOAT16: return "bfloat16";
  }
  return "unknown";
}

pa_status validate_problem(const pa_problem* p) {
  if (p == nullptr) return fail(PA_STATUS_NULL_POINTER, "problem is NULL");
  if (p->num_q_heads < 1 || p->num_kv_heads < 1)
    return fail(PA_STATUS_INVALID_SHAPE, "problem.num_q_heads = %d, problem.num_kv_heads = %d: "
                "both must be >= 1", p->num_q_heads, p->num_kv_heads);
  if (p->num_q_heads % p->num_kv_heads != 0)
    return fail(PA_STATUS_INVALID_SHAPE,
                "problem.num_q_heads = %d is not a multiple of problem.num_kv_heads = %d",
                p->num_q_heads, p->num_kv_heads);
  if (p->head_dim < 1 || p->head_dim > kMaxHeadDim)
    return fail(PA_STATUS_INVALID_SHAPE, "problem.head_dim = %d: must lie in [1, %d]",
                p->head_dim, kMaxHeadDim);
  if (p->dtype != PA_DTYPE_FLOAT32 && p->dtype != PA_DTYPE_FLOAT16 &&
      p->dtype != PA_DTYPE_BFLOAT16)
    return fail(PA_STATUS_INVALID_SHAPE, "problem.dtype = %d: not a pa_dtype",
                static_cast<int>(p->dtype));
  if (p->total_tokens < 0)
    return fail(PA_STATUS_INVALID_SHAPE, "problem.total_tokens = %lld: must be >= 0",
                static_cast<long long>(p->total_tokens));
  if (p->total_tokens > kMaxTotalTokens)
    return fail(PA_STATUS_OVERFLOW, "problem.total_tokens = %lld exceeds the int32 token offsets "
                "of cu_seqlens (max %lld)", static_cast<long long>(p->total_tokens),
                static_cast<long long>(kMaxTotalTokens));
  if (p->num_seqs < 1)
    return fail(PA_STATUS_INVALID_SHAPE, "problem.num_seqs = %d: must be >= 1", p->num_seqs);
  if (p->cu_seqlens == nullptr) {
    if (p->num_seqs != 1)
      return fail(PA_STATUS_NULL_POINTER,
                  "problem.cu_seqlens is NULL with problem.num_seqs = %d (NULL needs num_seqs = 1)",
                  p->num_seqs);
    return PA_STATUS_SUCCESS;
  }
  if (p->cu_seqlens[0] != 0)
    return fail(PA_STATUS_INVALID_SEQLENS, "problem.cu_seqlens[0] = %d: must be 0", p->cu_seqlens[0]);
  for (int s = 0; s < p->num_seqs; ++s) {
    if (p->cu_seqlens[s + 1] < p->cu_seqlens[s])
      return fail(PA_STATUS_INVALID_SEQLENS,
                  "problem.cu_seqlens decreases at %d: cu_seqlens[%d] = %d > cu_seqlens[%d] = %d",
                  s + 1, s, p->cu_seqlens[s], s + 1, p->cu_seqlens[s + 1]);
  }
  if (p->cu_seqlens[p->num_seqs] != p->total_tokens)
    return fail(PA_STATUS_INVALID_SEQLENS,
                "problem.cu_seqlens[%d] = %d differs from problem.total_tokens = %lld", p->num_seqs,
                p->cu_seqlens[p->num_seqs], static_cast<long long>(p->total_tokens));
  return PA_STATUS_SUCCESS;
}

pa_status validate_tensor(const pa_tensor* t, const char* name, const pa_problem& p, int heads) {
  if (t == nullptr) return fail(PA_STATUS_NULL_POINTER, "%s is NULL", name);
  if (t->data == nullptr && p.total_tokens > 0)
    return fail(PA_STATUS_NULL_POINTER, "%s.data is NULL", name);
  const int64_t d = p.head_dim;
  if (t->head_stride < d)
    return fail(PA_STATUS_INVALID_SHAPE, "%s.head_stride = %lld: must be >= head_dim = %lld", name,
                static_cast<long long>(t->head_stride), static_cast<long long>(d));
  // Distinct (token, head) rows must not overlap: the larger stride has to step over all
  // rows of the smaller one (token-major [T, H, d] or head-major [H, T, d] layouts).
  if (t->token_stride < 0)
    return fail(PA_STATUS_INVALID_SHAPE, "%s.token_stride = %lld: must be >= 0", name,
                static_cast<long long>(t->token_stride));
  const bool token_major = t->token_stride >= t->head_stride;
  const int64_t inner_count = token_major ? heads : std::max<int64_t>(p.total_tokens, 1);
  const int64_t inner_stride = token_major ? t->head_stride : t->token_stride;
  const int64_t outer_stride = token_major ? t->token_stride : t->head_stride;
  const int64_t span = (inner_count - 1) * inner_stride + d;
  if (inner_stride < d || (outer_stride < span && (token_major ? p.total_tokens > 1 : heads > 1)))
    return fail(PA_STATUS_INVALID_SHAPE,
                "%s.token_stride = %lld, %s.head_stride = %lld: rows of %d heads x %lld tokens "
                "(head_dim %lld) overlap", name, static_cast<long long>(t->token_stride), name,
                static_cast<long long>(t->head_stride), heads,
                static_cast<long long>(p.total_tokens), static_cast<long long>(d));
  if (p.total_tokens > 0 && t->token_stride > INT64_MAX / p.total_tokens)
    return fail(PA_STATUS_OVERFLOW, "%s.token_stride = %lld times %lld tokens overflows int64",
                name, static_cast<long long>(t->token_stride),
                static_cast<long long>(p.total_tokens));
  return PA_STATUS_SUCCESS;
}

BatchLayout make_batch_layout(const pa_problem& p, int block_size, int groups) {
  BatchLayout layout;
  layout.seqs.resize(p.num_seqs);
  int64_t qblock = 0, order = 0;
  for (int s = 0; s < p.num_seqs; ++s) {
    SeqSpan& span = layout.seqs[s];
    const int64_t begin = p.cu_seqlens ? p.cu_seqlens[s] : 0;
    const int64_t end = p.cu_seqlens ? p.cu_seqlens[s + 1] : p.total_tokens;
    span.token_begin = begin;
    span.length = static_cast<int32_t>(end - begin);
    span.num_qblocks = static_cast<int32_t>(ceil_div(span.length, block_size));
    span.qblock_begin = qblock;
    span.order_begin = order;
    qblock += span.num_qblocks;
    order += groups * triangle(span.num_qblocks);
    layout.max_length = std::max(layout.max_length, span.length);
  }
  layout.total_qblocks = qblock;
  layout.order_entries = order;
  return layout;
}

}  // namespace proxyattn
