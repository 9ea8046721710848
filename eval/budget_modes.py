#!/usr/bin/env python3
"""Absolute against proportional budgets (ALGORITHM.md step 5) on captured attention inputs
(files of eval/export_activations.py): density, mean and worst-head mass recall per setting.

  python eval/budget_modes.py --inputs ~/.cache/proxyattn/activations/*.pt --out eval/results/budget-modes.json
"""
import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))
import proxyattn  # noqa: E402

MODES = ("absolute", "proportional")
GAMMAS = (0.90, 0.95)
MIN_BUDGETS = (2048, 512)


def measure(q, k, v, scale, groups):
    """Rows of (mode, gamma, floor, g) -> density, recall mean over heads, worst head."""
    n = q.shape[0]
    _, dense_lse = proxyattn.dense_attention(q, k, v, [0, n], softmax_scale=scale, return_lse=True)
    rows = []
    for mode in MODES:
        for gamma in GAMMAS:
            for floor in MIN_BUDGETS:
                for g in groups:
                    settings = dict(gamma=gamma, num_proxy_groups=g, min_budget_tokens=floor, budget_mode=mode,
                                    softmax_scale=scale)
                    plan = proxyattn.estimate(q, k, [0, n], **settings)
                    _, lse = proxyattn.attend(plan, q, k, v, return_lse=True)
                    recall = torch.exp(lse - dense_lse).mean(dim=1)  # [Hq]
                    rows.append({"budget_mode": mode, "gamma": gamma, "min_budget_tokens": floor, "g": g,
                                 "density": plan.density, "recall_mean": recall.mean().item(),
                                 "recall_worst_head": recall.min().item()})
                    print("  %-12s gamma %.2f floor %4d g %d: density %.3f recall %.4f (worst head %.3f)" % (
                        mode, gamma, floor, g, plan.density, rows[-1]["recall_mean"], rows[-1]["recall_worst_head"]),
                        flush=True)
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--inputs", nargs="+", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    proxyattn.set_num_threads(args.threads)
    results = []
    for path in args.inputs:
        doc = torch.load(path, map_location="cpu", weights_only=True)
        q, k, v = (doc[x].float().contiguous() for x in ("q", "k", "v"))
        print(doc["source"], tuple(q.shape), tuple(k.shape), flush=True)
        groups = sorted({1, k.shape[1]})
        results.append({"source": doc["source"], "tokens": q.shape[0], "q_heads": q.shape[1], "kv_heads": k.shape[1],
                        "head_dim": q.shape[2], "inputs": "bf16 captured, computed in float32",
                        "rows": measure(q, k, v, float(doc["scale"]), groups)})
    with open(args.out, "w") as f:
        json.dump({"block_size": 128, "stride": 4, "results": results}, f, indent=1)
    print("wrote", args.out)


if __name__ == "__main__":
    main()
