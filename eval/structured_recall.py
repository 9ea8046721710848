#!/usr/bin/env python3
"""Where the structured input (pa_synth_generate, the speed benchmark's input) loses attention
mass (issue #28): the budgets or the ranking. Measured on the CPU in float32 against the dense
block masses; nothing in the library changes.

    PYTHONPATH=python:eval python eval/structured_recall.py --n 32768 \
        --out eval/results/structured-recall-32k.json          # ~3 min dense masses + ~1 min a plan

For each setting (gamma x proxy groups g x stride [x anchor blocks T]; the library's other
defaults, Llama-3.1-8B's
32 Q / 8 KV heads, d = 128, seed 1), from the library's plan (plan.index(): each group's
ranking of every row, each head's count) and estimators.dense_block_mass (M[h, m, n], the dense
mass of query block m in key block n; each row sums to the block size):
  library     mean over (head, row) of the mass the head's kept blocks hold (the recall that
              `proxyattn bench` reports from the LSE)
  oracle      the same counts, each row's blocks of largest dense mass: what a perfect ranking
              would keep at the library's density
  calibrated  each head's count taken on the last row along its group's ranking (the fewest
              entries of the ranking whose dense mass reaches gamma) and applied like K_i (at
              least the library's count): the budget that would make the last row's recall gamma
              (eval/recall_rules.py's ranked_last); calibrated_2g1 the same to 2 gamma - 1
"""
import argparse
import json
import time

import numpy as np
import torch

import proxyattn
from proxyattn import _C

from common import environment, set_threads
from estimators import dense_block_mass

SHAPE = dict(hq=32, hkv=8, d=128)  # Llama-3.1-8B, as `proxyattn bench`'s default shape
BLOCK, SEED = 128, 1


def structured(n):
    """q [N, Hq, d], k [N, Hkv, d] of the structured input (float32; v is not needed)."""
    q = np.zeros((n, SHAPE["hq"], SHAPE["d"]), np.float32)
    k = np.zeros((n, SHAPE["hkv"], SHAPE["d"]), np.float32)
    _C.synth_generate([0, n], SEED, q, k, np.zeros_like(k))
    return q, k


def rows_of(order, group, nb):
    """Row m of a group's ranking: order[group][m * (m + 1) / 2 : ... + m + 1] per m."""
    base = group * nb * (nb + 1) // 2
    return [order[base + m * (m + 1) // 2: base + m * (m + 1) // 2 + m + 1] for m in range(nb)]


def measure(q, k, mass, gamma, groups, stride, anchors):
    hq, nb = SHAPE["hq"], mass.shape[1]
    settings = proxyattn.Settings(gamma=gamma, num_proxy_groups=groups, stride=stride, anchor_blocks=anchors,
                                  budget_rule="paper")  # the calibrations start from the paper's count
    plan = proxyattn.estimate(q[None], k[None], settings=settings)
    order, count = plan.index()
    floor = -(-settings.min_budget_tokens // BLOCK)
    per_group = hq // groups
    targets = calibration_targets(gamma)
    library, oracle = [], []
    calibrated, kept = {name: [] for name in targets}, dict.fromkeys(targets, 0)
    for h in range(hq):
        rows = rows_of(order, h // per_group, nb)
        last = np.cumsum(mass[h, nb - 1, rows[-1]]) / BLOCK
        count_h = {name: int(np.searchsorted(last, t - 1e-12) + 1) for name, t in targets.items()}
        for m, row in enumerate(rows):
            c = int(count[m, h])
            library.append(mass[h, m, row[:c]].sum() / BLOCK)
            oracle.append(np.sort(mass[h, m, :m + 1])[::-1][:c].sum() / BLOCK)
            for name in targets:
                c_cal = min(m + 1, max(c, count_h[name], floor))
                calibrated[name].append(mass[h, m, row[:c_cal]].sum() / BLOCK)
                kept[name] += c_cal
    causal = hq * nb * (nb + 1) // 2
    out = {"gamma": gamma, "num_proxy_groups": groups, "stride": stride, "anchor_blocks": anchors,
           "density": plan.density,
           "recall": float(np.mean(library)), "oracle_recall": float(np.mean(oracle))}
    for name in targets:
        out[f"{name}_density"], out[f"{name}_recall"] = kept[name] / causal, float(np.mean(calibrated[name]))
    return out


def calibration_targets(gamma):
    """The last row's recall along the group's ranking that each calibrated count reaches."""
    return {"calibrated": gamma, "calibrated_2g1": 2 * gamma - 1}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=32768)
    ap.add_argument("--gammas", nargs="+", type=float, default=[0.90, 0.95])
    ap.add_argument("--settings", nargs="+", default=["1:4", "8:4", "1:1", "1:4:4", "1:4:8"],
                    help="GROUPS:STRIDE[:ANCHOR_BLOCKS] (anchor blocks: the default 'auto' where not given)")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    set_threads(args.threads)
    q, k = structured(args.n)
    t = time.time()
    mass, _ = dense_block_mass(torch.from_numpy(q), torch.from_numpy(k), BLOCK, SHAPE["d"] ** -0.5)
    mass = mass.numpy()
    print("dense block masses: %.0f s" % (time.time() - t), flush=True)
    results = []
    for gamma in args.gammas:
        for setting in args.settings:
            groups, stride, *anchors = setting.split(":")
            r = measure(q, k, mass, gamma, int(groups), int(stride), int(anchors[0]) if anchors else "auto")
            results.append(r)
            print("gamma %.2f g %s stride %s T %s: density %.3f recall %.4f | oracle ranking %.4f | calibrated count "
                  "density %.3f recall %.4f | to 2 gamma - 1: density %.3f recall %.4f"
                  % (gamma, groups, stride, r["anchor_blocks"], r["density"], r["recall"], r["oracle_recall"],
                     r["calibrated_density"], r["calibrated_recall"], r["calibrated_2g1_density"],
                     r["calibrated_2g1_recall"]), flush=True)
    doc = {"input": "pa_synth_generate seed %d" % SEED, "n": args.n, "shape": SHAPE, "block_size": BLOCK,
           "environment": environment(), "results": results}
    with open(args.out, "w") as f:
        json.dump(doc, f, indent=1)


if __name__ == "__main__":
    main()
