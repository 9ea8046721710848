"""Context parallelism (proxyattn.distributed): the time and memory of each step of one
distributed call, per exchange ("gather": all K and V; "fetch": the kept blocks), against the
single-process call on the whole sequence (timed with --world 1), and with --dense-ring
against PyTorch's dense ring attention on the same sharding (ring.py; CUDA only). --world W
processes: one per GPU through NCCL where the machine has W GPUs, else (or with --cpu) W CPU
processes through gloo. Writes JSON under --out.

    python -m proxyattn.bench cp --sizes 131072,262144,524288,1048576 --out OUT
    python -m proxyattn.bench cp --world 8 --sizes 262144,524288,1048576 --dense-ring cudnn,flash --out OUT  # 8 GPUs
    python -m proxyattn.bench cp --world 8 --sizes 1048576 --input structured --gamma 0.9 --dense-ring cudnn --out OUT
    python -m proxyattn.bench cp --world 4 --sizes 16384 --heads 8,2 --head-dim 64 --cpu --out OUT
    python -m proxyattn.bench cp --world 8 --sizes 262144,1048576 --model qwen2.5-coder-0.5b --out OUT  # cp_model.py
"""
import argparse
import datetime
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import proxyattn
from proxyattn import distributed as pad

from . import cp_model
from .ring import DenseRing, ring_refusal

STEPS = ("agreement", "communication_proxies", "communication_k", "budgets", "communication_budgets",
         "estimation", "communication_v", "communication_kv", "attention")
SEED = 0
INPUTS = ("gaussian", "structured")
SINK_GAIN = 4.0  # keys of the first tokens stand out, as attention sinks do in real models


def _inputs(n, hq, hkv, d, dtype, device, kind):
    """The whole sequence's q [N, Hq, d], k and v [N, Hkv, d]: "gaussian" (near-uniform attention,
    so every block is kept: the steps' costs at dense size) or "structured" (the speed
    benchmarks' pa_synth_generate input, sparse as `proxyattn bench`'s: the saving)."""
    if kind == "structured":
        from .compare import structured_input

        return structured_input(n, hq, hkv, d, dtype, device)
    g = torch.Generator(device=device).manual_seed(SEED)
    q = torch.randn(n, hq, d, generator=g, device=device, dtype=torch.float32)
    k = torch.randn(n, hkv, d, generator=g, device=device, dtype=torch.float32)
    v = torch.randn(n, hkv, d, generator=g, device=device, dtype=torch.float32)
    k[:64] *= SINK_GAIN
    return q.to(dtype), k.to(dtype), v.to(dtype)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_reset(device):
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _peak(device):
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # the process's, for the CPU


def _timed(fn, repeats, device):
    times = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _case(n, args, rank, world, device, dtype):
    hq, hkv = args.heads
    settings = proxyattn.Settings(gamma=args.gamma, num_proxy_groups=args.groups)
    q, k, v = _inputs(n, hq, hkv, args.head_dim, dtype, device, args.input)
    shards = [pad.shard(t, rank, world, settings.block_size) for t in (q, k, v)]
    result = {"seq_len": n, "world": world, "rank": rank}
    if world == 1:
        _peak_reset(device)
        result["single_process_s"] = _timed(
            lambda: proxyattn.attention_varlen(q, k, v, [0, n], settings=settings), args.repeats, device)
        result["single_process_peak_bytes"] = _peak(device)
    del q, k, v
    for exchange in args.exchange:
        call = lambda timed=False: pad.attention(*shards, seq_len=n, exchange=exchange, return_plan=True,  # noqa
                                                 timed=timed, settings=settings)[1]
        call()  # warm-up (plans, allocator)
        _peak_reset(device)
        total = _timed(call, args.repeats, device)
        peak = _peak(device)
        steps = [call(True).timings for _ in range(args.repeats)]
        plan = call()
        kept = sum(len(p.kept_blocks()) for p in plan.pieces)
        stats = [p.plan.stats() for p in plan.pieces]
        result[exchange] = {
            "total_s": total, "peak_bytes": peak, "bytes_received": plan.bytes_received,
            "kept_key_blocks": kept,
            "density": sum(s["kept_pairs"] for s in stats) / max(1, sum(s["causal_pairs"] for s in stats)),
            "steps_s": {s: statistics.median(t.get(s, 0.0) for t in steps) for s in STEPS if s in steps[0]},
        }
        print(f"rank {rank} N={n} {exchange}: {total * 1e3:.1f} ms, density {result[exchange]['density']:.3f}, "
              f"received {plan.bytes_received / 2**20:.1f} MiB, "
              f"steps {', '.join(f'{s} {x * 1e3:.1f}' for s, x in result[exchange]['steps_s'].items())}",
              flush=True)
    del shards
    for backend in args.dense_ring:
        result[f"dense_ring_{backend}"] = _dense_ring(n, args, world, device, dtype, backend)
        print(f"rank {rank} N={n} dense ring ({backend}): {result[f'dense_ring_{backend}']['total_s'] * 1e3:.1f} ms",
              flush=True)
    return result


def _dense_ring(n, args, world, device, dtype, backend):
    ring = DenseRing(*_inputs(n, *args.heads, args.head_dim, dtype, device, args.input), world, backend)
    with ring:
        ring()  # warm-up
        _peak_reset(device)
        total = _timed(ring, args.repeats, device)
        return {"total_s": total, "peak_bytes": _peak(device), "bytes_received": ring.bytes_received()}


