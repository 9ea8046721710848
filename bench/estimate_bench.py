"""Benchmark of the GPU estimation (ALGORITHM.md steps 2-6) against dense attention and
against a plain PyTorch implementation of the same estimation.

For each N and g: our pa_estimate (CUDA events, warm-up, median of repeats), cuDNN SDPA
dense causal attention on the same Q, K, V (torch sdpa_kernel(CUDNN_ATTENTION), [B, H, N, d],
enable_gqa=True), and the estimation as a user would write it in PyTorch (mean heads,
stride slice, matmul + causal softmax chunked over query blocks, block max pooling, last-block
budget, torch.sort per row, cumsum). Inputs: Gaussian Q, K, V (std 1) made on the GPU;
Llama-3.1-8B shapes (32 Q / 8 KV heads, d = 128), bf16, default config (b = 128, s = 4,
gamma = 0.95, 2048-token floor). Writes $OUT/estimate-<date>-<device>.json.

  python3 bench/estimate_bench.py --build build-gpu --out OUT [--sizes 32768,131072,262144]
"""
import argparse
import datetime
import math
import os
import platform
import re
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import capi  # noqa: E402
from common import median_ms, times_ms, write_result  # noqa: E402

HQ, HKV, D = 32, 8, 128
GROUPS = (1, 8)
# Repeats (timed calls after warm-up) per measured thing; dense attention at 256K takes ~1 s.
WARMUP, REPEATS_OURS, REPEATS_TORCH, REPEATS_DENSE = 2, 10, 3, 3
TORCH_CHUNK_BYTES = 2 << 30  # the PyTorch estimation keeps each logit chunk under 2 GiB


