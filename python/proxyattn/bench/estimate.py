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
est_block_logits = 0: the path of other strides and of logit buffers over 1 GiB), and with
other recall rules of --rules (issue #28; default: the paper's budget rule with anchors on top,
the default before the ranked rule, and with anchors counted in the budget, the default before
that), each "ANCHOR_MODE:R[:BUDGET_RULE]" a plan of its own timed in the same rounds
("rules_ms").
"""
import collections
import datetime
import re
import time

import torch

import proxyattn

from . import arguments, config, kernel_plan
from .baselines import sdpa
from .timing import interleaved_median_ms, machine

# name -> (Q heads, KV heads, head_dim): the suite's shapes, and the real models of docs/accuracy.md
SHAPES = {name: arguments.Shape(*shape[:3]) for name, shape in {**config.SHAPES, **config.REAL_MODEL_SHAPES}.items()}
SIZES = [32768, 131072]
REPEATS, WARMUP = 10, 2
TRACED_CALLS = 3  # calls per trace; a stage's time is its kernels' total over them / TRACED_CALLS
TWO_PASS = {"est_block_logits": 0}  # tuning: pass 2 instead of the block logits
PREFIX = "estimate-stages-"
RULES = ["on_top:1:paper", "in_budget:1:paper"]  # anchor_mode:budget_rows[:budget_rule] timed beside the defaults
STAGE_NAME_CHARS = 80  # of an unknown kernel's name in its stage label

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


def add_arguments(ap):
    ap.add_argument("--sizes", type=arguments.ints, default=SIZES)
    ap.add_argument("--shapes", type=arguments.names, default=list(SHAPES),
                    help="comma-separated names of %s" % list(SHAPES))
    ap.add_argument("--rules", type=arguments.names, default=RULES,
                    help="comma-separated ANCHOR_MODE:BUDGET_ROWS[:BUDGET_RULE] settings timed beside the defaults "
                         "(empty: none)")
    ap.add_argument("--no-stages", action="store_true",
                    help="no CUPTI trace (under Nsight Compute, which holds CUPTI itself)")
    arguments.add_baseline(ap)


def rule_settings(rule):
    """'on_top:4:paper' -> {"anchor_mode": "on_top", "budget_rows": 4, "budget_rule": "paper"}; the budget
    rule is the default's when left out."""
    mode, _, rest = rule.partition(":")
    rows, _, budget_rule = rest.partition(":")
    settings = {"anchor_mode": mode, "budget_rows": int(rows or 1)}
    if budget_rule:
        settings["budget_rule"] = budget_rule
    return settings


def stage_of(name):
    for pattern, label in STAGES:
        if re.search(pattern, name):
            return label
    return "other: " + name[:STAGE_NAME_CHARS]


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


def run(args):
    arguments.known("--shapes", args.shapes, SHAPES)
    t_start = time.time()
    libraries = {"ours": None}
    if args.baseline:
        libraries["baseline"] = kernel_plan.load_library(args.baseline)
    info = machine()
    print("machine:", info, flush=True)
    stream = torch.cuda.current_stream().cuda_stream
    torch.manual_seed(0)

    results = []
    for name in args.shapes:
        shape = SHAPES[name]
        for n in args.sizes:
            q, k, v, _, qt, kt, vt = kernel_plan.random_inputs(n, shape)
            for g in sorted({1, shape.hkv}):
                settings = proxyattn.Settings(num_proxy_groups=g).resolve(shape.d)
                calls, plans = {}, []
                for which, library in libraries.items():
                    plan = kernel_plan.plan(shape, n, q, settings, library=library)
                    plans.append(plan)
                    calls[which] = kernel_plan.estimate_call(plan, q, k, stream)
                    if which == "ours":  # the same plan tuned (the default tuning's workspace holds any tuning's)
                        calls["two_pass"] = kernel_plan.tuned(plan, calls["ours"], **TWO_PASS)
                for rule in args.rules:
                    ruled = proxyattn.Settings(num_proxy_groups=g, **rule_settings(rule)).resolve(shape.d)
                    plans.append(kernel_plan.plan(shape, n, q, ruled))
                    calls["rule " + rule] = kernel_plan.estimate_call(plans[-1], q, k, stream)
                calls["cudnn"] = lambda: sdpa("cudnn", qt, kt, vt, True)
                t = interleaved_median_ms(calls, REPEATS, WARMUP)
                row = {"shape": name, "num_q_heads": shape.hq, "num_kv_heads": shape.hkv, "head_dim": shape.d,
                       "N": n, "g": g, "estimate_ms": t["ours"], "two_pass_ms": t["two_pass"],
                       "cudnn_dense_ms": t["cudnn"], "share_of_dense": t["ours"] / t["cudnn"],
                       "rules_ms": {rule: t["rule " + rule] for rule in args.rules},
                       "rules_stages_ms": {rule: {} if args.no_stages else stage_times(calls["rule " + rule])
                                           for rule in args.rules},
                       "stages_ms": {} if args.no_stages else stage_times(calls["ours"])}
                if "baseline" in t:
                    row["baseline_ms"] = t["baseline"]
                    row["baseline_stages_ms"] = {} if args.no_stages else stage_times(calls["baseline"])
                del plans, calls
                results.append(row)
                stages = ", ".join("%s %.3f" % kv for kv in row["stages_ms"].items())
                rules = "".join(" %s %.3f" % kv for kv in row["rules_ms"].items())
                print("%-20s N %6d g %d: estimate %.3f ms (two passes %.3f%s)%s (%.2f%% of cuDNN %.2f ms) "
                      "[%s]  [%.0f s]" % (
                          name, n, g, row["estimate_ms"], row["two_pass_ms"], rules,
                          " baseline %.3f" % row["baseline_ms"] if "baseline_ms" in row else "",
                          100 * row["share_of_dense"], row["cudnn_dense_ms"], stages, time.time() - t_start),
                      flush=True)
            del q, k, v, qt, kt, vt
            torch.cuda.empty_cache()

    doc = {"benchmark": "estimate-stages", "date": datetime.date.today().isoformat(), "machine": info,
           "config": "library defaults (b = 128, s = 4, gamma 0.95, 2048-token floor), bf16, Gaussian inputs",
           "method": "CUDA events, median of %d samples taken in turn with cuDNN (and the baseline); "
                     "stages: CUPTI kernel times (torch.profiler) over %d calls" % (REPEATS, TRACED_CALLS),
           "results": results, "baseline": arguments.baseline_label(args), "wall_s": time.time() - t_start}
    return doc, PREFIX
