/*
 * proxyattn: ProxyAttn block-sparse attention for the prefill of long prompts.
 *
 * C API. Every call returns a pa_status; on failure the message of pa_last_error()
 * names the offending argument, and no output buffer has been written.
 *
 * Tensors are packed varlen batches, the flash-attn convention:
 *   Q [total_tokens, num_q_heads, head_dim], K and V [total_tokens, num_kv_heads, head_dim],
 *   O like Q, LSE float32 [num_q_heads, total_tokens].
 * Sequence s occupies tokens [cu_seqlens[s], cu_seqlens[s+1]). head_dim is contiguous;
 * token and head strides are given in elements.
 *
 * Chunked prefill (problem.cu_seqlens_k set): sequence s has q_len queries and kv_len >= q_len
 * keys, and its queries are the last q_len positions of the sequence (flash-attn's
 * bottom-right causal alignment). Keys and values are then packed by cu_seqlens_k, or read
 * from a paged cache through a block table (problem.page_size > 0, pa_kv_cache).
 *
 * Memory: the caller owns every buffer. A plan lives in caller storage of pa_plan_bytes()
 * bytes, scratch work in a workspace of pa_workspace_bytes() bytes. Both sit in the same
 * memory space as the tensors (host for the CPU backend).
 *
 * Pipeline: pa_estimate (Q, K -> plan), pa_attend (Q, K, V, plan -> O, LSE);
 * pa_forward does both. pa_dense_attention is the exact causal baseline.
 */
#ifndef PROXYATTN_PROXYATTN_H
#define PROXYATTN_PROXYATTN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define PROXYATTN_VERSION_MAJOR 0
#define PROXYATTN_VERSION_MINOR 1
#define PROXYATTN_VERSION_PATCH 0

/* ---- status ------------------------------------------------------------------------ */
typedef enum pa_status {
  PA_STATUS_SUCCESS = 0,
  PA_STATUS_NULL_POINTER = 1,        /* a required pointer argument is NULL */
  PA_STATUS_INVALID_SHAPE = 2,       /* head counts, head_dim, strides or token counts */
  PA_STATUS_INVALID_CONFIG = 3,      /* a pa_config field out of range */
  PA_STATUS_INVALID_SEQLENS = 4,     /* cu_seqlens not starting at 0, decreasing, wrong total */
  PA_STATUS_OVERFLOW = 5,            /* a length or offset does not fit the index types */
  PA_STATUS_UNSUPPORTED = 6,         /* valid request this build or device cannot run */
  PA_STATUS_BUFFER_TOO_SMALL = 7,    /* plan storage or workspace smaller than required */
  PA_STATUS_PLAN_MISMATCH = 8,       /* a plan used with tensors it was not made for, or
                                        attended before it was estimated */
  PA_STATUS_CUDA_ERROR = 9,          /* a CUDA runtime call or launch failed */
  PA_STATUS_INTERNAL = 10,           /* an invariant of the library failed (a bug) */
  PA_STATUS_OUT_OF_MEMORY = 11,      /* a host allocation of the library failed */
  PA_STATUS_MEMORY_SPACE = 12        /* buffers of one call in different memory spaces
                                        (host and device), or device memory in a CPU-only build */
} pa_status;

/* Human-readable name of a status ("PA_STATUS_INVALID_SHAPE"). Never NULL. */
const char* pa_status_string(pa_status status);

/* Message of the last failed call on this thread ("" after a success). Never NULL. */
const char* pa_last_error(void);

/* ---- problem description ------------------------------------------------------------ */
typedef enum pa_dtype {
  PA_DTYPE_FLOAT32 = 0,
  PA_DTYPE_FLOAT16 = 1,
  PA_DTYPE_BFLOAT16 = 2
} pa_dtype;

