#!/usr/bin/env python3
"""Block-sparse attention speed (issues 4, 5): ours (pa_attend on the GPU, the kernel the
dispatcher picks: sm90 on compute capability 9.0, persistent, consumers taking turns; also
its variants in SM90_VARIANTS) and our sm80 kernel (forced by the plan's tuning,
attn_kernel = sm80) against cuDNN SDPA dense causal and PyTorch FlexAttention running the
same block mask.

Shapes: one sequence of N tokens, 32 Q / 8 KV heads, d = 128 (--shape HQ,HKV,D for others,
e.g. 14,2,64 for Qwen2.5-0.5B), bf16, block 128.
Masks: written straight into a device plan (pa_plan_set_index), ProxyAttn-shaped: one
ranking per query-block row shared by all heads (num_proxy_groups = 1), sink and diagonal
first, the other blocks ranked by a noisy recency score; per-head absolute budgets spread
0.5x..1.5x (evenly; --budget-spread LO,HI[,geometric] for others) around a common value
found by bisection for the wanted density, assigned to the heads in a random order. Real
layers spread further, most heads at the budget floor and a few at 2-4x the mean (e.g.
Qwen2.5-Coder-0.5B at 32K, eval/results/accuracy-qwen05): "0.1,4,geometric" is like them.
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

Usage: attention_bench.py --build build-gpu --out DIR [--quick | --sizes 8192,32768]
       [--baseline DIR --baseline-label TEXT]
"""
import argparse
import datetime
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))
import capi  # noqa: E402
from proxyattn.bench.baselines import sdpa  # noqa: E402
from proxyattn.bench.timing import interleaved_median_ms, machine, write_result  # noqa: E402

HQ, HKV, D, BLOCK = 32, 8, 128, 128
SIZES = [8192, 16384, 32768, 65536, 131072]
DENSITIES = [0.05, 0.10, 0.20, 0.50, 1.00]
REPEATS = {8192: 10, 16384: 8, 32768: 5, 65536: 4, 131072: 3}  # fewer at long N: about 2 min in all
WARMUP = {8192: 2, 16384: 2, 32768: 1, 65536: 1, 131072: 1}
PACKING_SIZE, PACKING_DENSITIES = 32768, [0.10, 0.50]  # both CTA packings (params.hpp) measured here
DEFAULT_BUDGET_SPREAD = (0.5, 1.5)
BUDGET_SPREAD = DEFAULT_BUDGET_SPREAD
BUDGET_GEOMETRIC = False  # factors evenly spaced (False) or in geometric progression
# The sm90 kernel with one of its choices undone (the plan's tuning, core/tuning.hpp), timed
# on the same plan next to the default: result key -> tuning fields (capi.Library.tuned).
SM90_VARIANTS = {
    "sm90_item_per_cta_ms": {"attn_persistent": 0},      # one work item per CTA
    "sm90_no_turns_ms": {"attn_consumer_turns": 0},      # consumers issue freely
    "sm90_row_major_ms": {"attn_rows_per_chunk": 1},     # items row by row, all KV heads
    "sm90_unranked_ms": {"attn_rank_heads": 0},          # d = 64: heads in order, not by count
}
SM80 = {"attn_kernel": capi.TUNING_KERNEL_SM80}  # our sm80 kernel (row-major item order, params.hpp)


def set_shape(text):
    """--shape HQ,HKV,D: the heads and head_dim every function of this module uses."""
    global HQ, HKV, D
    hq, hkv, d = (int(x) for x in text.split(","))
    if hq % hkv or d not in (64, 128):
        raise SystemExit(f"--shape {text}: Q heads a multiple of KV heads, head_dim 64 or 128")
    HQ, HKV, D = hq, hkv, d


def set_budget_spread(text):
    """--budget-spread LO,HI[,geometric]: the per-head budget factors make_count uses."""
    global BUDGET_SPREAD, BUDGET_GEOMETRIC
    fields = text.split(",")
    try:
        lo, hi = float(fields[0]), float(fields[1])
    except (ValueError, IndexError):
        lo = hi = -1.0
    if not 0.0 < lo <= hi < math.inf or len(fields) > 3 or (len(fields) == 3 and fields[2] != "geometric"):
        raise SystemExit(f"--budget-spread {text}: expected LO,HI or LO,HI,geometric with 0 < LO <= HI")
    BUDGET_SPREAD, BUDGET_GEOMETRIC = (lo, hi), len(fields) == 3


