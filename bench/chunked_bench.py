#!/usr/bin/env python3
"""Chunked prefill on the GPU attention kernels (issue 22): a long prompt's attention in
chunks against one call, paged K/V against packed, and a short chunk at the end of a long
cached prefix, each against dense attention with the same bottom-right causal alignment.

The index: ProxyAttn-shaped masks written into the plans (pa_plan_set_index), as in
attention_bench.py (one ranking per row, budgets spread 0.5x..1.5x around the value giving
the wanted density). A chunk's plan gets the rows of the whole prompt's index that the chunk
holds, so the chunks attend to exactly the blocks the one-shot call does. Only the attention
is timed there; the estimation is timed on its own (one call against chunks from a paged cache
with its estimation state).

- chunks: one N-token prompt attended in one call against in chunks of C tokens (the sum of
  the chunk calls' medians); dense: cuDNN causal in one call, and SDPA with a bottom-right
  causal mask (torch.nn.attention.bias.causal_lower_right) per chunk.
- paged: one chunk (the last `--paged-chunk` queries of the prompt) with K/V packed and in
  paged caches of page sizes 16, 64, 128, 256 (pages shuffled; the sm90 kernel takes pages of
  >= 64 tokens, smaller ones run the sm80 kernel).
- tail: a chunk of 8K and of 1K queries at the end of a 120K prefix against dense.

Usage: chunked_bench.py --build build-gpu --out DIR [--n 131072] [--shape 32,8,128]
"""
import argparse
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))
import attention_bench as ab  # noqa: E402  (the synthetic index and the shape globals)
import capi  # noqa: E402
from proxyattn.bench.timing import interleaved_median_ms, machine, write_result  # noqa: E402

CHUNKS = [8192, 16384, 32768]
PAGE_SIZES = [16, 64, 128, 256]
DENSITIES = [0.2, 1.0]
TAIL_CHUNKS = [8192, 1024]
REPEATS, WARMUP = 5, 1


def chunk_index(order, count, m0, m1):
    """Rows m0..m1 - 1 of a one-group triangular index: (order, count) of a chunk's plan."""
    rows = order[m0 * (m0 + 1) // 2:m1 * (m1 + 1) // 2]
    return np.ascontiguousarray(rows), np.ascontiguousarray(count[m0:m1])


class Call:
    """A device plan of a chunk (q_len queries at the end of kv_len keys) with its index."""

    def __init__(self, lib, q_len, kv_len, order, count, page_size=0, num_pages=0, max_pages=0):
        self.problem = lib.chunked_problem([q_len], [kv_len], ab.HQ, ab.HKV, ab.D, "bfloat16", page_size,
                                           num_pages, max_pages)
        config = lib.config(ab.D, block_size=ab.BLOCK, min_budget_tokens=0, dense_below=0, num_proxy_groups=1)
        nbytes = lib.plan_bytes(self.problem, config)
        self.storage = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
        self.plan = lib.plan_create(self.problem, config, self.storage.data_ptr(), nbytes)
        m0, m1 = (kv_len - q_len) // ab.BLOCK, (kv_len + ab.BLOCK - 1) // ab.BLOCK
        self.order, self.count = chunk_index(order, count, m0, m1)
        lib.set_index(self.plan, self.order.ctypes.data, self.count.ctypes.data)
        self.stats = lib.stats(self.plan)


def sdpa_lower_right(q, k, v):
    """Dense attention of q [1, Hq, Lq, D] at the end of k, v [1, Hkv, Lk, D]: the backend
    SDPA picks for a bottom-right causal bias."""
    from torch.nn.attention.bias import causal_lower_right

    bias = causal_lower_right(q.shape[2], k.shape[2])
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, enable_gqa=True)


