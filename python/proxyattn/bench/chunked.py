"""Chunked prefill on the GPU attention kernels (issue 22): a long prompt's attention in
chunks against one call, paged K/V against packed, and a short chunk at the end of a long
cached prefix, each against dense attention with the same bottom-right causal alignment.

The index: ProxyAttn-shaped masks written into the plans (masks.py, as in the attention
suite). A chunk's plan gets the rows of the whole prompt's index that the chunk holds, so the
chunks attend to exactly the blocks the one-shot call does. Only the attention is timed there;
the estimation is timed on its own (one call against chunks from a paged cache with its
estimation state; --only-estimation: that alone).

- chunks: one N-token prompt attended in one call against in chunks of C tokens (the sum of
  the chunk calls' medians); dense: cuDNN causal in one call, and per chunk cuDNN in two
  calls merged by LSE (dense_chunks.cudnn_chunk) and SDPA with a bottom-right causal mask
  (torch.nn.attention.bias.causal_lower_right, which runs another backend).
- paged: one chunk (the last `--paged-chunk` queries of the prompt) with K/V packed and in
  paged caches of page sizes 16, 64, 128, 256 (pages shuffled; the sm90 kernel takes pages of
  >= 64 tokens, smaller ones run the sm80 kernel).
- tail: a chunk of 8K and of 1K queries at the end of a 120K prefix against dense: cuDNN in
  two calls, FlexAttention on the chunk's causal block mask (compiled per shape) and SDPA's
  bottom-right bias.
"""
import time

import numpy as np
import torch
import torch.nn.functional as F

import proxyattn

from . import arguments, kernel_plan, masks
from .attention import DEFAULT_SHAPE
from .baselines import repeat_kv, sdpa
from .dense_chunks import FlexChunk, cudnn_chunk
from .config import BLOCK_SIZE
from .timing import interleaved_median_ms, machine

CHUNKS = [8192, 16384, 32768]
PAGE_SIZES = [16, 64, 128, 256]
DENSITIES = [0.2, 1.0]
TAIL_CHUNKS = [8192, 1024]
TAIL_PREFIX_BEFORE_END = 8192  # the tail chunks start this many tokens before the prompt's end
ESTIMATION_PAGE = 128          # the paged cache of the estimation in chunks
REPEATS, WARMUP = 5, 1
DEFAULT_N, DEFAULT_PAGED_CHUNK = 131072, 16384


def add_arguments(ap):
    ap.add_argument("--n", type=int, default=DEFAULT_N)
    ap.add_argument("--shape", type=arguments.shape, default=DEFAULT_SHAPE, help="Q heads, KV heads, head_dim")
    ap.add_argument("--paged-chunk", type=int, default=DEFAULT_PAGED_CHUNK)
    ap.add_argument("--only-estimation", action="store_true", help="time the estimation in chunks only")


class Call:
    """A device plan of a chunk (q_len queries at the end of kv_len keys) with its rows of the
    whole prompt's index."""

    def __init__(self, shape, like, q_len, kv_len, order, count, page_size=0, num_pages=0):
        self.plan = kernel_plan.plan(shape, q_len, like, kernel_plan.index_config(shape.d), kv_len=kv_len,
                                     page_size=page_size, num_pages=num_pages)
        m0, m1 = (kv_len - q_len) // BLOCK_SIZE, (kv_len + BLOCK_SIZE - 1) // BLOCK_SIZE
        self.plan.set_index(*masks.chunk_index(order, count, m0, m1))
        self.stats = self.plan.stats()


def sdpa_lower_right(q, k, v):
    """Dense attention of q [1, Hq, Lq, D] at the end of k, v [1, Hkv, Lk, D]: the backend
    SDPA picks for a bottom-right causal bias."""
    from torch.nn.attention.bias import causal_lower_right

    bias = causal_lower_right(q.shape[2], k.shape[2])
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, enable_gqa=True)