typedef struct pa_problem {
  int32_t num_seqs;            /* sequences in the batch, >= 1 */
  const int32_t* cu_seqlens;   /* [num_seqs + 1] prefix sums of query lengths, HOST memory;
                                  NULL allowed only with num_seqs == 1 (one sequence) */
  int64_t total_tokens;        /* sum of query lengths, < 2^31 */
  int32_t num_q_heads;         /* Hq */
  int32_t num_kv_heads;        /* Hkv, divides Hq */
  int32_t head_dim;            /* d: 64 or 128 on the GPU, any of 1..256 on the CPU */
  pa_dtype dtype;              /* element type of Q, K, V and O */
  /* Chunked prefill; all zero (the default of a designated initializer) for a whole prompt. */
  const int32_t* cu_seqlens_k; /* NULL: every sequence's keys are its queries. Else [num_seqs + 1]
                                  prefix sums of key lengths kv_len >= q_len, HOST memory */
  int64_t total_kv_tokens;     /* cu_seqlens_k[num_seqs] (rows of packed K and V) */
  int32_t page_size;           /* 0: K and V packed [total_kv_tokens, Hkv, d] by cu_seqlens_k;
                                  > 0: K and V are a paged cache of pages of this many tokens,
                                  read through a block table (a multiple of config.stride with
                                  an estimation state) */
  int32_t num_pages;           /* pages of the cache: K and V are [num_pages * page_size, Hkv, d] */
  int32_t max_pages_per_seq;   /* columns of the block table; page_size * max_pages_per_seq
                                  >= every kv_len */
} pa_problem;

/* A strided view of [tokens, heads, head_dim]; elements of head_dim are contiguous. The
 * library cannot see its extent: it reads and writes the tokens the problem gives. data is
 * aligned to the element size; outputs (O, LSE) overlap no input (PA_STATUS_INVALID_SHAPE). */
typedef struct pa_tensor {
  void* data;
  int64_t token_stride;        /* elements between consecutive tokens (>= heads * head_dim
                                  when head_stride == head_dim) */
  int64_t head_stride;         /* elements between consecutive heads (>= head_dim) */
} pa_tensor;

/* A contiguous [tokens, heads, head_dim] view. */
pa_tensor pa_tensor_contiguous(void* data, int32_t num_heads, int32_t head_dim);

/* ---- configuration (ALGORITHM.md, "Parameters") ------------------------------------- */
typedef enum pa_budget_mode {
  PA_BUDGET_ABSOLUTE = 0,      /* row m keeps min(m+1, K_i) blocks (the paper's literal K) */
  PA_BUDGET_PROPORTIONAL = 1   /* row m keeps min(m+1, max(Kmin, ceil(r_i * (m+1)))) */
} pa_budget_mode;

/* How a group's anchors (anchor_blocks) enter each head's kept blocks (ALGORITHM.md step 6;
 * docs/design.md, issue #28). The order row is the same in both modes (forced blocks first:
 * sink, diagonal and the group's anchors, ascending; then the rest by proxy score); only the
 * counts differ. */
typedef enum pa_anchor_mode {
  PA_ANCHORS_ON_TOP = 0,       /* the default (pa_config_default): each head keeps its
                                  anchor-free kept set (the blocks its budget takes with only
                                  the sink and the diagonal forced) plus the group's anchors;
                                  no ranked block is ever displaced by an anchor
                                  (docs/accuracy.md: recall >= gamma at small floors) */
  PA_ANCHORS_IN_BUDGET = 1     /* the anchors are counted in the head's budget (the rule
                                  before issue #28) */
} pa_anchor_mode;

/* How step 5 counts each head's blocks (ALGORITHM.md step 5; docs/design.md, issue #28). */
typedef enum pa_budget_rule {
  PA_BUDGET_RULE_PAPER = 0,    /* count_i from the head's own masses of the last query block,
                                  sorted (the paper's rule) */
  PA_BUDGET_RULE_RANKED = 1    /* count_i at least the paper's and at least the fewest leading
                                  entries of its group's proxy ranking of the last query block
                                  (sink and diagonal first, no anchors) whose masses reach
                                  1 - ranked_slack * (1 - gamma) of the head's mass there: the
                                  budget serves the blocks the rows actually keep */
} pa_budget_rule;

