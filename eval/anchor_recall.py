"""What anchor blocks (config.anchor_blocks = T) cost or buy in mass recall and density, per
head, on captured activations and on the structured synthetic input (CPU backend, fp32).

    PYTHONPATH=python python eval/anchor_recall.py --anchors 0 1 2 4 --gammas 0.90 0.95 \
        --activations .activations/qwen2.5-coder-0.5b-hf-pg_essays-32768-layer12-kv0.pt \
        --synth 16384:32:8:128:1 16384:32:8:128:8 --out eval/results/anchor-recall.json

Each head's anchors are forced for every head of its proxy group and count in their budgets,
so with many heads per group (g = 1 on a 32-head model) they can push a head's own
proxy-ranked blocks out of its budget; this measures how much. Mass recall of a head =
exp(LSE_sparse - LSE_dense) averaged over queries (ALGORITHM.md), density = kept / causal
block pairs; both from the library's own plan and kernels.
"""
import argparse
import json
import pathlib
import time

import numpy as np
import torch

import common
import proxyattn
from proxyattn import _C
from proxyattn.bench.compare import SYNTH_SEED  # the benchmarks' structured input


def synth_input(n, hq, hkv, d):
    """The benchmarks' structured synthetic input [N, H, d] (float32 on the CPU)."""
    q = torch.empty(n, hq, d, dtype=torch.float32)
    k = torch.empty(n, hkv, d, dtype=torch.float32)
    v = torch.empty_like(k)
    _C.synth_generate([0, n], SYNTH_SEED, q, k, v)
    return q, k, v


def captured_input(path):
    doc = torch.load(path, map_location="cpu", weights_only=True)
    q, k, v = (doc[x].float().contiguous() for x in ("q", "k", "v"))
    return q, k, v, float(doc["scale"]), str(doc.get("source", path))


def measure(name, q, k, v, scale, groups, gammas, anchors, log):
    """Per (g, gamma, T): mean and minimum head recall, mean density, per-head lists."""
    t0 = time.time()
    _, lse_dense = proxyattn.dense_attention(q, k, v, softmax_scale=scale, return_lse=True)  # [Hq, N]
    rows = []
    for g in groups:
        for gamma in gammas:
            for t in anchors:
                settings = dict(gamma=gamma, num_proxy_groups=g, softmax_scale=scale, anchor_blocks=t)
                plan = proxyattn.estimate(q, k, [0, q.shape[0]], **settings)
                _, lse = proxyattn.attend(plan, q, k, v, return_lse=True)
                recall = torch.exp(lse - lse_dense).mean(dim=1).numpy()  # [Hq]
                heads = plan.heads()
                row = {"g": g, "gamma": gamma, "anchor_blocks": t, "density": plan.density,
                       "recall_mean": float(recall.mean()), "recall_min": float(recall.min()),
                       "heads_below_gamma": int((recall < gamma).sum()),
                       "head_recall": [round(float(x), 5) for x in recall],
                       "head_density": [round(float(x), 5) for x in heads["density"][0]]}
                rows.append(row)
                log(f"  {name:44s} g={g} gamma={gamma:.2f} T={t}: density {row['density']:.4f} recall mean "
                    f"{row['recall_mean']:.4f} min {row['recall_min']:.4f} heads < gamma {row['heads_below_gamma']}")
    return {"input": name, "tokens": int(q.shape[0]), "num_q_heads": int(q.shape[1]),
            "num_kv_heads": int(k.shape[1]), "head_dim": int(q.shape[2]), "rows": rows,
            "seconds": round(time.time() - t0, 1)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--activations", nargs="*", default=[], help="captured q/k/v files (torch.save)")
    ap.add_argument("--synth", nargs="*", default=[], metavar="N:HQ:HKV:D:G",
                    help="structured synthetic inputs and their proxy groups")
    ap.add_argument("--anchors", nargs="+", type=int, default=[0, 1, 2, 4])
    ap.add_argument("--gammas", nargs="+", type=float, default=[0.90, 0.95])
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--out", type=pathlib.Path, required=True)
    args = ap.parse_args()
    if args.threads:
        proxyattn.set_num_threads(args.threads)
    doc = {"environment": common.environment(), "anchors": args.anchors, "gammas": args.gammas, "inputs": []}
    for path in args.activations:
        q, k, v, scale, source = captured_input(path)
        doc["inputs"].append(measure(source, q, k, v, scale, [1], args.gammas, args.anchors, print))
    for spec in args.synth:
        n, hq, hkv, d, g = (int(x) for x in spec.split(":"))
        q, k, v = synth_input(n, hq, hkv, d)
        doc["inputs"].append(measure(f"structured {n} {hq}/{hkv} d{d}", q, k, v, d ** -0.5, [g],
                                     args.gammas, args.anchors, print))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1))
    print("wrote", args.out)


if __name__ == "__main__":
    main()
