"""The attention kernel at controlled densities (issues 4, 5): ours (pa_attend, the kernel the
dispatcher picks: sm90 on compute capability 9.0, persistent, consumers taking turns; also
its variants in SM90_VARIANTS) and our sm80 kernel (the plan's tuning, attn_kernel = sm80)
against cuDNN SDPA dense causal and PyTorch FlexAttention running the same block mask.

Shapes: one sequence of N tokens, 32 Q / 8 KV heads, d = 128 (--shape HQ,HKV,D for others,
e.g. 14,2,64 for Qwen2.5-0.5B), bf16, block 128. Masks: masks.py, written into a device plan
(per-head budgets spread 0.5x..1.5x evenly; --budget-spread LO,HI[,geometric] for others).
Timing: CUDA events around each call, warm-up, median; all methods of a point sampled in
turn (so clock drifts during long runs fall on all alike); inputs (>= 96 MiB) exceed L2.
Effective TFLOP/s = 4 * d * kept causal token pairs / time (dense causal pairs for cuDNN).
cuDNN at equal rows: cuDNN dense causal on a batch of sequences of L tokens, L chosen so that
its rows keep as many blocks on average as ours do ((L / block + 1) / 2 = kept blocks per row
and head), about N tokens in all: what the fastest dense kernel gives on rows as short as
ours (an item's fixed costs: Q load, first softmax, last P V, epilogue), sampled in the same
rounds ("cudnn_equal_rows_*").

A/B of a kernel change: --baseline DIR loads a second build of the library (e.g. the
previous commit's, built by scripts/gpu-check's `baseline` step) and times its kernel in the
same interleaved rounds ("baseline_ms", and its sm80 kernel "baseline_sm80_ms"), on its own
plan with the same index.
"""
import datetime
import time

import numpy as np
import torch

from proxyattn import _C

from . import arguments, kernel_plan, masks
from .baselines import Flex, repeat_kv, sdpa, sdpa_gqa_mode
from .config import BLOCK_SIZE
from .timing import interleaved_median_ms, machine

DEFAULT_SHAPE = arguments.Shape(32, 8, 128)
SIZES = [8192, 16384, 32768, 65536, 131072]
QUICK_SIZES = [8192, 32768]
DENSITIES = [0.05, 0.10, 0.20, 0.50, 1.00]
REPEATS = {8192: 10, 16384: 8, 32768: 5, 65536: 4, 131072: 3}  # fewer at long N: about 2 min in all
WARMUP = {8192: 2, 16384: 2, 32768: 1, 65536: 1, 131072: 1}
PACKING_SIZE, PACKING_DENSITIES = 32768, [0.10, 0.50]  # both CTA packings (params.hpp) measured here
SM90 = (9, 0)  # the compute capability whose default kernel is sm90
# The sm90 kernel with one of its choices undone (the plan's tuning, core/tuning.hpp), timed
# on the same plan next to the default: result key -> tuning fields.
SM90_VARIANTS = {
    "sm90_item_per_cta_ms": {"attn_persistent": 0},      # one work item per CTA
    "sm90_no_turns_ms": {"attn_consumer_turns": 0},      # consumers issue freely
    "sm90_row_major_ms": {"attn_rows_per_chunk": 1},     # items row by row, all KV heads
    "sm90_unranked_ms": {"attn_rank_heads": 0},          # d = 64: heads in order, not by count
}
ERROR_CHARS = 300  # of an exception's first line kept in the results


def add_arguments(ap):
    ap.add_argument("--quick", action="store_true", help="8K and 32K only")
    ap.add_argument("--sizes", type=arguments.ints, default=[], help="comma-separated N, each one of %s" % SIZES)
    ap.add_argument("--no-flex", action="store_true")
    ap.add_argument("--shape", type=arguments.shape, default=DEFAULT_SHAPE, help="Q heads, KV heads, head_dim")
    ap.add_argument("--budget-spread", type=masks.budget_spread, default=masks.DEFAULT_BUDGET_SPREAD,
                    help="per-head budget factors LO,HI, evenly spaced, or LO,HI,geometric")
    arguments.add_baseline(ap)