typedef struct pa_config {
  int32_t block_size;          /* b: 128 or 64, queries and keys */
  int32_t stride;              /* s: 1, 2, 4, 8 or 16 and s <= b; sampled positions t % s == 0 */
  float gamma;                 /* attention mass each head's budget must cover, in (0, 1] */
  int32_t min_budget_tokens;   /* floor of every head's budget, >= 0 */
  int32_t num_proxy_groups;    /* g, divides num_kv_heads */
  int32_t force_sink;          /* 1: block 0 always kept */
  int32_t force_local;         /* 1: the diagonal block always kept */
  pa_budget_mode budget_mode;
  int32_t dense_below;         /* sequences shorter than this run dense, >= 0 */
  float softmax_scale;         /* > 0; pa_config_default sets 1/sqrt(head_dim) */
  int32_t anchor_blocks;       /* T in [0, PA_MAX_ANCHOR_BLOCKS], or PA_ANCHOR_BLOCKS_AUTO (the
                                  default): each head's T key blocks of largest mass in the last
                                  query block (step 5; blocks already forced there excluded) are
                                  forced in every row of its group (anchor_mode says how they
                                  are counted) */
  pa_anchor_mode anchor_mode;  /* PA_ANCHORS_ON_TOP (the default) or PA_ANCHORS_IN_BUDGET */
  int32_t budget_rows;         /* R in [1, PA_MAX_BUDGET_ROWS]: step 5's count_i is the largest
                                  over the query blocks round(Nqb j / R) - 1, j = 1..R (each over
                                  its own causal key blocks); 1 (the default): the last query
                                  block only (the paper's rule). The anchors always come from
                                  the last block */
  pa_budget_rule budget_rule;  /* PA_BUDGET_RULE_PAPER or PA_BUDGET_RULE_RANKED */
  float ranked_slack;          /* s >= 1, PA_BUDGET_RULE_RANKED's target 1 - s (1 - gamma)
                                  (at least 0) */
} pa_config;

#define PA_MAX_BUDGET_ROWS 16

#define PA_MAX_ANCHOR_BLOCKS 8
/* T = PA_AUTO_GROUP_ANCHORS / (Q heads per proxy group), within [1, PA_MAX_ANCHOR_BLOCKS]:
 * a group's anchors stay at most max(32, its Q heads) blocks, so that they do not crowd out
 * its heads' own proxy-ranked blocks (docs/accuracy.md, "Anchor blocks"). */
#define PA_ANCHOR_BLOCKS_AUTO (-1)
#define PA_AUTO_GROUP_ANCHORS 32

/* Defaults of ALGORITHM.md for a given head_dim (the scale is 1/sqrt(head_dim)). */
pa_config pa_config_default(int32_t head_dim);

/* Checks every field (and that g divides num_kv_heads when problem is not NULL). */
pa_status pa_config_validate(const pa_config* config, const pa_problem* problem);

/* ---- plan: the block index (docs/index_format.md) ----------------------------------- */
typedef struct pa_plan pa_plan;   /* opaque; a view of caller-owned storage */

/* Bytes of plan storage and of estimation workspace for this problem. Depends only on
 * the sequence lengths, head counts and the config, never on the data. The CUDA estimation's
 * workspace grows with the causal block pairs: at the defaults about 64 MiB per proxy group
 * for one 128K-token sequence (it keeps one float per sampled row and block pair, up to
 * 1 GiB, beyond which it falls back to a second pass over the proxies). */
pa_status pa_plan_bytes(const pa_problem* problem, const pa_config* config, size_t* bytes);
pa_status pa_workspace_bytes(const pa_problem* problem, const pa_config* config, size_t* bytes);

