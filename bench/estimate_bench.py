#!/usr/bin/env python3
"""Estimation speed (ALGORITHM.md steps 2-6 on the GPU, pa_estimate) per stage: the whole call
timed with CUDA events (median, interleaved with the baseline build when one is given), and
each kernel's share read from a CUPTI trace (torch.profiler) of a few calls.

Shapes: the model shapes of SHAPES (Q heads, KV heads, head_dim), one sequence of N tokens,
bf16, library defaults (b = 128, s = 4) with g = 1 and g = Hkv. Inputs are Gaussian: the
estimation does the same work whatever the data (every causal block of every row is scored
and sorted). Dense cuDNN causal attention of the same shape is timed in the same rounds, so
that the estimation's share of a dense call is read off one run.

A/B of an estimation change: --baseline DIR (a second build, scripts/gpu-check's baseline
step) is timed in the same interleaved rounds ("baseline_ms") and traced too. Our build is
also timed with pass 2 in place of the block logits ("two_pass_ms", the plan's tuning
est_block_logits = 0: the path of other strides and of logit buffers over 1 GiB).

Usage: estimate_bench.py --build build-gpu --out DIR [--sizes 32768,131072]
       [--shapes qwen2.5-coder-0.5b,...] [--baseline DIR --baseline-label TEXT]
"""
import argparse
import collections
import datetime
import os
import re
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))
import capi  # noqa: E402
from proxyattn.bench import config  # noqa: E402
from proxyattn.bench.timing import interleaved_median_ms, machine, write_result  # noqa: E402

# name -> (Q heads, KV heads, head_dim): the suite's shapes, and the real models of docs/accuracy.md
SHAPES = {name: shape[:3] for name, shape in {**config.SHAPES, **config.REAL_MODEL_SHAPES}.items()}
SIZES = [32768, 131072]
REPEATS, WARMUP = 10, 2
TRACED_CALLS = 3  # calls per trace; a stage's time is its kernels' total over them / TRACED_CALLS
TWO_PASS = {"est_block_logits": 0}  # tuning: pass 2 instead of the block logits

# Kernel name (demangled, as CUPTI reports it) -> stage label, first match wins.
STAGES = [
    (r"pool_proxies", "pool"),
    (r"proxy_scores_kernel.*Pass\)0", "scores pass 1 (row stats)"),
    (r"combine_row_stats", "scores combine"),
    (r"proxy_scores_kernel.*Pass\)1", "scores pass 2 (block max)"),
    (r"proxy_scores_kernel.*Pass\)2", "scores pass 1 (row stats, block logits)"),
    (r"block_max_from_logits", "scores block max (from logits)"),
    (r"budget_partials", "budget partials"),
    (r"budget_heads", "budget heads"),
    (r"select_kernel", "select"),
    (r"[Mm]emset", "memset"),
]


def stage_of(name):
    for pattern, label in STAGES:
        if re.search(pattern, name):
            return label
    return "other: " + name[:80]


