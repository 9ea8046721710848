#!/usr/bin/env python3
"""One point of the attention benchmark for a profiler: the kernel the dispatcher picks (or
the sm80 kernel, --kernel sm80: the plan's tuning), on attention_bench.py's masks (its
rankings and per-head budgets), a few calls in a row. scripts/gpu-check's `profile` step runs
it under Nsight Compute, which records one of them.

Usage: profile_attention.py --build build-gpu --n 32768 --density 0.1 [--calls 3] [--shape 14,2,64]
       [--kernel sm80]
"""
import argparse
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import attention_bench as ab  # noqa: E402
import capi  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--build", default="build-gpu")
    ap.add_argument("--n", type=int, default=32768)
    ap.add_argument("--density", type=float, default=0.1, help="wanted share of the causal blocks (1 = all)")
    ap.add_argument("--calls", type=int, default=3)
    ap.add_argument("--shape", default=f"{ab.HQ},{ab.HKV},{ab.D}", help="Q heads, KV heads, head_dim")
    ap.add_argument("--kernel", choices=["auto", "sm80"], default="auto",
                    help="the device's kernel (sm90 on compute capability 9.0) or the sm80 kernel")
    args = ap.parse_args()
    ab.set_shape(args.shape)
    if args.n % ab.BLOCK or not 0.0 < args.density <= 1.0:
        ap.error("--n a multiple of %d, --density in (0, 1]" % ab.BLOCK)
    lib = capi.Library(os.path.join(args.build, "libproxyattn.so"))
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    n, nqb = args.n, args.n // ab.BLOCK
    q = torch.randn(n, ab.HQ, ab.D, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(n, ab.HKV, ab.D, device="cuda", dtype=torch.bfloat16)
    v = torch.randn(n, ab.HKV, ab.D, device="cuda", dtype=torch.bfloat16)
    o = torch.empty_like(q)
    problem = lib.problem([n], ab.HQ, ab.HKV, ab.D, "bfloat16")
    config = lib.config(ab.D, block_size=ab.BLOCK, min_budget_tokens=0, dense_below=0, num_proxy_groups=1)
    nbytes = lib.plan_bytes(problem, config)
    storage = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    plan = lib.plan_create(problem, config, storage.data_ptr(), nbytes)
    if args.kernel == "sm80":
        lib.set_tuning(plan, **ab.SM80)
    order, count = ab.make_order(nqb, rng), ab.make_count(nqb, args.density, rng)
    lib.set_index(plan, order.ctypes.data, count.ctypes.data)
    stats = lib.stats(plan)
    qa, ka, va, oa = (lib.tensor(x) for x in (q, k, v, o))
    stream = torch.cuda.current_stream().cuda_stream
    for _ in range(args.calls):
        lib.attend(plan, qa, ka, va, oa, 0, stream)
    torch.cuda.synchronize()
    print("N %d density %.3f kept token pairs %d: %d calls" % (n, stats.density, stats.kept_token_pairs, args.calls))
    lib.plan_free(plan)


if __name__ == "__main__":
    main()
