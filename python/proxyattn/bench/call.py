"""What one attention call costs at short and mid lengths, on the device and on the host:
ProxyAttn through its public call (proxyattn.attention, a torch custom op), through the
transformers integration (proxyattn.hf.attention_forward, [B, H, N, d] views as a model passes
them) and in its two steps (estimate, attend on a cached plan), against transformers' SDPA
attention function (PyTorch's default backend choice, and forced to cuDNN: that one's host
time includes entering and leaving `sdpa_kernel`).

A model's prefill runs layer after layer on one stream; a call whose host work takes longer
than its device work leaves the GPU idle unless the rest of the layer covers it. So per call:
- device_ms: time of CALLS back-to-back calls between CUDA events / CALLS, with the host
  already done enqueuing them (the stream is held by a sleeping kernel while the host
  enqueues, and the start event follows that kernel), so no host work is in it;
- host_ms: wall time to enqueue the same CALLS calls / CALLS (nothing waits on the device:
  the check `host_ahead` says the sleeping kernel was still running when the host finished).
Medians of REPEATS samples after WARMUP calls. Inputs: the library's structured default input
of each shape, [1, N, H, d] bf16 (the density is what it gives at gamma 0.95).
"""
import statistics
import time

import torch

import proxyattn
import proxyattn.hf
from proxyattn import _api

from . import arguments, compare, config
from .timing import machine, spin_up

# name -> (Hq, Hkv, d, proxy groups g): the real models and Llama-3.1-8B
SHAPES = {**config.REAL_MODEL_SHAPES, "llama3.1-8b": config.SHAPES["llama3.1-8b"]}
SIZES = (4096, 8192, 16384, 32768)
GAMMA = 0.95
CALLS, REPEATS, WARMUP = 16, 7, 3
HOLD_MS_PER_CALL = 4.0  # the sleeping kernel holds the stream this long per enqueued call
SLEEP_CYCLES_PER_MS = 2_000_000  # torch.cuda._sleep spins about this many cycles per ms (~2 GHz)
PREFIX = "calls-"  # the results files of this suite (the suite is `call`)


def add_arguments(ap):
    ap.add_argument("--sizes", type=arguments.ints, default=list(SIZES))
    ap.add_argument("--shapes", type=arguments.names, default=list(SHAPES),
                    help="comma-separated names of %s" % list(SHAPES))


class Stub(torch.nn.Module):
    """The attributes transformers' attention functions read from an attention module."""

    def __init__(self, hq, hkv):
        super().__init__()
        self.is_causal, self.num_key_value_groups, self.layer_idx = True, hq // hkv, 1
        self.eval()


def sample(fn):
    """(device_ms, host_ms, host_ahead) of CALLS calls of fn()."""
    held = torch.cuda.Event()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda._sleep(int(HOLD_MS_PER_CALL * CALLS * SLEEP_CYCLES_PER_MS))
    held.record()
    start.record()
    t0 = time.perf_counter()
    for _ in range(CALLS):
        fn()
    host = (time.perf_counter() - t0) * 1e3 / CALLS
    ahead = not held.query()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / CALLS, host, ahead


def measure(methods):
    """name -> {device_ms, host_ms, host_ahead}: medians, the methods sampled in turn."""
    for fn in methods.values():
        for _ in range(WARMUP):
            fn()
    torch.cuda.synchronize()
    samples = {name: [] for name in methods}
    for _ in range(REPEATS):
        for name, fn in methods.items():
            samples[name].append(sample(fn))
    return {name: {"device_ms": statistics.median(s[0] for s in rows),
                   "host_ms": statistics.median(s[1] for s in rows),
                   "host_ahead": all(s[2] for s in rows)} for name, rows in samples.items()}


def methods_for(hq, hkv, d, g, n):
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    q, k, v = (t[None] for t in compare.structured_input(n, hq, hkv, d))  # [1, N, H, d]
    heads_first = tuple(t.transpose(1, 2).contiguous() for t in (q, k, v))  # [1, H, N, d], as a model has them
    module = Stub(hq, hkv)
    settings = dict(gamma=GAMMA, num_proxy_groups=g)
    proxyattn.hf.enable(**settings)
    flat = tuple(t[0] for t in (q, k, v))  # [N, H, d]
    resolved = proxyattn.Settings(**settings).resolve(d)
    plan = _api._cached_plan(flat[0], flat[1], [0, n], resolved, _api._stream(flat[0]))
    plan._estimate(flat[0], flat[1])

    def sdpa_cudnn():
        with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
            return sdpa_attention_forward(module, *heads_first, None)

    methods = {
        "sdpa_default": lambda: sdpa_attention_forward(module, *heads_first, None),
        "sdpa_cudnn": sdpa_cudnn,
        "proxyattn_hf": lambda: proxyattn.hf.attention_forward(module, *heads_first, None),
        "proxyattn_attention": lambda: proxyattn.attention(q, k, v, **settings),
        "estimate": lambda: plan._estimate(flat[0], flat[1]),
        "attend": lambda: _api._attend_packed(plan, *flat, False),
    }
    return methods, plan.density


def run(args):
    arguments.known("--shapes", args.shapes, SHAPES)
    t0 = time.time()
    spin_up()
    rows = []
    for shape in args.shapes:
        hq, hkv, d, g = SHAPES[shape]
        for n in args.sizes:
            methods, density = methods_for(hq, hkv, d, g, n)
            result = measure(methods)
            rows.append({"shape": shape, "num_q_heads": hq, "num_kv_heads": hkv, "head_dim": d, "g": g, "N": n,
                         "density": density, "methods": result})
            print(f"{shape:20s} N {n:6d} density {density:.3f} | " + " | ".join(
                f"{name} {r['device_ms']:.3f} / {r['host_ms']:.3f}{'' if r['host_ahead'] else ' (!)'}"
                for name, r in result.items()), flush=True)
            _api.clear_plan_cache()
            del methods
            torch.cuda.empty_cache()
    doc = {"benchmark": "call_bench", "machine": machine(), "gamma": GAMMA,
           "method": f"device ms and host ms per call: {CALLS} calls enqueued behind a sleeping kernel, "
                     f"median of {REPEATS} samples taken in turn after {WARMUP} warm-up calls",
           "results": rows, "wall_s": time.time() - t0}
    return doc, PREFIX
