"""The CPU forward of several builds of the proxyattn module, in one run: make's (-march=native,
python/proxyattn in the source tree) against pip's (portable: an SSE2 baseline plus AVX2 + FMA
and AVX-512 kernels chosen at run time), or any other module folders.

Each module runs in its own process (they share the package name), in interleaved rounds so
that a change of the machine's load falls on all of them. Per call: proxyattn.attention on
numpy float32 [1, N, Hq, d] (Llama-3.1-8B's 32 Q / 8 KV heads, d = 128), the library's default
settings, inputs from pa_synth_generate; the median of --repeats calls after one warm-up call,
then the median over rounds. Needs no GPU and no torch.
"""
import argparse
import datetime
import json
import os
import platform
import re
import statistics
import subprocess
import sys

PREFIX = "cpu-dispatch-"
VECTOR_FLAGS = {"sse2", "sse4_1", "sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512vl", "avx512bw",
                "avx512_bf16", "asimd", "sve"}
WORKER = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
import numpy as np
import proxyattn
from proxyattn import _C
n, hq, hkv, d, repeats, threads = (int(x) for x in sys.argv[2:8])
proxyattn.set_num_threads(threads)
q = np.empty((n, hq, d), np.float32); k = np.empty((n, hkv, d), np.float32); v = np.empty_like(k)
_C.synth_generate([0, n], 1, q, k, v)
q, k, v = q[None], k[None], v[None]
proxyattn.attention(q, k, v)  # warm-up: plan, threads, pages
times = []
for _ in range(repeats):
    t0 = time.perf_counter()
    proxyattn.attention(q, k, v)
    times.append(time.perf_counter() - t0)
kernels = _C.cpu_kernels() if hasattr(_C, "cpu_kernels") else "unknown (a module without cpu_kernels)"
print(json.dumps({"module": proxyattn._C.__file__, "cpu_kernels": kernels, "times_s": times}))
"""


def module_folder(text):
    """LABEL=FOLDER (an argparse type)."""
    label, sep, folder = text.partition("=")
    if not sep or not label or not folder:
        raise argparse.ArgumentTypeError(f"{text}: expected LABEL=FOLDER")
    return label, folder


def add_arguments(ap):
    ap.add_argument("modules", nargs="+", type=module_folder,
                    help="LABEL=FOLDER: a folder holding the proxyattn package (e.g. make=python pip=DIR)")
    ap.add_argument("--n", type=int, default=2048)
    ap.add_argument("--q-heads", type=int, default=32)
    ap.add_argument("--kv-heads", type=int, default=8)
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="CPU threads, 0 = all")


def cpu_info():
    info = {"machine": platform.machine(), "processor": platform.processor(), "logical_cpus": os.cpu_count()}
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
        model = re.search(r"^model name\s*:\s*(.*)$", text, re.M)
        flags = re.search(r"^(flags|Features)\s*:\s*(.*)$", text, re.M)
        info["model_name"] = model.group(1) if model else None
        if flags:
            info["vector_flags"] = sorted(set(flags.group(2).split()) & VECTOR_FLAGS)
    except OSError:
        pass
    try:
        info["load_average"] = os.getloadavg()
    except OSError:
        pass
    return info


def run(args):
    modules = dict(args.modules)
    runs = {label: [] for label in modules}
    for r in range(args.rounds):
        for label, folder in modules.items():
            out = subprocess.run([sys.executable, "-c", WORKER, os.path.abspath(folder), str(args.n), str(args.q_heads),
                                  str(args.kv_heads), str(args.head_dim), str(args.repeats), str(args.threads)],
                                 check=True, capture_output=True, text=True).stdout
            res = json.loads(out.strip().splitlines()[-1])
            runs[label].append(res)
            print(f"round {r + 1}: {label:8s} {res['cpu_kernels']:8s} median {statistics.median(res['times_s']):.3f} s",
                  flush=True)

    first = next(iter(modules))
    results = []
    for label, rs in runs.items():
        med = statistics.median(statistics.median(x["times_s"]) for x in rs)
        results.append({"label": label, "folder": modules[label], "module": rs[0]["module"],
                        "cpu_kernels": rs[0]["cpu_kernels"], "median_s": med,
                        "round_medians_s": [statistics.median(x["times_s"]) for x in rs],
                        "times_s": [x["times_s"] for x in rs]})
    base = results[0]["median_s"]
    print(f"\nN={args.n} fp32, {args.q_heads} Q / {args.kv_heads} KV heads, d={args.head_dim}: median over "
          f"{args.rounds} rounds of the median of {args.repeats} calls")
    for r in results:
        r[f"ratio_to_{first}"] = r["median_s"] / base
        print(f"  {r['label']:8s} {r['cpu_kernels']:8s} {r['median_s']:.3f} s  {r['median_s'] / base:.2f}x {first}")
    doc = {"benchmark": "python -m proxyattn.bench cpu-dispatch", "date": datetime.date.today().isoformat(),
           "workload": {"call": "proxyattn.attention (numpy, CPU backend, default settings)", "N": args.n,
                        "batch": 1, "num_q_heads": args.q_heads, "num_kv_heads": args.kv_heads,
                        "head_dim": args.head_dim, "dtype": "float32", "input": "pa_synth_generate seed 1",
                        "threads": args.threads or os.cpu_count()},
           "timing": f"median over {args.rounds} interleaved rounds of the median of {args.repeats} calls "
                     f"after 1 warm-up call, each module in its own process",
           "machine": cpu_info(), "python": sys.version.split()[0], "results": results}
    return doc, PREFIX