/* Binds a plan handle to caller storage (>= pa_plan_bytes). The handle copies problem
 * (cu_seqlens is read, not kept) and config. Free the handle with pa_plan_free; the
 * storage stays the caller's. Storage in device memory makes a GPU plan: its creation
 * fails with PA_STATUS_UNSUPPORTED when the GPU cannot run the problem (float32, a
 * head_dim other than 64 and 128). */
pa_status pa_plan_create(const pa_problem* problem, const pa_config* config, void* storage,
                         size_t storage_bytes, pa_plan** plan);
void pa_plan_free(pa_plan* plan);

/* Totals over the batch (copied to the host). */
typedef struct pa_plan_stats {
  int64_t kept_pairs;          /* kept causal (query-block, key-block) pairs, all heads */
  int64_t causal_pairs;        /* all causal pairs, all heads */
  double density;              /* kept_pairs / causal_pairs (1 for an empty batch) */
  int64_t kept_token_pairs;    /* kept causal (query, key) token pairs, all heads */
  int32_t dense_seqs;          /* sequences below dense_below, run dense */
} pa_plan_stats;
pa_status pa_plan_get_stats(const pa_plan* plan, pa_plan_stats* stats);

/* The plan's effective config: the one given, with PA_ANCHOR_BLOCKS_AUTO resolved. */
pa_status pa_plan_get_config(const pa_plan* plan, pa_config* config);

/* Per (sequence, head) results of the budget step, each [num_seqs, num_q_heads] on the
 * host: budget_blocks = K_i, needed_blocks = count_i (step 5 of config.budget_rule on the last
 * query block), density = kept / causal block pairs of that head. Any output may be NULL. */
pa_status pa_plan_get_heads(const pa_plan* plan, int32_t* budget_blocks,
                            int32_t* needed_blocks, double* density);

/* Anchors of the estimation, int32 [num_seqs, num_q_heads, T] on the host (T: the resolved
 * anchor_blocks of pa_plan_get_config):
 * per head its anchor blocks by mass descending, -1 where the last query block has fewer
 * candidate blocks, and for dense sequences or an index from pa_plan_set_index. */
pa_status pa_plan_get_anchors(const pa_plan* plan, int32_t* anchors);

/* Number of query blocks of the batch, and the host copy of the index arrays. */
pa_status pa_plan_get_layout(const pa_plan* plan, int64_t* total_qblocks, int64_t* order_entries);
pa_status pa_plan_get_index(const pa_plan* plan, int32_t* order, int32_t* count);

/* Writes the index from host arrays in pa_plan_get_index's layout (order int32
 * [order_entries], count int32 [total_qblocks, num_q_heads]; budget and needed int32
 * [num_seqs, num_q_heads], NULL for zeros), e.g. a plan estimated on the host copied to a
 * device plan, or a hand-made mask; the plan's anchors become none (-1). Checks that every
 * count lies in [0, m + 1] and every kept entry in [0, m], unique in its row (pa_plan_check
 * adds the forced blocks); a row
 * with count 0 attends to nothing (O = 0, LSE = -inf). The plan then counts as estimated.
 * Synchronous copy for device plans. */
pa_status pa_plan_set_index(pa_plan* plan, const int32_t* order, const int32_t* count,
                            const int32_t* budget, const int32_t* needed);

/* Checks the invariants of the index: entries causal (n <= m), unique within each kept
 * prefix, forced blocks present, counts within [forced, m+1]. PA_STATUS_INTERNAL with a
 * message naming the first violation. */
pa_status pa_plan_check(const pa_plan* plan);

/* Converts to PyTorch FlexAttention's BlockMask form, per sequence s of the batch:
 * kv_num_blocks int32 [Hq, Nqb_s], kv_indices int32 [Hq, Nqb_s, Nkb_s] (the kept blocks
 * of each row ascending, then unused entries set to 0). Host outputs. */
pa_status pa_plan_to_flex(const pa_plan* plan, int32_t seq, int32_t* kv_num_blocks,
                          int32_t* kv_indices);