def equal_rows_call(blocks_per_row, n, shape, gqa):
    """cuDNN dense causal on B sequences of L tokens whose rows keep blocks_per_row blocks on
    average ((L / BLOCK_SIZE + 1) / 2), B * L about n (K/V with Hkv heads where gqa, else
    repeated to Hq, as the main cuDNN call): returns L, B and the call."""
    length = BLOCK_SIZE * max(1, min(n // BLOCK_SIZE, round(2 * blocks_per_row - 1)))
    batch = max(1, round(n / length))
    kv_heads = shape.hkv if gqa else shape.hq
    q, k, v = (torch.randn(batch, h, length, shape.d, device="cuda", dtype=torch.bfloat16)
               for h in (shape.hq, kv_heads, kv_heads))
    return length, batch, lambda: sdpa("cudnn", q, k, v, gqa)


def _error(e):
    return str(e).splitlines()[0][:ERROR_CHARS]


def run(args):
    shape, spread = args.shape, args.budget_spread
    sizes = args.sizes or (QUICK_SIZES if args.quick else SIZES)
    arguments.known("--sizes", sizes, REPEATS)
    t_start = time.time()
    base = kernel_plan.load_library(args.baseline) if args.baseline else None
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    info = machine()
    print("machine:", info, flush=True)
    stream = torch.cuda.current_stream().cuda_stream
    default_kernel = "sm90" if torch.cuda.get_device_capability() == SM90 else "sm80"
    flex = None if args.no_flex else Flex()
    config = kernel_plan.index_config(shape.d)

    results, packing = [], []
    cudnn_mode = None
    for n in sizes:
        nqb = n // BLOCK_SIZE
        reps, warm = REPEATS[n], WARMUP[n]
        q, k, v, o, qt, kt, vt = kernel_plan.random_inputs(n, shape)
        plan = kernel_plan.plan(shape, n, q, config)
        base_plan = kernel_plan.plan(shape, n, q, config, library=base) if base is not None else None

        # cuDNN dense causal (GQA natively if this build allows, else K/V repeated).
        cudnn_mode, refusal = sdpa_gqa_mode("cudnn", qt, kt, vt)
        if refusal:
            print("cuDNN with enable_gqa failed (%s); repeating K/V" % refusal, flush=True)
        dense_kv = (kt, vt) if cudnn_mode == "enable_gqa" else repeat_kv(qt, kt, vt)[1:]
        cudnn_fn = lambda kv=dense_kv: sdpa("cudnn", qt, *kv, cudnn_mode == "enable_gqa")  # noqa: E731
        dense_pairs = shape.hq * n * (n + 1) // 2
        ref_dense = cudnn_fn()[0].transpose(0, 1)  # [N, H, d]

        order = masks.make_order(nqb, rng)
        for density in DENSITIES:
            count = masks.make_count(nqb, shape.hq, density, rng, spread)
            plan.set_index(order, count)
            stats = plan.stats()
            attend = kernel_plan.attend_call(plan, q, k, v, o, stream)
            # Every method timed in turn on this plan (interleaved_median_ms): ours, its
            # variants, our sm80 kernel, cuDNN dense, Flex on the same mask.
            calls = {"ours": attend}
            if default_kernel == "sm90":
                calls.update({key: kernel_plan.tuned(plan, attend, **fields) for key, fields in SM90_VARIANTS.items()})
            calls["sm80"] = kernel_plan.tuned(plan, attend, **kernel_plan.SM80)
            if base_plan is not None:
                base_plan.set_index(order, count)
                base_attend = kernel_plan.attend_call(base_plan, q, k, v, o, stream)
                calls["baseline"] = base_attend
                calls["baseline_sm80"] = kernel_plan.tuned(base_plan, base_attend, **kernel_plan.SM80)
            calls["cudnn"] = cudnn_fn
            rows_len, rows_batch, rows_fn = equal_rows_call(stats["kept_pairs"] / (shape.hq * nqb), n, shape,
                                                            cudnn_mode == "enable_gqa")
            calls["cudnn_equal_rows"] = rows_fn
            bm, flex_fn, flex_error = None, None, None
            if flex is not None:
                try:
                    bm = plan.to_flex_block_mask(0, device="cuda", exact_mask_mod=False)
                    candidate = lambda: flex(qt, kt, vt, bm)  # noqa: E731
                    candidate()  # compiles; a failure here leaves Flex out of this point
                    flex_fn = calls["flex"] = candidate
                except Exception as e:  # noqa: BLE001  (recorded, the other columns stand)
                    flex_error = _error(e)
                    print("flex failed:", flex_error, flush=True)
            try:
                t = interleaved_median_ms(calls, reps, warm)
            except Exception as e:  # noqa: BLE001  Flex failing while timed: recorded, timed again without it
                if flex_fn is None:
                    raise
                flex_error = _error(e)
                print("flex failed while timed:", flex_error, flush=True)
                del calls["flex"]
                flex_fn = None
                t = interleaved_median_ms(calls, reps, warm)
            t_ours, t_sm80, t_cudnn = t["ours"], t["sm80"], t["cudnn"]
            flops = 4.0 * shape.d * stats["kept_token_pairs"]
            row = {"N": n, "target_density": density, "density": stats["density"],
                   "kept_token_pairs": stats["kept_token_pairs"], "ours_ms": t_ours,
                   "ours_tflops_effective": flops / t_ours / 1e9, "cudnn_dense_ms": t_cudnn,
                   "cudnn_tflops": 4.0 * shape.d * dense_pairs / t_cudnn / 1e9,
                   "speedup_vs_cudnn": t_cudnn / t_ours,
                   "sm80_ms": t_sm80, "sm80_tflops_effective": flops / t_sm80 / 1e9}
            row.update({key: t[key] for key in SM90_VARIANTS if key in t})
            rows_pairs = shape.hq * rows_batch * rows_len * (rows_len + 1) // 2
            row.update({"cudnn_equal_rows_len": rows_len, "cudnn_equal_rows_batch": rows_batch,
                        "cudnn_equal_rows_ms": t["cudnn_equal_rows"],
                        "cudnn_equal_rows_tflops": 4.0 * shape.d * rows_pairs / t["cudnn_equal_rows"] / 1e9})
            if base_plan is not None:
                row["baseline_ms"] = t["baseline"]
                row["baseline_sm80_ms"] = t["baseline_sm80"]

            # Outputs: ours against cuDNN (the all-blocks plan is dense attention), our sm80
            # kernel and Flex on the same plan.
            attend()
            torch.cuda.synchronize()
            o_default = o.clone()
            if density == 1.0:
                row["max_abs_diff_vs_cudnn"] = (o_default.float() - ref_dense.float()).abs().max().item()
            calls["sm80"]()
            torch.cuda.synchronize()
            row["max_abs_diff_vs_sm80"] = (o.float() - o_default.float()).abs().max().item()
            if flex_fn is not None:
                out = flex_fn()[0].transpose(0, 1)
                row.update({"flex_ms": t["flex"], "flex_tflops_effective": flops / t["flex"] / 1e9,
                            "speedup_vs_flex": t["flex"] / t_ours,
                            "max_abs_diff_vs_flex": (o_default.float() - out.float()).abs().max().item()})
                del out
            if flex_error is not None:
                row["flex_error"] = flex_error
            del o_default, bm, flex_fn, calls
            results.append(row)
            variants = " ".join("%s %.3f" % (key, row[key])
                                for key in [*SM90_VARIANTS, "baseline_ms", "baseline_sm80_ms"] if key in row)
            print("N %6d density %.3f: ours %8.3f ms (%5.1f TFLOP/s; %s)  sm80 %8.3f ms  "
                  "cuDNN dense %8.3f ms  flex %s ms  [%.0f s]" % (
                      n, stats["density"], t_ours, row["ours_tflops_effective"], variants or "-", t_sm80, t_cudnn,
                      "%.3f" % row["flex_ms"] if "flex_ms" in row else "-", time.time() - t_start), flush=True)
            if n == PACKING_SIZE and density in PACKING_DENSITIES:
                tp = interleaved_median_ms(
                    {"chunks": attend,
                     "heads": kernel_plan.tuned(plan, attend, attn_packing=_C.TUNING_PACKING_HEADS_OF_CHUNK)},
                    reps, warm)
                packing.append({"N": n, "density": stats["density"], "chunks_of_head_ms": tp["chunks"],
                                "heads_of_chunk_ms": tp["heads"]})
                print("  packing: chunks of a head %.3f ms, heads of a chunk %.3f ms"
                      % (tp["chunks"], tp["heads"]), flush=True)
        del plan, base_plan, attend, cudnn_fn, rows_fn, q, k, v, o, ref_dense  # qt, kt, vt: rebound next size
        torch.cuda.empty_cache()

    doc = {"benchmark": "attention", "date": datetime.date.today().isoformat(), "machine": info,
           "default_kernel": default_kernel,
           "shape": {"num_q_heads": shape.hq, "num_kv_heads": shape.hkv, "head_dim": shape.d, "dtype": "bfloat16",
                     "block_size": BLOCK_SIZE, "num_proxy_groups": 1, "budget_spread": [spread.lo, spread.hi],
                     "budget_spacing": "geometric" if spread.geometric else "even"},
           "method": "CUDA events, median of samples taken in turn over all methods of a point; "
                     "warm-up %s; repeats %s" % (WARMUP, REPEATS),
           "cudnn_gqa": cudnn_mode, "results": results, "packing": packing,
           "baseline": arguments.baseline_label(args), "wall_s": time.time() - t_start}
    summary(results, default_kernel, doc["baseline"])
    prefix = "attention-" if shape == DEFAULT_SHAPE else f"attention-{shape.hq}-{shape.hkv}-d{shape.d}-"
    if spread != masks.DEFAULT_BUDGET_SPREAD:
        prefix += "spread-"
    return doc, prefix


def summary(results, default_kernel, baseline):
    """The run's table on stdout (and the baseline's ratios)."""
    print("\nours = %s" % default_kernel)
    if baseline is not None:
        print("baseline (%s) / ours: %s" % (baseline, " ".join(
            "%.3f" % (r["baseline_ms"] / r["ours_ms"]) for r in results)))
        print("baseline sm80 / ours sm80: %s" % " ".join(
            "%.3f" % (r["baseline_sm80_ms"] / r["sm80_ms"]) for r in results))
    print("%7s %7s %9s %8s %9s %9s %9s %8s %8s" % ("N", "density", "ours ms", "TFLOP/s", "sm80 ms", "cuDNN ms",
                                                   "flex ms", "x cuDNN", "x flex"))
    for r in results:
        print("%7d %7.3f %9.3f %8.1f %9.3f %9.3f %9s %8.2f %8s" % (
            r["N"], r["density"], r["ours_ms"], r["ours_tflops_effective"], r["sm80_ms"], r["cudnn_dense_ms"],
            "%.3f" % r["flex_ms"] if "flex_ms" in r else "-", r["speedup_vs_cudnn"],
            "%.2f" % r["speedup_vs_flex"] if "speedup_vs_flex" in r else "-"))
