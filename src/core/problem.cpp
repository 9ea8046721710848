#include "core/problem.hpp"

#include <algorithm>

#include "core/enum_value.hpp"
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

namespace {

int64_t query_length(const pa_problem& p, int s) {
  return p.cu_seqlens ? int64_t(p.cu_seqlens[s + 1]) - p.cu_seqlens[s] : p.total_tokens;
}

// The chunked-prefill fields: key lengths of at least the query lengths, and the paged cache.
pa_status validate_keys(const pa_problem& p) {
  if (p.cu_seqlens_k == nullptr) {
    if (p.total_kv_tokens != 0 || p.page_size != 0 || p.num_pages != 0 || p.max_pages_per_seq != 0)
      return fail(PA_STATUS_NULL_POINTER,
                  "problem.cu_seqlens_k is NULL but problem.total_kv_tokens = %lld, page_size = %d, "
                  "num_pages = %d, max_pages_per_seq = %d are set (key lengths are needed for them)",
                  static_cast<long long>(p.total_kv_tokens), p.page_size, p.num_pages,
                  p.max_pages_per_seq);
    return PA_STATUS_SUCCESS;
  }
  if (p.total_kv_tokens < 0 || p.total_kv_tokens > kMaxTotalTokens)
    return fail(PA_STATUS_OVERFLOW, "problem.total_kv_tokens = %lld: must lie in [0, %lld]",
                static_cast<long long>(p.total_kv_tokens), static_cast<long long>(kMaxTotalTokens));
  if (p.cu_seqlens_k[0] != 0)
    return fail(PA_STATUS_INVALID_SEQLENS, "problem.cu_seqlens_k[0] = %d: must be 0", p.cu_seqlens_k[0]);
  for (int s = 0; s < p.num_seqs; ++s) {
    const int64_t kv_len = int64_t(p.cu_seqlens_k[s + 1]) - p.cu_seqlens_k[s];
    if (kv_len < 0)
      return fail(PA_STATUS_INVALID_SEQLENS,
                  "problem.cu_seqlens_k decreases at %d: cu_seqlens_k[%d] = %d > cu_seqlens_k[%d] = %d",
                  s + 1, s, p.cu_seqlens_k[s], s + 1, p.cu_seqlens_k[s + 1]);
    if (kv_len < query_length(p, s))
      return fail(PA_STATUS_INVALID_SEQLENS,
                  "sequence %d: q_len = %lld (problem.cu_seqlens) exceeds kv_len = %lld "
                  "(problem.cu_seqlens_k): the queries must be the last positions of their keys",
                  s, static_cast<long long>(query_length(p, s)), static_cast<long long>(kv_len));
  }
  if (p.cu_seqlens_k[p.num_seqs] != p.total_kv_tokens)
    return fail(PA_STATUS_INVALID_SEQLENS,
                "problem.cu_seqlens_k[%d] = %d differs from problem.total_kv_tokens = %lld", p.num_seqs,
                p.cu_seqlens_k[p.num_seqs], static_cast<long long>(p.total_kv_tokens));
  if (p.page_size == 0) {
    if (p.num_pages != 0 || p.max_pages_per_seq != 0)
      return fail(PA_STATUS_INVALID_SHAPE,
                  "problem.num_pages = %d, max_pages_per_seq = %d with problem.page_size = 0 (packed "
                  "keys): set page_size for a paged cache", p.num_pages, p.max_pages_per_seq);
    return PA_STATUS_SUCCESS;
  }
  if (p.page_size < 0 || p.num_pages < 1 || p.max_pages_per_seq < 1)
    return fail(PA_STATUS_INVALID_SHAPE,
                "problem.page_size = %d, num_pages = %d, max_pages_per_seq = %d: a paged cache needs "
                "all three >= 1", p.page_size, p.num_pages, p.max_pages_per_seq);
  if (int64_t(p.page_size) * p.num_pages > kMaxTotalTokens)
    return fail(PA_STATUS_OVERFLOW, "problem.page_size = %d x num_pages = %d exceeds %lld cache rows",
                p.page_size, p.num_pages, static_cast<long long>(kMaxTotalTokens));
  for (int s = 0; s < p.num_seqs; ++s) {
    const int64_t kv_len = int64_t(p.cu_seqlens_k[s + 1]) - p.cu_seqlens_k[s];
    if (kv_len > int64_t(p.page_size) * p.max_pages_per_seq)
      return fail(PA_STATUS_INVALID_SHAPE,
                  "sequence %d: kv_len = %lld needs %lld pages of %d tokens but the block table has "
                  "problem.max_pages_per_seq = %d", s, static_cast<long long>(kv_len),
                  static_cast<long long>(ceil_div(kv_len, p.page_size)), p.page_size,
                  p.max_pages_per_seq);
  }
  return PA_STATUS_SUCCESS;
}

}  // namespace

bool is_chunked(const pa_problem& p) { return p.cu_seqlens_k != nullptr; }
bool is_paged(const pa_problem& p) { return p.page_size > 0; }

