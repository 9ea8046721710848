#!/usr/bin/env python3
"""Energy per call at long N (issue 5): joules, average power and SM clock of our sm90 kernel,
our sm80 kernel, cuDNN SDPA dense causal and FlexAttention on the same block mask.

Long attention kernels on the H100 run at the power cap (700 W): the SM clock falls with the
kernel's length (docs/history.md, "Measuring": the power cap). There a kernel's time
is its energy over the cap, so the measure that compares kernels is work per joule: effective
TFLOP (4 d x kept causal token pairs) per joule of the whole board, read from NVML's energy
counter (nvmlDeviceGetTotalEnergyConsumption, millijoules) around a series of back-to-back
calls of at least SERIES_S seconds. Methods are sampled in turn, ROUNDS rounds in a rotating
order, after a spin-up; the medians are the figures. The SM clock is read every CLOCK_POLL_S
while the series runs. Masks and inputs as in attention_bench.py (its make_order, make_count
and flex_block_mask; one sequence, bf16, block 128, per-head budgets spread 0.5x..1.5x).

Usage: energy_bench.py --build build-gpu --out DIR [--points 65536:1,131072:0.5 --shape 32,8,128]
"""
import argparse
import ctypes
import os
import statistics
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))
import attention_bench as ab  # noqa: E402
import capi  # noqa: E402
from proxyattn.bench.timing import machine, spin_up, write_result  # noqa: E402

DEFAULT_POINTS = "65536:1,131072:0.2,131072:0.5,131072:1"
SERIES_S = 1.5          # each sample: back-to-back calls for at least this long
ROUNDS = 3              # samples per method, the methods in a rotating order
CLOCK_POLL_S = 0.02     # SM clock samples while a series runs (and the idle tail it may add)
NVML_SUCCESS, NVML_CLOCK_SM = 0, 1


