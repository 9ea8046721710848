"""Energy per call at long N (issue 5): joules, average power and SM clock of our sm90 kernel,
our sm80 kernel, cuDNN SDPA dense causal and FlexAttention on the same block mask.

Long attention kernels on the H100 run at the power cap (700 W): the SM clock falls with the
kernel's length (docs/history.md, "Measuring": the power cap). There a kernel's time
is its energy over the cap, so the measure that compares kernels is work per joule: effective
TFLOP (4 d x kept causal token pairs) per joule of the whole board, read from NVML's energy
counter (nvmlDeviceGetTotalEnergyConsumption, millijoules) around a series of back-to-back
calls of at least SERIES_S seconds. Methods are sampled in turn, ROUNDS rounds in a rotating
order, after a spin-up; the medians are the figures. The SM clock is read every CLOCK_POLL_S
while the series runs. Masks and inputs as in the attention suite (masks.py; one sequence,
bf16, block 128, per-head budgets spread 0.5x..1.5x).
"""
import argparse
import statistics
import time

import numpy as np
import torch

from . import arguments, kernel_plan, masks
from .attention import DEFAULT_SHAPE
from .baselines import Flex, sdpa
from .config import BLOCK_SIZE
from .nvml import Nvml
from .timing import machine, spin_up

DEFAULT_POINTS = "65536:1,131072:0.2,131072:0.5,131072:1"
SERIES_S = 1.5          # each sample: back-to-back calls for at least this long
MIN_SERIES_CALLS = 2
ROUNDS = 3              # samples per method, the methods in a rotating order
CLOCK_POLL_S = 0.02     # SM clock samples while a series runs (and the idle tail it may add)


def points(text):
    """N:density,...: N a multiple of the block, 0 < density <= 1 (an argparse type)."""
    out = []
    for field in text.split(","):
        try:
            n, density = field.split(":")
            n, density = int(n), float(density)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{field}: expected N:density") from None
        if n % BLOCK_SIZE or not 0 < density <= 1:
            raise argparse.ArgumentTypeError("%s: N a multiple of %d, 0 < density <= 1" % (field, BLOCK_SIZE))
        out.append((n, density))
    return out


def add_arguments(ap):
    ap.add_argument("--points", type=points, default=points(DEFAULT_POINTS),
                    help="N:density,... (density 1 = all blocks; default %s)" % DEFAULT_POINTS)
    ap.add_argument("--shape", type=arguments.shape, default=DEFAULT_SHAPE, help="Q heads, KV heads, head_dim")
    ap.add_argument("--no-flex", action="store_true")


def series(nvml, fn, calls):
    """(ms per call, joules per call, median SM MHz) of `calls` back-to-back calls of fn()."""
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    e0 = nvml.energy_mj()
    start.record()
    for _ in range(calls):
        fn()
    end.record()
    clocks = []
    while not end.query():
        clocks.append(nvml.sm_clock_mhz())
        time.sleep(CLOCK_POLL_S)
    end.synchronize()
    joules = (nvml.energy_mj() - e0) / 1e3
    return start.elapsed_time(end) / calls, joules / calls, statistics.median(clocks) if clocks else float("nan")


def measure(nvml, calls_by_name):
    """name -> {ms, joules, watts, sm_mhz}: medians of ROUNDS series, methods in turn."""
    names = list(calls_by_name)
    per_series = {}
    for name, fn in calls_by_name.items():  # warm-up (Flex compiles) and the calls a series needs
        fn()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        per_series[name] = max(MIN_SERIES_CALLS, int(SERIES_S / max(time.perf_counter() - t0, 1e-4)))
    samples = {name: [] for name in names}
    for r in range(ROUNDS):
        for name in names[r % len(names):] + names[:r % len(names)]:
            samples[name].append(series(nvml, calls_by_name[name], per_series[name]))
    out = {}
    for name, rows in samples.items():
        ms = statistics.median(s[0] for s in rows)
        joules = statistics.median(s[1] for s in rows)
        out[name] = {"ms": ms, "joules": joules, "watts": statistics.median(s[1] / s[0] * 1e3 for s in rows),
                     "sm_mhz": statistics.median(s[2] for s in rows), "calls_per_series": per_series[name]}
    return out


def run(args):
    shape = args.shape
    nvml = Nvml(torch.cuda.current_device())
    info = machine()
    print("machine:", info, flush=True)
    stream = torch.cuda.current_stream().cuda_stream
    rng = np.random.default_rng(0)
    flex = None if args.no_flex else Flex()
    config = kernel_plan.index_config(shape.d)
    spin_up()
    t_start = time.time()
    results = []
    for n, density in args.points:
        nqb = n // BLOCK_SIZE
        q, k, v, o, qt, kt, vt = kernel_plan.random_inputs(n, shape)
        plan = kernel_plan.plan(shape, n, q, config)
        plan.set_index(masks.make_order(nqb, rng), masks.make_count(nqb, shape.hq, density, rng))
        stats = plan.stats()
        attend = kernel_plan.attend_call(plan, q, k, v, o, stream)
        calls = {"ours": attend, "sm80": kernel_plan.tuned(plan, attend, **kernel_plan.SM80),
                 "cudnn": lambda: sdpa("cudnn", qt, kt, vt, True)}
        if flex is not None:
            bm = plan.to_flex_block_mask(0, device="cuda", exact_mask_mod=False)
            calls["flex"] = lambda: flex(qt, kt, vt, bm)
        m = measure(nvml, calls)
        flops = 4.0 * shape.d * stats["kept_token_pairs"]
        dense_flops = 4.0 * shape.d * shape.hq * n * (n + 1) / 2
        row = {"N": n, "target_density": density, "density": stats["density"], "methods": m}
        for name, r in m.items():
            work = dense_flops if name == "cudnn" else flops
            r["tflops_effective"] = work / r["ms"] / 1e9
            r["tflop_per_joule"] = work / r["joules"] / 1e12
        results.append(row)
        print("N %6d density %.3f: %s  [%.0f s]" % (n, stats["density"], "  ".join(
            "%s %.2f ms %.2f J %.0f W %.0f MHz %.3f TFLOP/J" % (name, r["ms"], r["joules"], r["watts"], r["sm_mhz"],
                                                               r["tflop_per_joule"]) for name, r in m.items()),
            time.time() - t_start), flush=True)
        del plan, q, k, v, o, qt, kt, vt, calls
        torch.cuda.empty_cache()

    doc = {"benchmark": "joules per call (NVML board energy) of block-sparse attention at long N: ours (sm90), "
                        "our sm80 kernel, cuDNN dense causal, FlexAttention on the same mask",
           "machine": info,
           "shape": {"num_q_heads": shape.hq, "num_kv_heads": shape.hkv, "head_dim": shape.d, "block": BLOCK_SIZE},
           "method": "series of back-to-back calls of >= %.1f s between NVML energy readings and CUDA events; medians "
                     "of %d series per method, methods in a rotating order; SM clock polled every %.2f s"
                     % (SERIES_S, ROUNDS, CLOCK_POLL_S),
           "results": results, "wall_s": time.time() - t_start}
    return doc, "energy-%d-%d-d%d-" % shape
