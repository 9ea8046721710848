/*
 * proxyattn tuning: the speed settings of the GPU kernels, for tests and benchmarks.
 *
 * NOT part of the stable C API of proxyattn.h: fields, values and functions here may change
 * with any version. An application needs none of it: every plan starts at the defaults.
 *
 * A tuning changes how fast the library runs, never what it computes beyond rounding (the
 * settings that change results are pa_config's): the kernel choice moves outputs within
 * rounding; the other fields leave each output's arithmetic as it is (the GPU tests check
 * identical bits for the packing, the ranking of heads, the rows per chunk and the block
 * logits). The library reads no environment variable; the defaults, with the reason for
 * each, are one table in src/core/tuning.hpp.
 *
 * A plan carries its tuning: pa_plan_create gives it the defaults, pa_plan_set_tuning (the
 * one way to change it) replaces them, and pa_estimate and pa_attend run with it. Dense
 * attention has no plan: pa_dense_attention_tuned takes a tuning as an argument.
 *
 * Workspace: est_block_logits decides whether the GPU estimation keeps its block logits, so
 * a device plan's workspace follows its tuning. pa_workspace_bytes is that of the default
 * tuning, which no other tuning exceeds (every field's other values need less or the same);
 * pa_workspace_bytes_tuned gives the exact size for a given tuning, which pa_estimate then
 * checks against the plan's.
 */
#ifndef PROXYATTN_PROXYATTN_TUNING_H
#define PROXYATTN_PROXYATTN_TUNING_H

#include "proxyattn/proxyattn.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Which attention kernel runs on the GPU. */
#define PA_TUNING_KERNEL_AUTO 0  /* the device's: sm90 on compute capability 9.0, sm80 elsewhere */
#define PA_TUNING_KERNEL_SM80 1  /* the mma.sync kernel on every device (comparisons, a fallback) */

/* Which pairs (head x row chunk) share a CTA of the GPU attention (src/cuda/attention/params.hpp). */
#define PA_TUNING_PACKING_CHUNKS_OF_HEAD 0  /* the row chunks of one head */
#define PA_TUNING_PACKING_HEADS_OF_CHUNK 1  /* one row chunk of several heads */

typedef struct pa_tuning {
  /* GPU attention: pa_attend, pa_dense_attention_tuned */
  int32_t attn_kernel;          /* PA_TUNING_KERNEL_* */
  int32_t attn_packing;         /* PA_TUNING_PACKING_* */
  int32_t attn_rows_per_chunk;  /* query-block rows per chunk of the work-item order, >= 1
                                   (1: row-major order); 0: automatic (a chunk of one KV head
                                   about fills the GPU, sm90; one row, sm80) */
  int32_t attn_persistent;      /* sm90: 1 = persistent CTAs taking items from a counter,
                                   0 = one CTA per item */
  int32_t attn_consumer_turns;  /* sm90: 1 = the consumers take turns issuing their products
                                   (ping-pong), 0 = they issue freely */
  int32_t attn_rank_heads;      /* sm90 at head_dim 64: 1 = a row's heads go to the slots by
                                   their count, 0 = in order */
  int32_t attn_max_ctas;        /* sm90 persistent: at most this many CTAs, >= 1 (tests: every
                                   CTA then runs many items); 0 = one per SM */
  /* GPU estimation: pa_estimate; changes the workspace size */
  int32_t est_block_logits;     /* 1 = block logits where b / s and their size allow, in place
                                   of a second pass over the proxies; 0 = always the second pass */
} pa_tuning;

/* The defaults (what every new plan has). */
pa_tuning pa_tuning_default(void);

/* Replaces the plan's tuning after checking every field (PA_STATUS_INVALID_CONFIG with a
 * message naming the field; the plan keeps its tuning then). No device work; an estimated plan
 * stays estimated (a tuning never changes the index). */
pa_status pa_plan_set_tuning(pa_plan* plan, const pa_tuning* tuning);

/* The plan's tuning. */
pa_status pa_plan_get_tuning(const pa_plan* plan, pa_tuning* tuning);

/* pa_workspace_bytes for a plan of this tuning (either backend). */
pa_status pa_workspace_bytes_tuned(const pa_problem* problem, const pa_config* config,
                                   const pa_tuning* tuning, size_t* bytes);

/* The instruction set of the CPU backend's kernels in this process: "avx512", "avx2", "sse2",
 * "neon", ... A portable x86-64 build has SSE2, AVX2 + FMA and AVX-512 copies and runs the
 * widest this CPU has; a -march=native build (PROXYATTN_NATIVE) has the machine's. Never NULL. */
const char* pa_cpu_kernels(void);

/* pa_dense_attention with a tuning (pa_dense_attention runs the defaults). */
pa_status pa_dense_attention_tuned(const pa_problem* problem, float softmax_scale,
                                   const pa_tuning* tuning, const pa_tensor* q, const pa_tensor* k,
                                   const pa_tensor* v, pa_tensor* o, float* lse, void* stream);

#ifdef __cplusplus
}
#endif

#endif /* PROXYATTN_PROXYATTN_TUNING_H */