def estimation_in_chunks(shape, q, k, n, stream):
    """The GPU estimation of an n-token prompt in one call against in chunks of CHUNKS tokens
    from a paged cache (pages of ESTIMATION_PAGE) with its estimation state, so a chunk pools
    only its own tokens; the library's default settings (gamma 0.95, the 2048-token floor)."""
    page = ESTIMATION_PAGE
    pages = n // page
    k_cache = k.view(pages, page, shape.hkv, shape.d)
    table = torch.arange(pages, device="cuda", dtype=torch.int32)[None].contiguous()
    config = proxyattn.Settings().resolve(shape.d)
    whole = kernel_plan.plan(shape, n, q, config)
    calls = {"one_shot": kernel_plan.estimate_call(whole, q, k, stream)}
    for c in CHUNKS:
        state = proxyattn.ProxyState(k_cache)
        for begin in range(0, n, c):
            end = min(n, begin + c)
            p = kernel_plan.plan(shape, end - begin, q, config, kv_len=end, page_size=page, num_pages=pages)
            call = kernel_plan.estimate_kv_call(p, q[begin:end], k_cache, table, state, stream)
            call()  # in order once, so that every chunk finds its prefix's state
            calls["chunk_%d_%d" % (c, begin)] = call
    t = interleaved_median_ms(calls, REPEATS, WARMUP)
    row = {"one_shot_ms": t["one_shot"], "page_size": page}
    for c in CHUNKS:
        total = sum(t["chunk_%d_%d" % (c, b)] for b in range(0, n, c))
        row["chunk_%d" % c] = {"total_ms": total, "vs_one_shot": total / t["one_shot"]}
    print("estimation: one shot %.3f ms; %s" % (t["one_shot"], ", ".join(
        "C %d: %.3f ms (x%.3f)" % (c, row["chunk_%d" % c]["total_ms"], row["chunk_%d" % c]["vs_one_shot"])
        for c in CHUNKS)), flush=True)
    return row


def run(args):
    shape, n = args.shape, args.n
    info = machine()
    print("machine:", info, flush=True)
    stream = torch.cuda.current_stream().cuda_stream
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    t_start = time.time()
    nqb = n // BLOCK_SIZE
    q, k, v, o, qt, kt, vt = kernel_plan.random_inputs(n, shape)
    kr, vr = repeat_kv(qt, kt, vt)[1:]  # K and V with Hq heads, as cuDNN's op takes them
    order = masks.make_order(nqb, rng)
    doc = {"machine": info, "shape": {"hq": shape.hq, "hkv": shape.hkv, "d": shape.d, "block": BLOCK_SIZE, "n": n},
           "chunks": [], "paged": [], "tail": []}
    doc["estimation"] = estimation_in_chunks(shape, q, k, n, stream)
    if args.only_estimation:
        return doc, "chunked-estimation-"

    flex = FlexChunk()
    for density in DENSITIES:
        count = masks.make_count(nqb, shape.hq, density, rng)
        whole = Call(shape, q, n, n, order, count)
        calls = {"one_shot": kernel_plan.attend_kv_call(whole.plan, q, k, v, o, stream),
                 "cudnn_one_shot": lambda: sdpa("cudnn", qt, kt, vt, True)}
        plans = {}
        for c in CHUNKS:
            for begin in range(0, n, c):
                end = min(n, begin + c)
                call = Call(shape, q, end - begin, end, order, count)
                plans[(c, begin)] = call
                calls["ours_%d_%d" % (c, begin)] = kernel_plan.attend_kv_call(
                    call.plan, q[begin:end], k[:end], v[:end], o[begin:end], stream)
                calls["dense_%d_%d" % (c, begin)] = (
                    lambda b=begin, e=end: sdpa_lower_right(qt[:, :, b:e], kt[:, :, :e], vt[:, :, :e]))
                calls["cudnn_%d_%d" % (c, begin)] = (
                    lambda b=begin, e=end: cudnn_chunk(qt[:, :, b:e], kr[:, :, :e], vr[:, :, :e]))
        t = interleaved_median_ms(calls, REPEATS, WARMUP)
        row = {"target_density": density, "density": whole.stats["density"], "one_shot_ms": t["one_shot"],
               "cudnn_one_shot_ms": t["cudnn_one_shot"]}
        for c in CHUNKS:
            ours = sum(t["ours_%d_%d" % (c, b)] for b in range(0, n, c))
            dense = sum(t["dense_%d_%d" % (c, b)] for b in range(0, n, c))
            cudnn = sum(t["cudnn_%d_%d" % (c, b)] for b in range(0, n, c))
            row["chunk_%d" % c] = {"ours_total_ms": ours, "ours_vs_one_shot": ours / t["one_shot"],
                                   "dense_lower_right_total_ms": dense, "speedup_vs_dense_chunks": dense / ours,
                                   "cudnn_chunks_total_ms": cudnn, "speedup_vs_cudnn_chunks": cudnn / ours}
        doc["chunks"].append(row)
        print("chunks density %.2f: one shot %.3f ms, cuDNN %.3f ms; %s [%.0f s]" % (
            whole.stats["density"], t["one_shot"], t["cudnn_one_shot"],
            ", ".join("C %d: %.3f ms (x%.3f), cuDNN %.3f, SDPA bias %.3f" % (
                c, row["chunk_%d" % c]["ours_total_ms"], row["chunk_%d" % c]["ours_vs_one_shot"],
                row["chunk_%d" % c]["cudnn_chunks_total_ms"], row["chunk_%d" % c]["dense_lower_right_total_ms"])
                for c in CHUNKS), time.time() - t_start), flush=True)
        del plans, calls
        doc["paged"].append(paged(shape, q, k, v, o, n, args.paged_chunk, order, count, density, stream, t_start))
        doc["tail"] += tail(shape, q, k, v, o, (qt, kt, vt, kr, vr), n, order, count, density, stream, flex)
    return doc, "chunked-"