class Nvml:
    """The few NVML calls this benchmark needs, through ctypes (libnvidia-ml ships with the
    driver; no Python package)."""

    def __init__(self, device):
        self.lib = ctypes.CDLL("libnvidia-ml.so.1")
        self._check(self.lib.nvmlInit_v2(), "nvmlInit_v2")
        props = torch.cuda.get_device_properties(device)
        bus_id = b"%08x:%02x:%02x.0" % (props.pci_domain_id, props.pci_bus_id, props.pci_device_id)
        self.handle = ctypes.c_void_p()
        self._check(self.lib.nvmlDeviceGetHandleByPciBusId_v2(bus_id, ctypes.byref(self.handle)),
                    "nvmlDeviceGetHandleByPciBusId_v2(%s)" % bus_id.decode())

    @staticmethod
    def _check(result, what):
        if result != NVML_SUCCESS:
            raise RuntimeError("%s: NVML error %d" % (what, result))

    def energy_mj(self):
        value = ctypes.c_ulonglong()
        self._check(self.lib.nvmlDeviceGetTotalEnergyConsumption(self.handle, ctypes.byref(value)),
                    "nvmlDeviceGetTotalEnergyConsumption")
        return value.value

    def sm_clock_mhz(self):
        value = ctypes.c_uint()
        self._check(self.lib.nvmlDeviceGetClockInfo(self.handle, NVML_CLOCK_SM, ctypes.byref(value)),
                    "nvmlDeviceGetClockInfo")
        return value.value


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
        per_series[name] = max(2, int(SERIES_S / max(time.perf_counter() - t0, 1e-4)))
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


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--build", default="build-gpu")
    ap.add_argument("--out", default="bench-out")
    ap.add_argument("--points", default=DEFAULT_POINTS, help="N:density,... (density 1 = all blocks)")
    ap.add_argument("--shape", default=f"{ab.HQ},{ab.HKV},{ab.D}", help="Q heads, KV heads, head_dim")
    ap.add_argument("--no-flex", action="store_true")
    args = ap.parse_args()
    ab.set_shape(args.shape)
    hq, hkv, d, block = ab.HQ, ab.HKV, ab.D, ab.BLOCK
    points = []
    for field in args.points.split(","):
        n, density = field.split(":")
        if int(n) % block or not 0 < float(density) <= 1:
            ap.error("--points %s: N a multiple of %d, 0 < density <= 1" % (field, block))
        points.append((int(n), float(density)))
    os.makedirs(args.out, exist_ok=True)
    lib = capi.Library(os.path.join(args.build, "libproxyattn.so"))
    nvml = Nvml(torch.cuda.current_device())
    info = machine()
    print("machine:", info, flush=True)
    stream = torch.cuda.current_stream().cuda_stream
    rng = np.random.default_rng(0)
    flex = None
    if not args.no_flex:
        from torch.nn.attention.flex_attention import flex_attention
        flex = torch.compile(flex_attention, dynamic=False)  # per N, as in attention_bench
    from torch.nn.attention import SDPBackend, sdpa_kernel

    spin_up()
    t_start = time.time()
    results = []
    for n, density in points:
        nqb = n // block
        q, k, v, o, qt, kt, vt = ab.make_inputs(n)
        storage, plan = ab.make_plan(lib, n)
        qa, ka, va, oa = (lib.tensor(x) for x in (q, k, v, o))
        order, count = ab.make_order(nqb, rng), ab.make_count(nqb, density, rng)  # alive while set_index reads them
        lib.set_index(plan, order.ctypes.data, count.ctypes.data)
        stats = lib.stats(plan)
        attend = lambda: lib.attend(plan, qa, ka, va, oa, 0, stream)  # noqa: E731

        def cudnn():
            with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
                return F.scaled_dot_product_attention(qt, kt, vt, is_causal=True, enable_gqa=True)

        calls = {"ours": attend, "sm80": lib.tuned(plan, attend, **ab.SM80), "cudnn": cudnn}
        if flex is not None:
            bm = ab.flex_block_mask(lib, plan, nqb)
            calls["flex"] = lambda: flex(qt, kt, vt, block_mask=bm, enable_gqa=True)
        m = measure(nvml, calls)
        flops = 4.0 * d * stats.kept_token_pairs
        dense_flops = 4.0 * d * hq * n * (n + 1) / 2
        row = {"N": n, "target_density": density, "density": stats.density, "methods": m}
        for name, r in m.items():
            work = dense_flops if name == "cudnn" else flops
            r["tflops_effective"] = work / r["ms"] / 1e9
            r["tflop_per_joule"] = work / r["joules"] / 1e12
        results.append(row)
        print("N %6d density %.3f: %s  [%.0f s]" % (n, stats.density, "  ".join(
            "%s %.2f ms %.2f J %.0f W %.0f MHz %.3f TFLOP/J" % (name, r["ms"], r["joules"], r["watts"], r["sm_mhz"],
                                                               r["tflop_per_joule"]) for name, r in m.items()),
            time.time() - t_start), flush=True)
        lib.plan_free(plan)
        del storage, q, k, v, o, qt, kt, vt, calls
        torch.cuda.empty_cache()

    path = write_result(args.out, {
        "benchmark": "joules per call (NVML board energy) of block-sparse attention at long N: ours (sm90), "
                     "our sm80 kernel, cuDNN dense causal, FlexAttention on the same mask",
        "machine": info, "shape": {"num_q_heads": hq, "num_kv_heads": hkv, "head_dim": d, "block": block},
        "method": "series of back-to-back calls of >= %.1f s between NVML energy readings and CUDA events; medians "
                  "of %d series per method, methods in a rotating order; SM clock polled every %.2f s"
                  % (SERIES_S, ROUNDS, CLOCK_POLL_S),
        "results": results, "wall_s": time.time() - t_start}, prefix="energy-%d-%d-d%d-" % (hq, hkv, d))
    print("wrote", path, flush=True)


if __name__ == "__main__":
    main()