def make_order(nqb, rng):
    """order [T(nqb)] of one proxy group: row m = m, 0, then 1..m-1 by noisy recency."""
    order = np.empty(nqb * (nqb + 1) // 2, np.int32)
    for m in range(nqb):
        row = order[m * (m + 1) // 2:(m + 1) * (m + 2) // 2]
        row[0] = m
        if m == 0:
            continue
        row[1] = 0
        others = np.arange(1, m, dtype=np.int32)
        score = -np.log1p(m - others) + rng.gumbel(size=m - 1)
        row[2:] = others[np.argsort(-score, kind="stable")]
    return order


def make_count(nqb, density, rng):
    """count [nqb, HQ]: head h keeps min(m + 1, K_h) blocks, K_h = x * f_h (absolute budgets)."""
    spacing = np.geomspace if BUDGET_GEOMETRIC else np.linspace
    factors = rng.permutation(spacing(*BUDGET_SPREAD, HQ))
    rows = np.arange(nqb)[:, None]

    def counts(x):
        budget = np.clip(np.rint(x * factors), 2, nqb)  # sink + diagonal at least
        return np.minimum(rows + 1, budget[None, :]).astype(np.int32)

    causal = HQ * nqb * (nqb + 1) / 2
    lo, hi = 0.0, 2.0 * nqb / BUDGET_SPREAD[0]
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if counts(mid).sum() / causal < density else (lo, mid)
    return counts(hi)


def make_inputs(n):
    """Random bf16 q [N, HQ, D], k and v [N, HKV, D], o like q, and q, k, v as [1, H, N, D]
    (the layout cuDNN and Flex take)."""
    q = torch.randn(n, HQ, D, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(n, HKV, D, device="cuda", dtype=torch.bfloat16)
    v = torch.randn(n, HKV, D, device="cuda", dtype=torch.bfloat16)
    qt, kt, vt = (x.permute(1, 0, 2).contiguous()[None] for x in (q, k, v))
    return q, k, v, torch.empty_like(q), qt, kt, vt


def make_plan(lib, n):
    """A device plan of lib for one sequence of n tokens (block BLOCK, one proxy group, no
    budget floor), its index left to set_index: (storage, plan); the storage lives as long as the plan."""
    problem = lib.problem([n], HQ, HKV, D, "bfloat16")
    config = lib.config(D, block_size=BLOCK, min_budget_tokens=0, dense_below=0, num_proxy_groups=1)
    nbytes = lib.plan_bytes(problem, config)
    storage = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    return storage, lib.plan_create(problem, config, storage.data_ptr(), nbytes)


def equal_rows_call(blocks_per_row, n, gqa):
    """cuDNN dense causal on B sequences of L tokens whose rows keep blocks_per_row blocks on
    average ((L / BLOCK + 1) / 2), B * L about n (K/V with HKV heads where gqa, else repeated
    to HQ, as the main cuDNN call): returns L, B and the call."""
    length = BLOCK * max(1, min(n // BLOCK, round(2 * blocks_per_row - 1)))
    batch = max(1, round(n / length))
    kv_heads = HKV if gqa else HQ
    q, k, v = (torch.randn(batch, h, length, D, device="cuda", dtype=torch.bfloat16) for h in (HQ, kv_heads, kv_heads))

    return length, batch, lambda: sdpa("cudnn", q, k, v, gqa)


def flex_block_mask(lib, plan, nqb):
    """The plan's mask as a FlexAttention BlockMask: off-diagonal blocks full, the diagonal
    block partial with a causal mask_mod (the fastest form Flex accepts)."""
    from torch.nn.attention.flex_attention import BlockMask

    kv_num = torch.empty(HQ, nqb, dtype=torch.int32)
    kv_idx = torch.empty(HQ, nqb, nqb, dtype=torch.int32)
    lib.to_flex(plan, 0, kv_num.data_ptr(), kv_idx.data_ptr())
    kv_num, kv_idx = kv_num.cuda(), kv_idx.cuda()
    rows = torch.arange(nqb, device="cuda", dtype=torch.int32)
    last = kv_idx.gather(2, (kv_num - 1).clamp(min=0).long().unsqueeze(-1)).squeeze(-1)
    has_diag = ((kv_num > 0) & (last == rows)).int()  # kept blocks ascend: the diagonal is last
    partial_idx = torch.zeros_like(kv_idx)
    partial_idx[..., 0] = rows

    def causal(b, h, q_idx, kv_idx_):
        return q_idx >= kv_idx_

    return BlockMask.from_kv_blocks(has_diag[None], partial_idx[None], (kv_num - has_diag)[None], kv_idx[None],
                                    BLOCK_SIZE=BLOCK, mask_mod=causal)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--build", default="build-gpu")
    ap.add_argument("--out", default="bench-out")
    ap.add_argument("--quick", action="store_true", help="8K and 32K only")
    ap.add_argument("--sizes", default="", help="comma-separated N, each one of %s" % SIZES)
    ap.add_argument("--no-flex", action="store_true")
    ap.add_argument("--shape", default=f"{HQ},{HKV},{D}", help="Q heads, KV heads, head_dim")
    ap.add_argument("--budget-spread", default="%g,%g" % DEFAULT_BUDGET_SPREAD,
                    help="per-head budget factors LO,HI, evenly spaced, or LO,HI,geometric")
    ap.add_argument("--baseline", default="", help="build folder of a second library to time next to ours")
    ap.add_argument("--baseline-label", default="", help="what the baseline build is (recorded)")
    args = ap.parse_args()
    set_shape(args.shape)
    set_budget_spread(args.budget_spread)
    os.makedirs(args.out, exist_ok=True)
    t_start = time.time()
    lib = capi.Library(os.path.join(args.build, "libproxyattn.so"))
    base = capi.Library(os.path.join(args.baseline, "libproxyattn.so")) if args.baseline else None
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    info = machine()
    print("machine:", info, flush=True)
    stream = torch.cuda.current_stream().cuda_stream
    sizes = [8192, 32768] if args.quick else SIZES
    if args.sizes:
        sizes = [int(x) for x in args.sizes.split(",")]
        unknown = [n for n in sizes if n not in REPEATS]
        if unknown:
            ap.error("--sizes: %s not among %s" % (unknown, SIZES))
    major, minor = torch.cuda.get_device_capability()
    default_kernel = "sm90" if (major, minor) == (9, 0) else "sm80"

    flex = None
    if not args.no_flex:
        from torch.nn.attention.flex_attention import flex_attention
        # Static shapes, compiled per N: with torch.compile's default, the second N marks the
        # shapes dynamic, and Flex's dynamic-shape kernels are up to 28% slower.
        flex = torch.compile(flex_attention, dynamic=False)
    from torch.nn.attention import SDPBackend, sdpa_kernel

    results, packing = [], []
    for n in sizes:
        nqb = n // BLOCK
        reps, warm = REPEATS[n], WARMUP[n]
        q, k, v, o, qt, kt, vt = make_inputs(n)
        storage, plan = make_plan(lib, n)
        qa, ka, va, oa = (lib.tensor(x) for x in (q, k, v, o))
        if base is not None:  # the baseline library's own plan (same problem and config)
            base_storage, base_plan = make_plan(base, n)

        # cuDNN dense causal (GQA natively if this build allows, else K/V repeated).
        def cudnn_call(kk=kt, vv=vt, gqa=True):
            with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
                return F.scaled_dot_product_attention(qt, kk, vv, is_causal=True, enable_gqa=gqa)
        cudnn_mode = "enable_gqa"
        try:
            cudnn_call()
            cudnn_fn = cudnn_call
        except RuntimeError as e:
            print("cuDNN with enable_gqa failed (%s); repeating K/V" % str(e).splitlines()[0], flush=True)
            kr, vr = kt.repeat_interleave(HQ // HKV, dim=1), vt.repeat_interleave(HQ // HKV, dim=1)
            cudnn_fn = lambda: cudnn_call(kr, vr, False)  # noqa: E731
            cudnn_mode = "repeated_kv"
        dense_pairs = HQ * n * (n + 1) // 2
        ref_dense = cudnn_fn()[0].transpose(0, 1)  # [N, H, d]

        order = make_order(nqb, rng)
        for density in DENSITIES:
            count = make_count(nqb, density, rng)
            lib.set_index(plan, order.ctypes.data, count.ctypes.data)
            stats = lib.stats(plan)
            attend = lambda: lib.attend(plan, qa, ka, va, oa, 0, stream)  # noqa: E731
            # Every method timed in turn on this plan (interleaved_median_ms): ours, its
            # variants, our sm80 kernel, cuDNN dense, Flex on the same mask.
            calls = {"ours": attend}
            if default_kernel == "sm90":
                calls.update({key: lib.tuned(plan, attend, **fields) for key, fields in SM90_VARIANTS.items()})
            calls["sm80"] = lib.tuned(plan, attend, **SM80)
            if base is not None:
                base.set_index(base_plan, order.ctypes.data, count.ctypes.data)
                base_attend = lambda: base.attend(base_plan, qa, ka, va, oa, 0, stream)  # noqa: E731
                calls["baseline"] = base_attend
                calls["baseline_sm80"] = base.tuned(base_plan, base_attend, **SM80)
            calls["cudnn"] = cudnn_fn
            rows_len, rows_batch, rows_fn = equal_rows_call(stats.kept_pairs / (HQ * nqb), n,
                                                               cudnn_mode == "enable_gqa")
            calls["cudnn_equal_rows"] = rows_fn
            bm, flex_fn, flex_error = None, None, None
            if flex is not None:
                try:
                    bm = flex_block_mask(lib, plan, nqb)
                    candidate = lambda: flex(qt, kt, vt, block_mask=bm, enable_gqa=True)  # noqa: E731
                    candidate()  # compiles; a failure here leaves Flex out of this point
                    flex_fn = calls["flex"] = candidate
                except Exception as e:  # noqa: BLE001  (recorded, the other columns stand)
                    flex_error = str(e).splitlines()[0][:300]
                    print("flex failed:", flex_error, flush=True)
            try:
                t = interleaved_median_ms(calls, reps, warm)
            except Exception as e:  # noqa: BLE001  Flex failing while timed: recorded, timed again without it
                if flex_fn is None:
                    raise
                flex_error = str(e).splitlines()[0][:300]
                print("flex failed while timed:", flex_error, flush=True)
                del calls["flex"]
                flex_fn = None
                t = interleaved_median_ms(calls, reps, warm)
            t_ours, t_sm80, t_cudnn = t["ours"], t["sm80"], t["cudnn"]
            flops = 4.0 * D * stats.kept_token_pairs
            row = {"N": n, "target_density": density, "density": stats.density,
                   "kept_token_pairs": stats.kept_token_pairs, "ours_ms": t_ours,
                   "ours_tflops_effective": flops / t_ours / 1e9, "cudnn_dense_ms": t_cudnn,
                   "cudnn_tflops": 4.0 * D * dense_pairs / t_cudnn / 1e9,
                   "speedup_vs_cudnn": t_cudnn / t_ours,
                   "sm80_ms": t_sm80, "sm80_tflops_effective": flops / t_sm80 / 1e9}
            row.update({key: t[key] for key in SM90_VARIANTS if key in t})
            rows_pairs = HQ * rows_batch * rows_len * (rows_len + 1) // 2
            row.update({"cudnn_equal_rows_len": rows_len, "cudnn_equal_rows_batch": rows_batch,
                        "cudnn_equal_rows_ms": t["cudnn_equal_rows"],
                        "cudnn_equal_rows_tflops": 4.0 * D * rows_pairs / t["cudnn_equal_rows"] / 1e9})
            if base is not None:
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
            variants = " ".join("%s %.3f" % (key, row[key]) for key in [*SM90_VARIANTS, "baseline_ms", "baseline_sm80_ms"]
                                if key in row)
            print("N %6d density %.3f: ours %8.3f ms (%5.1f TFLOP/s; %s)  sm80 %8.3f ms  "
                  "cuDNN dense %8.3f ms  flex %s ms  [%.0f s]" % (
                      n, stats.density, t_ours, row["ours_tflops_effective"], variants or "-", t_sm80, t_cudnn,
                                "%.3f" % row["flex_ms"] if "flex_ms" in row else "-", time.time() - t_start),
                  flush=True)
            if n == PACKING_SIZE and density in PACKING_DENSITIES:
                tp = interleaved_median_ms(
                    {"chunks": attend,
                     "heads": lib.tuned(plan, attend, attn_packing=capi.TUNING_PACKING_HEADS_OF_CHUNK)},
                    reps, warm)
                packing.append({"N": n, "density": stats.density, "chunks_of_head_ms": tp["chunks"],
                                "heads_of_chunk_ms": tp["heads"]})
                print("  packing: chunks of a head %.3f ms, heads of a chunk %.3f ms"
                      % (tp["chunks"], tp["heads"]), flush=True)
        lib.plan_free(plan)
        if base is not None:
            base.plan_free(base_plan)
            del base_storage
        del q, k, v, o, storage, ref_dense  # qt, kt, vt: rebound next size (closures read them)
        torch.cuda.empty_cache()

    date = datetime.date.today().isoformat()
    doc = {"benchmark": "attention", "date": date, "machine": info, "default_kernel": default_kernel,
           "shape": {"num_q_heads": HQ, "num_kv_heads": HKV, "head_dim": D, "dtype": "bfloat16",
                     "block_size": BLOCK, "num_proxy_groups": 1, "budget_spread": BUDGET_SPREAD,
                     "budget_spacing": "geometric" if BUDGET_GEOMETRIC else "even"},
           "method": "CUDA events, median of samples taken in turn over all methods of a point; "
                     "warm-up %s; repeats %s" % (WARMUP, REPEATS),
           "cudnn_gqa": cudnn_mode, "results": results, "packing": packing,
           "baseline": args.baseline_label or args.baseline or None,
           "wall_s": time.time() - t_start}
    default_shape = args.shape == ap.get_default("shape")
    prefix = "attention-" if default_shape else f"attention-{HQ}-{HKV}-d{D}-"
    if BUDGET_SPREAD != DEFAULT_BUDGET_SPREAD or BUDGET_GEOMETRIC:
        prefix += "spread-"
    path = write_result(args.out, doc, prefix=prefix)

    print("\nours = %s" % default_kernel)
    if base is not None:
        print("baseline (%s) / ours: %s" % (args.baseline_label or args.baseline, " ".join(
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
    print("wrote", path, "in %.0f s" % (time.time() - t_start))


if __name__ == "__main__":
    main()