/* ---- chunked prefill: keys and values of a cache ---------------------------------- */
/* The estimation state of a paged cache: each sampled position's pooled proxy key and proxy
 * query (ALGORITHM.md steps 2-3), stored beside the cache in pages of the same block table:
 * [num_pages, page_size / stride, 2 (keys, queries), num_proxy_groups, head_dim] of dtype.
 * A chunk writes its own positions and reads the prefix's, so a later chunk pools only its
 * tokens, and a chunk starting inside a query block ranks that block with the earlier
 * queries too (the same row a one-shot prefill gives). Pages shared by sequences (a common
 * prefix) share their state. Describe it with pa_proxy_state_make, never by hand. */
typedef struct pa_proxy_state {
  void* data;                  /* pa_proxy_state_bytes() bytes, the cache's memory space */
  int32_t num_pages;
  int32_t page_size;
  int32_t stride;
  int32_t num_proxy_groups;
  int32_t head_dim;
  pa_dtype dtype;
} pa_proxy_state;

/* Bytes of the estimation state of problem's paged cache (problem.page_size > 0). */
pa_status pa_proxy_state_bytes(const pa_problem* problem, const pa_config* config, size_t* bytes);

/* Describes data (>= pa_proxy_state_bytes) as the estimation state of problem's cache. */
pa_status pa_proxy_state_make(const pa_problem* problem, const pa_config* config, void* data,
                              size_t bytes, pa_proxy_state* state);

/* Keys and values of a chunked call: packed by problem.cu_seqlens_k (block_table NULL), or
 * pages [num_pages * page_size, Hkv, d] of which page p holds tokens [p * page_size,
 * (p + 1) * page_size), token t of sequence s in page block_table[s * max_pages_per_seq +
 * t / page_size] (vLLM's, FlashInfer's and flash-attn's layout). */
typedef struct pa_kv_cache {
  pa_tensor k;
  pa_tensor v;
  const int32_t* block_table;  /* [num_seqs, max_pages_per_seq], the tensors' memory space;
                                  NULL unless problem.page_size > 0 */
  const pa_proxy_state* proxy_state;  /* host struct; NULL: the keys of the whole sequence are
                                  pooled at every call, and a chunk's first query block sees
                                  only the chunk's queries */
} pa_kv_cache;

/* ---- compute -------------------------------------------------------------------------- */
/* stream: a cudaStream_t for device tensors, ignored (pass NULL) on the CPU. */
pa_status pa_estimate(pa_plan* plan, const pa_tensor* q, const pa_tensor* k, void* workspace,
                      size_t workspace_bytes, void* stream);

/* lse may be NULL when not wanted. */
pa_status pa_attend(const pa_plan* plan, const pa_tensor* q, const pa_tensor* k,
                    const pa_tensor* v, pa_tensor* o, float* lse, void* stream);

pa_status pa_forward(pa_plan* plan, const pa_tensor* q, const pa_tensor* k, const pa_tensor* v,
                     pa_tensor* o, float* lse, void* workspace, size_t workspace_bytes,
                     void* stream);

/* The same three calls with keys and values from kv (any plan: a whole prompt's plan takes
 * {k, v, NULL, NULL}). A sequence whose kv_len is below config.dense_below, or a chunk of
 * fewer queries than a block (decode steps), runs dense attention over its keys. */
pa_status pa_estimate_kv(pa_plan* plan, const pa_tensor* q, const pa_kv_cache* kv, void* workspace,
                         size_t workspace_bytes, void* stream);
pa_status pa_attend_kv(const pa_plan* plan, const pa_tensor* q, const pa_kv_cache* kv, pa_tensor* o,
                       float* lse, void* stream);
pa_status pa_forward_kv(pa_plan* plan, const pa_tensor* q, const pa_kv_cache* kv, pa_tensor* o,
                        float* lse, void* workspace, size_t workspace_bytes, void* stream);