def paged(shape, q, k, v, o, n, paged_chunk, order, count, density, stream, t_start):
    """Paged against packed: the last paged_chunk queries, pages handed out shuffled."""
    begin = n - paged_chunk
    packed = Call(shape, q, n - begin, n, order, count)
    qc, oc = q[begin:], o[begin:]
    calls = {"packed": kernel_plan.attend_kv_call(packed.plan, qc, k, v, oc, stream)}
    keep = []
    for page in PAGE_SIZES:
        pages = n // page
        perm = torch.randperm(pages, device="cuda", dtype=torch.int64)
        kc = torch.empty(pages, page, shape.hkv, shape.d, device="cuda", dtype=k.dtype)
        vc = torch.empty_like(kc)
        kc[perm] = k.view(pages, page, shape.hkv, shape.d)
        vc[perm] = v.view(pages, page, shape.hkv, shape.d)
        table = perm.to(torch.int32)[None].contiguous()
        call = Call(shape, q, n - begin, n, order, count, page, pages)
        keep.append((kc, vc, table, call))
        calls["page_%d" % page] = kernel_plan.attend_kv_call(call.plan, qc, kc, vc, oc, stream, table)
    t = interleaved_median_ms(calls, REPEATS, WARMUP)
    calls["packed"]()
    torch.cuda.synchronize()
    ref = oc.clone()
    row = {"target_density": density, "density": packed.stats["density"], "q_len": n - begin,
           "kv_len": n, "packed_ms": t["packed"]}
    for page in PAGE_SIZES:
        calls["page_%d" % page]()
        torch.cuda.synchronize()
        row["page_%d" % page] = {"ms": t["page_%d" % page], "vs_packed": t["page_%d" % page] / t["packed"],
                                 "max_abs_diff_vs_packed": (oc.float() - ref.float()).abs().max().item()}
    print("paged density %.2f: packed %.3f ms; %s [%.0f s]" % (
        packed.stats["density"], t["packed"], ", ".join("page %d: x%.3f (diff %.2g)" % (
            p, row["page_%d" % p]["vs_packed"], row["page_%d" % p]["max_abs_diff_vs_packed"]) for p in PAGE_SIZES),
        time.time() - t_start), flush=True)
    return row


def tail(shape, q, k, v, o, dense_inputs, n, order, count, density, stream, flex):
    """A short chunk at the end of a long prefix (a new chat turn, an engine's usual chunk);
    dense_inputs: q, k, v as [1, H, N, d] and K, V repeated to Hq heads."""
    qt, kt, vt, kr, vr = dense_inputs
    prefix = n - TAIL_PREFIX_BEFORE_END
    calls, tails = {}, {}
    for c in TAIL_CHUNKS:
        end = prefix + c
        call = Call(shape, q, c, end, order, count)
        tails[c] = call
        mask = flex.chunk_mask(c, end, q.device, BLOCK_SIZE)
        calls["ours_%d" % c] = kernel_plan.attend_kv_call(call.plan, q[prefix:end], k[:end], v[:end], o[prefix:end],
                                                           stream)
        calls["dense_%d" % c] = lambda e=end: sdpa_lower_right(qt[:, :, prefix:e], kt[:, :, :e], vt[:, :, :e])
        calls["cudnn_%d" % c] = lambda e=end: cudnn_chunk(qt[:, :, prefix:e], kr[:, :, :e], vr[:, :, :e])
        calls["flex_%d" % c] = lambda e=end, mask=mask: flex(qt[:, :, prefix:e], kt[:, :, :e], vt[:, :, :e], mask)
    t = interleaved_median_ms(calls, REPEATS, WARMUP)
    rows = []
    for c in TAIL_CHUNKS:
        ours = t["ours_%d" % c]
        rows.append({"target_density": density, "density": tails[c].stats["density"], "q_len": c,
                     "prefix": prefix, "ours_ms": ours, "dense_lower_right_ms": t["dense_%d" % c],
                     "speedup_vs_dense": t["dense_%d" % c] / ours, "cudnn_ms": t["cudnn_%d" % c],
                     "speedup_vs_cudnn": t["cudnn_%d" % c] / ours, "flex_ms": t["flex_%d" % c],
                     "speedup_vs_flex": t["flex_%d" % c] / ours})
        print("tail %d after %d, density %.2f: ours %.3f ms, cuDNN %.3f (x%.2f), Flex %.3f (x%.2f), SDPA bias %.3f" % (
            c, prefix, tails[c].stats["density"], ours, t["cudnn_%d" % c], t["cudnn_%d" % c] / ours,
            t["flex_%d" % c], t["flex_%d" % c] / ours, t["dense_%d" % c]), flush=True)
    return rows