def _machine(device):
    info = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
            "cpus": os.cpu_count(), "backend": "nccl" if device.type == "cuda" else "gloo",
            "versions": {"proxyattn": proxyattn.__version__, "torch": torch.__version__,
                         "cuda": torch.version.cuda, "python": platform.python_version()}}
    return info


def _on_gpus(world, args):
    """One GPU per process: this machine has world of them and --cpu is not given."""
    return not args.cpu and torch.cuda.is_available() and world <= torch.cuda.device_count()


def _worker(rank, world, args, init_file, doc_file):
    cuda = _on_gpus(world, args)
    device = torch.device("cuda", rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    else:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
        proxyattn.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    dist.init_process_group("nccl" if cuda else "gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world, timeout=datetime.timedelta(minutes=10),
                            **({"device_id": device} if cuda else {}))
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    if args.model:
        model, tokenizer = cp_model.load(args.model, device)
        timed = lambda fn: _timed(fn, args.repeats, device)  # noqa: E731
        cases = [cp_model.case(n, args, model, tokenizer, rank, world, device, timed) for n in args.sizes]
    else:
        cases = [_case(n, args, rank, world, device, dtype) for n in args.sizes]
    everyone = [None] * world
    dist.all_gather_object(everyone, cases)
    if rank == 0:
        doc = {"benchmark": "proxyattn.bench cp", "machine": _machine(device),
               "date": datetime.date.today().isoformat(),
               "shape": {"num_q_heads": args.heads[0], "num_kv_heads": args.heads[1], "head_dim": args.head_dim,
                         "dtype": args.dtype},
               "settings": {"gamma": args.gamma, "num_proxy_groups": args.groups}, "input": args.input,
               "repeats": args.repeats,
               "note": "times are medians; steps_s timed with a device synchronisation between steps "
                       "(their sum exceeds total_s, which overlaps V's all-gather with the estimation); "
                       "dense_ring_<backend>: torch's context_parallel ring (all-gather rotation) over that "
                       "SDPA backend, K and V expanded to the query heads",
               "cases": [c for per_rank in everyone for c in per_rank]}
        if args.model:
            del doc["shape"], doc["input"]
            doc["model"] = cp_model.describe(model, args.model, tokenizer, args)
        with open(doc_file, "w") as f:
            json.dump(doc, f)
    dist.destroy_process_group()


def add_arguments(ap):
    ints = lambda text: [int(x) for x in text.split(",") if x]  # noqa: E731
    ap.add_argument("--sizes", type=ints, default=[131072, 262144, 524288, 1048576])
    ap.add_argument("--world", type=int, default=1,
                    help="processes: one per GPU (NCCL) where the machine has that many, else CPU (gloo)")
    ap.add_argument("--exchange", type=lambda t: t.split(","), default=list(pad.EXCHANGES))
    ap.add_argument("--heads", type=ints, default=[32, 8], help="Hq,Hkv")
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--dtype", choices=("bf16", "fp16", "fp32"), default="bf16")
    ap.add_argument("--input", choices=INPUTS, default=INPUTS[0],
                    help="gaussian (every block kept) or structured (pa_synth_generate, as sparse as the speed "
                         "benchmarks')")
    ap.add_argument("--gamma", type=float, default=0.95)
    ap.add_argument("--groups", type=int, default=1, help="num_proxy_groups")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cpu", action="store_true", help="the CPU even when a GPU is present")
    ap.add_argument("--model", help="a whole model's prefill (proxyattn.distributed.prefill) instead of one layer: "
                    f"a transformers folder, or one of {sorted(cp_model.MODELS)} with random weights")
    ap.add_argument("--text", help="with a --model folder: the prompt is this file's tokens, repeated")
    ap.add_argument("--dense-ring", type=lambda t: [b for b in t.split(",") if b], default=[],
                    help="PyTorch's dense ring attention over these SDPA backends (cudnn, flash), GPUs only")


def run(args):
    unknown = [e for e in args.exchange if e not in pad.EXCHANGES]
    if unknown:
        sys.exit(f"--exchange: {unknown} not among {pad.EXCHANGES}")
    if args.world < 1:
        sys.exit(f"--world {args.world}: at least 1")
    if not args.cpu and torch.cuda.is_available() and not _on_gpus(args.world, args):
        sys.exit(f"--world {args.world}: this machine has {torch.cuda.device_count()} GPUs "
                 f"(--cpu runs {args.world} CPU processes)")
    if args.model and args.dense_ring:
        sys.exit("--dense-ring times one layer: not with --model")
    refusal = ring_refusal(torch.device("cuda" if _on_gpus(args.world, args) else "cpu"), args.dense_ring)
    if refusal:
        sys.exit(refusal)
    with tempfile.TemporaryDirectory() as tmp:
        init_file, doc_file = os.path.join(tmp, "init"), os.path.join(tmp, "doc.json")
        if args.world == 1:
            _worker(0, 1, args, init_file, doc_file)
        else:
            mp.spawn(_worker, args=(args.world, args, init_file, doc_file), nprocs=args.world, join=True)
        with open(doc_file) as f:
            doc = json.load(f)
    return doc, f"cp-w{args.world}-"