def estimation_in_chunks(lib, q, k, v, n, stream, doc):
    """The GPU estimation of an n-token prompt in one call against in chunks of CHUNKS tokens
    from a paged cache (pages of 128) with its estimation state, so a chunk pools only its own
    tokens; the library's default settings (gamma 0.95, the 2048-token budget floor)."""
    page = 128
    pages = n // page
    qa, ka, va = (lib.tensor(x) for x in (q, k, v))
    table = torch.arange(pages, device="cuda", dtype=torch.int32)[None].contiguous()
    config = lib.config(ab.D)
    alloc = lambda nbytes: (lambda t: (t, t.data_ptr()))(torch.zeros(nbytes, dtype=torch.uint8, device="cuda"))  # noqa: E731

    def plan_of(problem):
        nbytes, wbytes = lib.plan_bytes(problem, config), lib.workspace_bytes(problem, config)
        storage, work = alloc(nbytes)[0], alloc(max(wbytes, 1))[0]
        return storage, work, lib.plan_create(problem, config, storage.data_ptr(), nbytes)

    whole = plan_of(lib.problem([n], ab.HQ, ab.HKV, ab.D, "bfloat16"))
    calls = {"one_shot": lambda: lib.estimate(whole[2], qa, ka, whole[1].data_ptr(), whole[1].numel(), stream)}
    keep = []
    for c in CHUNKS:
        state = None
        for begin in range(0, n, c):
            end = min(n, begin + c)
            problem = lib.chunked_problem([end - begin], [end], ab.HQ, ab.HKV, ab.D, "bfloat16", page, pages, pages)
            if state is None:
                state = lib.proxy_state(problem, config, alloc)
            p = plan_of(problem)
            qc = lib.tensor(q[begin:end])
            keep.append((problem, p, qc))
            call = (lambda p=p, qc=qc, state=state: lib.estimate_kv(p[2], qc, ka, va, p[1].data_ptr(), p[1].numel(),
                                                                    table.data_ptr(), state, stream))
            call()  # in order once, so that every chunk finds its prefix's state
            calls["chunk_%d_%d" % (c, begin)] = call
    t = interleaved_median_ms(calls, REPEATS, WARMUP)
    row = {"one_shot_ms": t["one_shot"], "page_size": page}
    for c in CHUNKS:
        total = sum(t["chunk_%d_%d" % (c, b)] for b in range(0, n, c))
        row["chunk_%d" % c] = {"total_ms": total, "vs_one_shot": total / t["one_shot"]}
    doc["estimation"] = row
    print("estimation: one shot %.3f ms; %s" % (t["one_shot"], ", ".join(
        "C %d: %.3f ms (x%.3f)" % (c, row["chunk_%d" % c]["total_ms"], row["chunk_%d" % c]["vs_one_shot"])
        for c in CHUNKS)), flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--build", default="build-gpu")
    ap.add_argument("--out", default="bench-out")
    ap.add_argument("--n", type=int, default=131072)
    ap.add_argument("--shape", default="32,8,128")
    ap.add_argument("--paged-chunk", type=int, default=16384)
    ap.add_argument("--only-estimation", action="store_true", help="time the estimation in chunks only")
    args = ap.parse_args()
    ab.set_shape(args.shape)
    n = args.n
    lib = capi.Library(os.path.join(args.build, "libproxyattn.so"))
    info = machine()
    print("machine:", info, flush=True)
    stream = torch.cuda.current_stream().cuda_stream
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    t_start = time.time()
    nqb = n // ab.BLOCK
    q, k, v, o, qt, kt, vt = ab.make_inputs(n)
    qa, ka, va, oa = (lib.tensor(x) for x in (q, k, v, o))
    order = ab.make_order(nqb, rng)
    doc = {"machine": info, "shape": {"hq": ab.HQ, "hkv": ab.HKV, "d": ab.D, "block": ab.BLOCK, "n": n},
           "chunks": [], "paged": [], "tail": []}
    estimation_in_chunks(lib, q, k, v, n, stream, doc)
    if args.only_estimation:
        print("wrote", write_result(args.out, doc, "chunked-estimation-"))
        return

    for density in DENSITIES:
        count = ab.make_count(nqb, density, rng)
        whole = Call(lib, n, n, order, count)
        calls = {"one_shot": lambda w=whole: lib.attend_kv(w.plan, qa, ka, va, oa, 0, 0, stream),
                 "cudnn_one_shot": lambda: ab.sdpa("cudnn", qt, kt, vt, True) if hasattr(ab, "sdpa") else None}
        plans = {}
        for c in CHUNKS:
            for begin in range(0, n, c):
                end = min(n, begin + c)
                call = Call(lib, end - begin, end, order, count)
                qc, oc = lib.tensor(q[begin:end]), lib.tensor(o[begin:end])
                plans[(c, begin)] = call
                calls["ours_%d_%d" % (c, begin)] = (
                    lambda call=call, qc=qc, oc=oc: lib.attend_kv(call.plan, qc, ka, va, oc, 0, 0, stream))
                calls["dense_%d_%d" % (c, begin)] = (
                    lambda b=begin, e=end: sdpa_lower_right(qt[:, :, b:e], kt[:, :, :e], vt[:, :, :e]))
        t = interleaved_median_ms(calls, REPEATS, WARMUP)
        row = {"target_density": density, "density": whole.stats.density, "one_shot_ms": t["one_shot"],
               "cudnn_one_shot_ms": t["cudnn_one_shot"]}
        for c in CHUNKS:
            ours = sum(t["ours_%d_%d" % (c, b)] for b in range(0, n, c))
            dense = sum(t["dense_%d_%d" % (c, b)] for b in range(0, n, c))
            row["chunk_%d" % c] = {"ours_total_ms": ours, "ours_vs_one_shot": ours / t["one_shot"],
                                   "dense_lower_right_total_ms": dense, "speedup_vs_dense_chunks": dense / ours}
        doc["chunks"].append(row)
        print("chunks density %.2f: one shot %.3f ms, cuDNN %.3f ms; %s [%.0f s]" % (
            whole.stats.density, t["one_shot"], t["cudnn_one_shot"],
            ", ".join("C %d: %.3f ms (x%.3f), dense %.3f" % (c, row["chunk_%d" % c]["ours_total_ms"],
                                                             row["chunk_%d" % c]["ours_vs_one_shot"],
                                                             row["chunk_%d" % c]["dense_lower_right_total_ms"])
                      for c in CHUNKS), time.time() - t_start), flush=True)
        del plans, calls

        # Paged against packed: the last --paged-chunk queries, pages handed out shuffled.
        begin = n - args.paged_chunk
        packed = Call(lib, n - begin, n, order, count)
        qc, oc = lib.tensor(q[begin:]), lib.tensor(o[begin:])
        calls = {"packed": lambda: lib.attend_kv(packed.plan, qc, ka, va, oc, 0, 0, stream)}
        keep = []
        for page in PAGE_SIZES:
            pages = n // page
            perm = torch.randperm(pages, device="cuda", dtype=torch.int64)
            kc = torch.empty_like(k)
            vc = torch.empty_like(v)
            kc.view(pages, page, ab.HKV, ab.D)[perm] = k.view(pages, page, ab.HKV, ab.D)
            vc.view(pages, page, ab.HKV, ab.D)[perm] = v.view(pages, page, ab.HKV, ab.D)
            table = perm.to(torch.int32)[None].contiguous()
            call = Call(lib, n - begin, n, order, count, page, pages, pages)
            keep.append((kc, vc, table, call))
            kca, vca = lib.tensor(kc), lib.tensor(vc)
            calls["page_%d" % page] = (lambda call=call, kca=kca, vca=vca, table=table:
                                       lib.attend_kv(call.plan, qc, kca, vca, oc, table.data_ptr(), 0, stream))
        t = interleaved_median_ms(calls, REPEATS, WARMUP)
        calls["packed"]()
        torch.cuda.synchronize()
        ref = o[begin:].clone()
        row = {"target_density": density, "density": packed.stats.density, "q_len": n - begin, "kv_len": n,
               "packed_ms": t["packed"]}
        for page in PAGE_SIZES:
            calls["page_%d" % page]()
            torch.cuda.synchronize()
            row["page_%d" % page] = {"ms": t["page_%d" % page], "vs_packed": t["page_%d" % page] / t["packed"],
                                     "max_abs_diff_vs_packed": (o[begin:].float() - ref.float()).abs().max().item()}
        doc["paged"].append(row)
        print("paged density %.2f: packed %.3f ms; %s [%.0f s]" % (
            packed.stats.density, t["packed"], ", ".join("page %d: x%.3f (diff %.2g)" % (
                p, row["page_%d" % p]["vs_packed"], row["page_%d" % p]["max_abs_diff_vs_packed"]) for p in PAGE_SIZES),
            time.time() - t_start), flush=True)
        del keep, calls, ref

        # A short chunk at the end of a long prefix (a new chat turn, an engine's usual chunk).
        prefix = n - 8192
        calls, tails = {}, {}
        for c in TAIL_CHUNKS:
            end = prefix + c
            call = Call(lib, c, end, order, count)
            tails[c] = call
            qc, oc = lib.tensor(q[prefix:end]), lib.tensor(o[prefix:end])
            calls["ours_%d" % c] = lambda call=call, qc=qc, oc=oc: lib.attend_kv(call.plan, qc, ka, va, oc, 0, 0, stream)
            calls["dense_%d" % c] = lambda e=end: sdpa_lower_right(qt[:, :, prefix:e], kt[:, :, :e], vt[:, :, :e])
        t = interleaved_median_ms(calls, REPEATS, WARMUP)
        for c in TAIL_CHUNKS:
            doc["tail"].append({"target_density": density, "density": tails[c].stats.density, "q_len": c,
                                "prefix": prefix, "ours_ms": t["ours_%d" % c], "dense_lower_right_ms": t["dense_%d" % c],
                                "speedup_vs_dense": t["dense_%d" % c] / t["ours_%d" % c]})
            print("tail %d after %d, density %.2f: ours %.3f ms, dense %.3f ms (x%.2f)" % (
                c, prefix, tails[c].stats.density, t["ours_%d" % c], t["dense_%d" % c],
                t["dense_%d" % c] / t["ours_%d" % c]), flush=True)
    print("wrote", write_result(args.out, doc, "chunked-"))


if __name__ == "__main__":
    main()