def stage_times(fn):
    """Milliseconds per call of each estimation stage, from a CUPTI trace of TRACED_CALLS calls."""
    from torch.profiler import ProfilerActivity, profile
    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(TRACED_CALLS):
            fn()
        torch.cuda.synchronize()
    totals = collections.OrderedDict()
    for event in prof.events():
        if event.device_type != torch.autograd.DeviceType.CUDA:
            continue
        label = stage_of(event.name)
        totals[label] = totals.get(label, 0.0) + event.device_time_total / 1000.0 / TRACED_CALLS
    return dict(totals)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--build", default="build-gpu")
    ap.add_argument("--out", default="bench-out")
    ap.add_argument("--sizes", default=",".join(map(str, SIZES)))
    ap.add_argument("--shapes", default=",".join(SHAPES), help="comma-separated names of %s" % list(SHAPES))
    ap.add_argument("--baseline", default="", help="build folder of a second library to time next to ours")
    ap.add_argument("--baseline-label", default="", help="what the baseline build is (recorded)")
    ap.add_argument("--prefix", default="estimate-stages-")
    ap.add_argument("--no-stages", action="store_true",
                    help="no CUPTI trace (under Nsight Compute, which holds CUPTI itself)")
    args = ap.parse_args()
    shapes = args.shapes.split(",")
    unknown = [s for s in shapes if s not in SHAPES]
    if unknown:
        ap.error("--shapes: %s not among %s" % (unknown, list(SHAPES)))
    sizes = [int(x) for x in args.sizes.split(",") if x]
    os.makedirs(args.out, exist_ok=True)
    t_start = time.time()
    libs = {"ours": capi.Library(os.path.join(args.build, "libproxyattn.so"))}
    if args.baseline:
        libs["baseline"] = capi.Library(os.path.join(args.baseline, "libproxyattn.so"))
    info = machine()
    print("machine:", info, flush=True)
    stream = torch.cuda.current_stream().cuda_stream
    torch.manual_seed(0)
    from torch.nn.attention import SDPBackend, sdpa_kernel

    results = []
    for shape in shapes:
        hq, hkv, d = SHAPES[shape]
        for n in sizes:
            q = torch.randn(n, hq, d, device="cuda", dtype=torch.bfloat16)
            k = torch.randn(n, hkv, d, device="cuda", dtype=torch.bfloat16)
            v = torch.randn(n, hkv, d, device="cuda", dtype=torch.bfloat16)
            qt, kt, vt = (x.permute(1, 0, 2).contiguous()[None] for x in (q, k, v))

            def cudnn():
                with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
                    return F.scaled_dot_product_attention(qt, kt, vt, is_causal=True, enable_gqa=True)

            for g in sorted({1, hkv}):
                calls, keep = {}, []
                for name, lib in libs.items():
                    problem = lib.problem([n], hq, hkv, d, "bfloat16")
                    config = lib.config(d, num_proxy_groups=g)
                    nbytes, wbytes = lib.plan_bytes(problem, config), lib.workspace_bytes(problem, config)
                    storage = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
                    workspace = torch.empty(wbytes, dtype=torch.uint8, device="cuda")
                    plan = lib.plan_create(problem, config, storage.data_ptr(), nbytes)
                    qa, ka = lib.tensor(q), lib.tensor(k)
                    calls[name] = (lambda lib=lib, plan=plan, qa=qa, ka=ka, w=workspace, wb=wbytes:
                                   lib.estimate(plan, qa, ka, w.data_ptr(), wb, stream))
                    keep.append((lib, plan, storage, workspace, problem, wbytes))
                    if name == "ours":  # the same plan tuned (the default tuning's workspace holds any tuning's)
                        calls["two_pass"] = lib.tuned(plan, calls["ours"], **TWO_PASS)
                calls["cudnn"] = cudnn
                t = interleaved_median_ms(calls, REPEATS, WARMUP)
                row = {"shape": shape, "num_q_heads": hq, "num_kv_heads": hkv, "head_dim": d, "N": n, "g": g,
                       "estimate_ms": t["ours"], "two_pass_ms": t["two_pass"], "cudnn_dense_ms": t["cudnn"],
                       "share_of_dense": t["ours"] / t["cudnn"],
                       "stages_ms": {} if args.no_stages else stage_times(calls["ours"])}
                if "baseline" in t:
                    row["baseline_ms"] = t["baseline"]
                    row["baseline_stages_ms"] = {} if args.no_stages else stage_times(calls["baseline"])
                for lib, plan, *_ in keep:
                    lib.plan_free(plan)
                results.append(row)
                stages = ", ".join("%s %.3f" % kv for kv in row["stages_ms"].items())
                print("%-20s N %6d g %d: estimate %.3f ms (two passes %.3f)%s (%.2f%% of cuDNN %.2f ms) "
                      "[%s]  [%.0f s]" % (
                          shape, n, g, row["estimate_ms"], row["two_pass_ms"],
                          " baseline %.3f" % row["baseline_ms"] if "baseline_ms" in row else "",
                          100 * row["share_of_dense"], row["cudnn_dense_ms"], stages, time.time() - t_start),
                      flush=True)
            del q, k, v, qt, kt, vt
            torch.cuda.empty_cache()

    doc = {"benchmark": "estimate-stages", "date": datetime.date.today().isoformat(), "machine": info,
           "config": "library defaults (b = 128, s = 4, gamma 0.95, 2048-token floor), bf16, Gaussian inputs",
           "method": "CUDA events, median of %d samples taken in turn with cuDNN (and the baseline); "
                     "stages: CUPTI kernel times (torch.profiler) over %d calls" % (REPEATS, TRACED_CALLS),
           "results": results, "baseline": args.baseline_label or args.baseline or None,
           "wall_s": time.time() - t_start}
    print("wrote", write_result(args.out, doc, prefix=args.prefix))


if __name__ == "__main__":
    main()