int64_t kv_rows(const pa_problem& p) {
  if (is_paged(p)) return int64_t(p.page_size) * p.num_pages;
  return is_chunked(p) ? p.total_kv_tokens : p.total_tokens;
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
  const int32_t dtype = raw_value(p->dtype);  // any int a C caller stored
  if (dtype != PA_DTYPE_FLOAT32 && dtype != PA_DTYPE_FLOAT16 && dtype != PA_DTYPE_BFLOAT16)
    return fail(PA_STATUS_INVALID_SHAPE, "problem.dtype = %d: not a pa_dtype", dtype);
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
    return validate_keys(*p);
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
  return validate_keys(*p);
}

pa_status validate_tensor(const pa_tensor* t, const char* name, const pa_problem& p, int heads,
                          int64_t tokens) {
  if (tokens < 0) tokens = p.total_tokens;
  if (t == nullptr) return fail(PA_STATUS_NULL_POINTER, "%s is NULL", name);
  if (t->data == nullptr && tokens > 0)
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
  // Every element's offset, up to the last one at (T-1) token_stride + (H-1) head_stride +
  // d - 1, in bytes, must fit int64: the backends compute offsets in int64 (and the overlap
  // check below multiplies the strides). Worked out in 128 bits, where it cannot overflow.
  const __int128 extent = __int128(std::max<int64_t>(tokens, 1) - 1) * t->token_stride +
                          __int128(heads - 1) * t->head_stride + d;
  if (extent * dtype_bytes(p.dtype) > INT64_MAX)
    return fail(PA_STATUS_OVERFLOW,
                "%s.token_stride = %lld, %s.head_stride = %lld: the offsets of %lld tokens x %d heads "
                "overflow int64", name, static_cast<long long>(t->token_stride), name,
                static_cast<long long>(t->head_stride), static_cast<long long>(tokens), heads);
  const bool token_major = t->token_stride >= t->head_stride;
  const int64_t inner_count = token_major ? heads : std::max<int64_t>(tokens, 1);
  const int64_t inner_stride = token_major ? t->head_stride : t->token_stride;
  const int64_t outer_stride = token_major ? t->token_stride : t->head_stride;
  const int64_t span = (inner_count - 1) * inner_stride + d;
  if (inner_stride < d || (outer_stride < span && (token_major ? tokens > 1 : heads > 1)))
    return fail(PA_STATUS_INVALID_SHAPE,
                "%s.token_stride = %lld, %s.head_stride = %lld: rows of %d heads x %lld tokens "
                "(head_dim %lld) overlap", name, static_cast<long long>(t->token_stride), name,
                static_cast<long long>(t->head_stride), heads,
                static_cast<long long>(tokens), static_cast<long long>(d));
  if (tokens > 0 && t->token_stride > INT64_MAX / tokens)
    return fail(PA_STATUS_OVERFLOW, "%s.token_stride = %lld times %lld tokens overflows int64",
                name, static_cast<long long>(t->token_stride),
                static_cast<long long>(tokens));
  return PA_STATUS_SUCCESS;
}

BatchLayout make_batch_layout(const pa_problem& p, int block_size, int groups) {
  BatchLayout layout;
  layout.seqs.resize(p.num_seqs);
  layout.kblock_begin.resize(p.num_seqs);
  int64_t qblock = 0, kblock = 0, order = 0;
  for (int s = 0; s < p.num_seqs; ++s) {
    SeqSpan& span = layout.seqs[s];
    const int64_t begin = p.cu_seqlens ? p.cu_seqlens[s] : 0;
    const int64_t end = p.cu_seqlens ? p.cu_seqlens[s + 1] : p.total_tokens;
    span.token_begin = begin;
    span.length = static_cast<int32_t>(end - begin);
    span.index = s;
    span.kv_begin = static_cast<int32_t>(is_chunked(p) && !is_paged(p) ? p.cu_seqlens_k[s] : is_chunked(p) ? 0 : begin);
    span.kv_length = is_chunked(p) ? p.cu_seqlens_k[s + 1] - p.cu_seqlens_k[s] : span.length;
    const int32_t kblocks = static_cast<int32_t>(ceil_div(span.kv_length, block_size));
    span.first_qblock = span.length > 0 ? static_cast<int32_t>(span.query_offset() / block_size) : kblocks;
    span.num_qblocks = kblocks - span.first_qblock;
    span.qblock_begin = qblock;
    span.order_begin = order;
    layout.kblock_begin[s] = kblock;
    qblock += span.num_qblocks;
    kblock += span.short_chunk(block_size) ? span.num_qblocks : span.num_kblocks();
    order += groups * span.group_entries();
    layout.max_length = std::max(layout.max_length, span.length);
    layout.max_kv_length = std::max(layout.max_kv_length, span.kv_length);
    layout.chunked = layout.chunked || span.chunked();
  }
  layout.total_qblocks = qblock;
  layout.total_kblocks = kblock;
  layout.order_entries = order;
  return layout;
}

}  // namespace proxyattn