/* Step 5's results given by the caller instead of measured on the call's own last query block:
 * the rows of a chunk of a sequence whose last query block another call holds (context
 * parallelism: the rank holding the sequence's last query block estimates it with pa_estimate_kv
 * and hands pa_plan_get_heads' needed_blocks and pa_plan_get_anchors' anchors to the ranks holding
 * earlier chunks). Host arrays. */
typedef struct pa_given_budgets {
  const int32_t* needed;       /* [num_seqs, num_q_heads] count_i, each in [1, num_kblocks[s]] */
  const int32_t* anchors;      /* [num_seqs, num_q_heads, T] (T: the plan's resolved anchor_blocks),
                                  entries -1 or in [0, num_kblocks[s]); NULL allowed when T == 0 */
  const int32_t* num_kblocks;  /* [num_seqs] key blocks of each whole sequence, >= the call's
                                  ceil(kv_len / block_size) */
} pa_given_budgets;

/* pa_estimate_kv with step 5 given: K_i = min(num_kblocks[s], max(needed, ceil(min_budget_tokens /
 * b))), the proportional mode's r_i = needed / num_kblocks[s], and the anchors as given; the plan
 * reports them (pa_plan_get_heads, pa_plan_get_anchors). Every sequence with queries runs sparse:
 * dense_below is the caller's to apply to the whole sequence (call pa_estimate_kv where the whole
 * sequence runs dense). A chunk of fewer queries than a block is refused
 * (PA_STATUS_INVALID_SHAPE). The rows equal those a one-shot prefill of the whole sequence gives. */
pa_status pa_estimate_kv_given(pa_plan* plan, const pa_tensor* q, const pa_kv_cache* kv,
                               const pa_given_budgets* budgets, void* workspace,
                               size_t workspace_bytes, void* stream);

/* Exact causal attention (every key t' <= t; with problem.cu_seqlens_k, queries aligned to
 * the end of their keys, K and V packed) with fp32 accumulation. */
pa_status pa_dense_attention(const pa_problem* problem, float softmax_scale, const pa_tensor* q,
                             const pa_tensor* k, const pa_tensor* v, pa_tensor* o, float* lse,
                             void* stream);

/* ---- utilities ----------------------------------------------------------------------- */
/* Converts count host elements of dtype to float32 (to read bf16 / fp16 outputs). */
pa_status pa_to_float32(pa_dtype dtype, const void* src, int64_t count, float* dst);

/* Converts count float32 host elements to dtype, rounding to nearest even. */
pa_status pa_from_float32(pa_dtype dtype, const float* src, int64_t count, void* dst);

/* ---- runtime ------------------------------------------------------------------------- */
/* Threads of the CPU backend (0 = hardware concurrency, the default). */
pa_status pa_set_num_threads(int32_t num_threads);

/* ---- structured synthetic inputs (docs/design.md, "Structured inputs") --------------- */
typedef struct pa_synth_params {
  uint64_t seed;
  int32_t num_needles;         /* retrieval targets planted in the context */
  float sink_strength;         /* logit gain of the sink tokens */
  float local_strength;        /* gain of the local band */
  float vertical_strength;     /* gain of the vertical columns */
  float slash_strength;        /* gain of the slash diagonals */
  float needle_strength;       /* gain of the needle matches */
  float noise;                 /* standard deviation of the content noise */
} pa_synth_params;

pa_synth_params pa_synth_default(uint64_t seed);

/* Fills contiguous Q, K, V of problem (host memory, problem->dtype) deterministically
 * from params: the same seed gives the same values whatever the thread count. A whole
 * prompt's problem (no cu_seqlens_k; Q, K and V of total_tokens rows); num_needles in
 * [0, 1024], noise >= 0. */
pa_status pa_synth_generate(const pa_problem* problem, const pa_synth_params* params, void* q,
                            void* k, void* v);

#ifdef __cplusplus
}
#endif

#endif /* PROXYATTN_PROXYATTN_H */