def torch_estimate(q, k, g, block=128, stride=4, gamma=0.95, min_budget_tokens=2048):
    """The estimation written plainly in PyTorch. q [N, Hq, d], k [N, Hkv, d].
    Returns (order [g, Nqb, Nqb] rows sorted with forced blocks first, counts [Hq, Nqb],
    needed [Hq])."""
    n, hq, d = q.shape
    hkv = k.shape[1]
    scale = 1.0 / math.sqrt(d)
    nqb = (n + block - 1) // block
    pb = block // stride
    # Steps 2-3: proxies (fp32 mean, stored in the input dtype) at stride positions.
    qp = q.view(n, g, hq // g, d).float().mean(2).to(q.dtype)[::stride].transpose(0, 1)  # [g, ns, d]
    kp = k.view(n, g, hkv // g, d).float().mean(2).to(q.dtype)[::stride].transpose(0, 1)
    ns = qp.shape[1]
    # Step 4: causal softmax per sampled row, max pooled over (query block, key block) tiles.
    scores = torch.zeros(g, nqb, nqb, device=q.device, dtype=torch.float32)
    rows_per_chunk = max(pb, (TORCH_CHUNK_BYTES // (4 * g * ns)) // pb * pb)
    for r0 in range(0, ns, rows_per_chunk):
        r1 = min(ns, r0 + rows_per_chunk)
        logits = torch.matmul(qp[:, r0:r1], kp[:, :r1].transpose(1, 2)).float() * scale  # [g, R, r1]
        rows = torch.arange(r0, r1, device=q.device)[:, None]
        keys = torch.arange(r1, device=q.device)[None, :]
        logits.masked_fill_(keys > rows, float("-inf"))
        p = torch.softmax(logits, dim=-1)
        rpad = (-(r1 - r0)) % pb
        kpad = (-r1) % pb
        p = F.pad(p, (0, kpad, 0, rpad))
        tiles = p.view(g, p.shape[1] // pb, pb, p.shape[2] // pb, pb).amax(dim=(2, 4))
        scores[:, r0 // pb:r0 // pb + tiles.shape[1], :tiles.shape[2]] = tiles
    # Step 5: per-head budget from the last query block, mass per key block.
    q0 = (nqb - 1) * block
    ql = q[q0:].transpose(0, 1)  # [Hq, rows, d]
    kk = k.transpose(0, 1).repeat_interleave(hq // hkv, dim=0)  # [Hq, N, d]
    logits = torch.matmul(ql, kk.transpose(1, 2)).float() * scale  # [Hq, rows, N]
    rows = torch.arange(q0, n, device=q.device)[:, None]
    keys = torch.arange(n, device=q.device)[None, :]
    logits.masked_fill_(keys > rows, float("-inf"))
    p = F.pad(torch.softmax(logits, dim=-1), (0, nqb * block - n))
    mass = p.view(hq, n - q0, nqb, block).sum(-1).mean(1)  # [Hq, Nqb]
    sorted_mass = mass.sort(dim=-1, descending=True).values
    cum = sorted_mass.cumsum(-1)
    needed = (cum < gamma * cum[:, -1:]).sum(-1) + 1
    needed = needed.clamp(max=nqb)
    budget = needed.clamp(min=(min_budget_tokens + block - 1) // block).clamp(max=nqb)
    # Step 6: one sort per (group, row); forced blocks (sink, then diagonal) first.
    m = torch.arange(nqb, device=q.device)
    causal = m[None, :] <= m[:, None]
    ranked = torch.where(causal, scores, torch.full_like(scores, -1.0))
    ranked[:, m, m] = 2.0  # diagonal after the sink
    ranked[:, :, 0] = 3.0
    order = ranked.sort(dim=-1, descending=True, stable=True).indices  # [g, Nqb, Nqb]
    counts = torch.minimum(budget[:, None], (m + 1)[None, :])  # absolute mode, [Hq, Nqb]
    return order, counts, needed


def kernel_breakdown(fn, calls=3):
    """Mean device time per call (ms) of each kernel or memset fn launches (torch profiler,
    CUPTI: it sees the library's kernels too)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
    out = {}
    for e in prof.key_averages():
        total_us = getattr(e, "device_time_total", 0) or getattr(e, "cuda_time_total", 0)
        if not total_us:
            continue
        name = re.sub(r"^void |proxyattn::cuda::est::|\(anonymous namespace\)::", "", e.key)
        name = re.sub(r">\(.*$", ">", name)[:90]
        out[name] = out.get(name, 0.0) + total_us / calls / 1000.0
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def device_name():
    return torch.cuda.get_device_name(0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default="build-gpu")
    ap.add_argument("--out", default="bench-out")
    ap.add_argument("--sizes", default="32768,131072,262144")
    ap.add_argument("--ncu", action="store_true",
                    help="one estimation at the first size, g=1, nothing else (for ncu)")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    lib = capi.Library(os.path.join(args.build, "libproxyattn.so"))
    torch.manual_seed(0)
    dev = torch.device("cuda")
    free_bytes = torch.cuda.mem_get_info()[0]
    results = []
    t_start = time.time()
    for n in [int(x) for x in args.sizes.split(",")]:
        # Q, K, V, O and the PyTorch estimation's largest temporaries must fit.
        need = 2 * n * D * (2 * HQ + 2 * HKV) + 4 * HQ * 128 * n * 3 + 3 * TORCH_CHUNK_BYTES
        if need > 0.8 * free_bytes:
            print(f"N={n}: skipped, needs ~{need / 2**30:.1f} GiB of {free_bytes / 2**30:.1f} free")
            continue
        q = torch.randn(n, HQ, D, device=dev, dtype=torch.bfloat16)
        k = torch.randn(n, HKV, D, device=dev, dtype=torch.bfloat16)
        if args.ncu:
            problem = lib.problem([n], HQ, HKV, D, "bfloat16")
            config = lib.config(D, num_proxy_groups=1)
            plan_bytes, ws_bytes = lib.plan_bytes(problem, config), lib.workspace_bytes(problem, config)
            storage = torch.empty(plan_bytes, dtype=torch.uint8, device=dev)
            workspace = torch.empty(ws_bytes, dtype=torch.uint8, device=dev)
            plan = lib.plan_create(problem, config, storage.data_ptr(), plan_bytes)
            lib.estimate(plan, lib.tensor(q), lib.tensor(k), workspace.data_ptr(), ws_bytes,
                         torch.cuda.current_stream().cuda_stream)
            torch.cuda.synchronize()
            return
        v = torch.randn(n, HKV, D, device=dev, dtype=torch.bfloat16)

        # Dense causal attention through cuDNN, [B, H, N, d] views of the same tensors.
        qd, kd, vd = (t.transpose(0, 1).unsqueeze(0) for t in (q, k, v))

        def dense():
            with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
                return F.scaled_dot_product_attention(qd, kd, vd, is_causal=True, enable_gqa=True)

        dense_note = "cuDNN SDPA, enable_gqa=True"
        try:
            dense()
        except RuntimeError as e:  # cuDNN without GQA here: expand K and V to Hq heads
            print(f"  cuDNN with enable_gqa failed ({e}); expanding K, V", flush=True)
            kd = kd.repeat_interleave(HQ // HKV, dim=1)
            vd = vd.repeat_interleave(HQ // HKV, dim=1)
            dense_note = "cuDNN SDPA, K and V expanded to Hq heads"

            def dense():
                with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
                    return F.scaled_dot_product_attention(qd, kd, vd, is_causal=True)
        dense_ms = median_ms(dense, REPEATS_DENSE, 1)
        dense_tflops = 4 * HQ * D * n * n / 2 / (dense_ms * 1e-3) / 1e12
        print(f"N={n}: dense cuDNN {dense_ms:.2f} ms ({dense_tflops:.0f} TFLOP/s)", flush=True)

        for g in GROUPS:
            problem = lib.problem([n], HQ, HKV, D, "bfloat16")
            config = lib.config(D, num_proxy_groups=g)
            plan_bytes, ws_bytes = lib.plan_bytes(problem, config), lib.workspace_bytes(problem, config)
            storage = torch.empty(plan_bytes, dtype=torch.uint8, device=dev)
            workspace = torch.empty(ws_bytes, dtype=torch.uint8, device=dev)
            plan = lib.plan_create(problem, config, storage.data_ptr(), plan_bytes)
            tq, tk = lib.tensor(q), lib.tensor(k)
            stream = torch.cuda.current_stream().cuda_stream

            def ours():
                lib.estimate(plan, tq, tk, workspace.data_ptr(), ws_bytes, stream)

            ours_all = times_ms(ours, REPEATS_OURS, WARMUP)
            ours_ms = statistics.median(ours_all)
            torch.cuda.synchronize()
            try:
                breakdown = kernel_breakdown(ours)
            except Exception as e:  # noqa: BLE001 (the profiler is an extra)
                breakdown = {"error": repr(e)}
            lib.check(plan)
            stats = lib.stats(plan)
            budget, needed, _ = lib.heads(plan, 1, HQ)

            row = {"N": n, "g": g, "ours_ms": ours_ms, "ours_ms_all": ours_all,
                   "dense_cudnn_ms": dense_ms, "dense_kernel": dense_note, "share_of_dense_pct": 100.0 * ours_ms / dense_ms,
                   "density": stats.density, "needed_blocks": needed, "budget_blocks": budget,
                   "workspace_bytes": ws_bytes, "plan_bytes": plan_bytes,
                   "kernels_ms": breakdown}
            try:
                torch_ms = median_ms(lambda: torch_estimate(q, k, g), REPEATS_TORCH, 1)
                _, _, t_needed = torch_estimate(q, k, g)
                agree = sum(int(a == b) for a, b in zip(t_needed.tolist(), needed)) / HQ
                row.update({"torch_estimate_ms": torch_ms, "torch_over_ours": torch_ms / ours_ms,
                            "needed_equal_to_torch_fraction": agree})
            except Exception as e:  # noqa: BLE001 (report, keep the other numbers)
                row["torch_estimate_error"] = repr(e)
                print(f"  PyTorch estimation failed: {e!r}")
            lib.plan_free(plan)
            results.append(row)
            print(f"  g={g}: ours {ours_ms:.3f} ms = {row['share_of_dense_pct']:.2f}% of dense; "
                  f"PyTorch estimation {row.get('torch_estimate_ms', float('nan')):.2f} ms "
                  f"(x{row.get('torch_over_ours', float('nan')):.1f}); density {stats.density:.3f}",
                  flush=True)
            for name, ms in breakdown.items():
                print(f"      {ms:8.3f} ms  {name}" if isinstance(ms, float) else f"      {name}: {ms}")
            del storage, workspace
        del q, k, v, qd, kd, vd
        torch.cuda.empty_cache()

    print()
    print(f"{'N':>8} {'g':>2} {'ours ms':>9} {'dense ms':>9} {'share %':>8} {'torch ms':>9} {'ratio':>7}")
    for r in results:
        print(f"{r['N']:>8} {r['g']:>2} {r['ours_ms']:>9.3f} {r['dense_cudnn_ms']:>9.2f} "
              f"{r['share_of_dense_pct']:>8.2f} {r.get('torch_estimate_ms', float('nan')):>9.2f} "
              f"{r.get('torch_over_ours', float('nan')):>7.1f}")

    stamp = datetime.datetime.now(datetime.timezone.utc)
    doc = {
        "benchmark": "estimate",
        "date_utc": stamp.isoformat(timespec="seconds"),
        "device": device_name(),
        "versions": {"torch": torch.__version__, "cuda": torch.version.cuda,
                     "cudnn": torch.backends.cudnn.version(), "python": platform.python_version()},
        "shapes": {"num_q_heads": HQ, "num_kv_heads": HKV, "head_dim": D, "dtype": "bfloat16",
                   "inputs": "Gaussian std 1", "config": "defaults: b=128, s=4, gamma=0.95, "
                   "min_budget_tokens=2048, absolute budgets, sink+diagonal forced"},
        "timing": {"method": "CUDA events on the current stream, median", "warmup": WARMUP,
                   "repeats_ours": REPEATS_OURS, "repeats_torch": REPEATS_TORCH,
                   "repeats_dense": REPEATS_DENSE},
        "results": results,
        "wall_s": time.time() - t_start,
    }
    path = write_result(args.out, "estimate", device_name(), doc)
    print("wrote", path)


if __name__ == "__main__":
    main()
