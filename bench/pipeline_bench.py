"""The whole ProxyAttn pipeline (GPU estimation + GPU block-sparse attention) on the
structured default input, against cuDNN dense causal attention on the same tensors.

Inputs: pa_synth_generate (docs/design.md, "Structured inputs"), seed 1, Llama-3.1-8B shapes
(32 Q / 8 KV heads, d = 128), bf16, one sequence. Config defaults (b = 128, s = 4, 2048-token
floor, g = 1) at gamma 0.95 and 0.90. Times: CUDA events, median after warm-up. Also the mass
recall on the last 4096 queries (exp(LSE_sparse - LSE_dense), LSE of dense from our dense path).
Writes $OUT/pipeline-<date>-<device>.json.

  python3 bench/pipeline_bench.py --build build-gpu --out OUT [--sizes 32768,131072]
"""
import argparse
import datetime
import os
import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))
import proxyattn  # noqa: E402
from proxyattn import _C  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import median_ms, write_result  # noqa: E402

HQ, HKV, D = 32, 8, 128
GAMMAS = (0.95, 0.90)
WARMUP = 1
REPEATS = {32768: 5, 65536: 3, 131072: 3}
RECALL_QUERIES = 4096  # mass recall measured on the last queries (dense LSE of all rows is costly)


def structured_inputs(n, seed=1):
    q = torch.empty(n, HQ, D, dtype=torch.bfloat16)
    k = torch.empty(n, HKV, D, dtype=torch.bfloat16)
    v = torch.empty_like(k)
    _C.synth_generate([0, n], seed, q, k, v)
    return q.cuda(), k.cuda(), v.cuda()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--build", default="build-gpu", help="unused: the package module is in python/")
    ap.add_argument("--out", default="bench-out")
    ap.add_argument("--sizes", default="32768,131072")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    rows = []
    for n in [int(x) for x in args.sizes.split(",")]:
        q, k, v = structured_inputs(n)
        reps = REPEATS.get(n, 3)
        qh, kh, vh = (t.transpose(0, 1)[None] for t in (q, k, v))  # [1, H, N, d] views

        def dense():
            with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
                return F.scaled_dot_product_attention(qh, kh, vh, is_causal=True, enable_gqa=True)

        dense_ms = median_ms(dense, reps, WARMUP)
        _, dense_lse = proxyattn.dense_attention(q, k, v, return_lse=True)
        for gamma in GAMMAS:
            plan = proxyattn.estimate(q, k, [0, n], gamma=gamma)
            est_ms = median_ms(lambda: plan._estimate(q, k), reps, WARMUP)
            att_ms = median_ms(lambda: proxyattn.attend(plan, q, k, v), reps, WARMUP)
            total_ms = median_ms(lambda: proxyattn.attention_varlen(q, k, v, [0, n], gamma=gamma), reps, WARMUP)
            _, lse = proxyattn.attend(plan, q, k, v, return_lse=True)
            recall = torch.exp(lse[:, -RECALL_QUERIES:] - dense_lse[:, -RECALL_QUERIES:]).mean().item()
            row = {"N": n, "gamma": gamma, "density": plan.density, "estimate_ms": est_ms, "attend_ms": att_ms,
                   "pipeline_ms": total_ms, "cudnn_dense_ms": dense_ms, "speedup_vs_cudnn": dense_ms / total_ms,
                   "attention_only_speedup": dense_ms / att_ms, "estimate_share_of_dense": est_ms / dense_ms,
                   "mass_recall_last_queries": recall}
            rows.append(row)
            print(f"N={n:7d} gamma={gamma:.2f} density={plan.density:.3f} estimate {est_ms:7.2f} ms "
                  f"attend {att_ms:8.2f} ms pipeline {total_ms:8.2f} ms | cuDNN {dense_ms:8.2f} ms "
                  f"speedup {dense_ms / total_ms:5.2f}x recall(last {RECALL_QUERIES}) {recall:.4f}", flush=True)
        del q, k, v, dense_lse
        torch.cuda.empty_cache()
    props = torch.cuda.get_device_properties(0)
    date = datetime.date.today().isoformat()
    result = {"benchmark": "pipeline", "date": date, "device": props.name, "torch": torch.__version__,
              "cudnn": torch.backends.cudnn.version(), "shape": {"num_q_heads": HQ, "num_kv_heads": HKV,
                                                                 "head_dim": D, "dtype": "bfloat16"},
              "input": "pa_synth_generate seed 1 (structured)", "config": "defaults (b=128, s=4, floor 2048, g=1)",
              "method": f"CUDA events, median of {REPEATS} after {WARMUP} warm-up", "results": rows}
    path = write_result(args.out, "pipeline", props.name, result)
    print("wrote", path)


if __name__ == "__main__":
    main()
