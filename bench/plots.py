"""Pictures for docs/benchmarks.md from the committed results and from the CPU backend.

  python3 bench/plots.py --results bench/results --out docs/img

1. speedup.png: speedup over cuDNN dense against sequence length, ours (sm90 and sm80
   kernels) and FlexAttention on the same masks, per density (attention-sm90-*.json), and the
   whole pipeline on the structured input (pipeline-*.json).
2. time_split.png: estimation vs attention time of the pipeline (pipeline-*.json).
3. head_density.png: per-head density of the structured default input (16K tokens, 8 Q / 2 KV
   heads, d = 128, bf16) for a range of gamma, computed now with the CPU backend.
4. kept_mask.png: the kept blocks of the sparsest and the densest head of that input.
Needs matplotlib and torch (bench/requirements.txt) and the package module built in python/.
"""
import argparse
import glob
import json
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))

DPI = 110
DENSITIES = (0.05, 0.1, 0.5)
DEMO = dict(n=16384, hq=8, hkv=2, d=128, seed=1)
GAMMAS = (0.8, 0.85, 0.9, 0.95, 0.99)


def latest(results, prefix):
    paths = sorted(glob.glob(os.path.join(results, prefix + "-*.json")))
    if not paths:
        raise SystemExit(f"no {prefix}-*.json in {results}")
    with open(paths[-1]) as f:
        return json.load(f), os.path.basename(paths[-1])


def plot_speedup(results, out):
    att, att_name = latest(results, "attention-sm90-2026")
    pipe, pipe_name = latest(results, "pipeline")
    fig, ax = plt.subplots(figsize=(7.5, 4.6))
    for i, target in enumerate(DENSITIES):
        rows = sorted((r for r in att["results"] if abs(r["target_density"] - target) < 1e-6), key=lambda r: r["N"])
        ns = [r["N"] // 1024 for r in rows]
        color = f"C{i}"
        ax.plot(ns, [r["speedup_vs_cudnn"] for r in rows], "o-", color=color, label=f"ours sm90, density {target:g}")
        ax.plot(ns, [r["cudnn_dense_ms"] / r["sm80_ms"] for r in rows], "^:", color=color, alpha=0.6,
                label=f"ours sm80, density {target:g}")
        ax.plot(ns, [r["cudnn_dense_ms"] / r["flex_ms"] for r in rows], "x--", color=color, alpha=0.6,
                label=f"Flex, density {target:g}")
    for gamma in sorted({r["gamma"] for r in pipe["results"]}):
        rows = sorted((r for r in pipe["results"] if r["gamma"] == gamma), key=lambda r: r["N"])
        ax.plot([r["N"] // 1024 for r in rows], [r["speedup_vs_cudnn"] for r in rows], "s-", color="k",
                alpha=0.5 + 0.5 * (gamma > 0.92), label=f"pipeline (structured input), gamma {gamma:g}")
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log", base=2)
    ax.set_xlabel("sequence length (K tokens)")
    ax.set_ylabel("speedup over cuDNN dense causal")
    ax.set_title(f"{att['device']}: 32 Q / 8 KV heads, d=128, bf16", fontsize=10)
    ax.legend(fontsize=6.5, ncol=2)
    fig.text(0.01, 0.01, f"{att_name}, {pipe_name}", fontsize=6, color="grey")
    fig.tight_layout()
    fig.savefig(os.path.join(out, "speedup.png"), dpi=DPI)


def plot_time_split(results, out):
    pipe, name = latest(results, "pipeline")
    rows = pipe["results"]
    labels = [f"{r['N'] // 1024}K\ngamma {r['gamma']:g}\ndensity {r['density']:.2f}" for r in rows]
    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(7, 4))
    est = np.array([r["estimate_ms"] for r in rows])
    att = np.array([r["attend_ms"] for r in rows])
    dense = np.array([r["cudnn_dense_ms"] for r in rows])
    ax.bar(x - 0.2, est / dense, 0.4, label="estimation", color="C1")
    ax.bar(x - 0.2, att / dense, 0.4, bottom=est / dense, label="block-sparse attention", color="C0")
    ax.bar(x + 0.2, np.ones_like(dense), 0.4, label="cuDNN dense", color="grey", alpha=0.5)
    ax.set_xticks(x, labels, fontsize=7)
    ax.set_ylabel("time / cuDNN dense time")
    ax.set_title(f"pipeline time split, structured input, {pipe['device']}", fontsize=10)
    ax.legend(fontsize=8)
    fig.text(0.01, 0.01, name, fontsize=6, color="grey")
    fig.tight_layout()
    fig.savefig(os.path.join(out, "time_split.png"), dpi=DPI)


def demo_plans():
    import torch  # bf16 host tensors

    import proxyattn
    from proxyattn import _C

    n, hq, hkv, d = DEMO["n"], DEMO["hq"], DEMO["hkv"], DEMO["d"]
    q = torch.empty(n, hq, d, dtype=torch.bfloat16)
    k, v = torch.empty(n, hkv, d, dtype=torch.bfloat16), torch.empty(n, hkv, d, dtype=torch.bfloat16)
    _C.synth_generate([0, n], DEMO["seed"], q, k, v)
    return {g: proxyattn.estimate(q, k, [0, n], gamma=g) for g in GAMMAS}


def plot_heads_and_masks(out):
    plans = demo_plans()
    density = np.stack([plans[g].heads()["density"][0] for g in GAMMAS])  # [gamma, head]
    fig, ax = plt.subplots(figsize=(6, 3))
    im = ax.imshow(density, cmap="viridis", vmin=0, vmax=1, aspect="auto")
    for (i, j), value in np.ndenumerate(density):
        ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7, color="w" if value < 0.6 else "k")
    ax.set_yticks(range(len(GAMMAS)), [f"gamma {g:g}" for g in GAMMAS], fontsize=8)
    ax.set_xticks(range(density.shape[1]), [f"h{h}" for h in range(density.shape[1])], fontsize=8)
    ax.set_title("per-head density, structured input 16K, 8 Q / 2 KV heads (CPU backend)", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.03)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "head_density.png"), dpi=DPI)

    plan = plans[0.95]
    head_density = plan.heads()["density"][0]
    num, idx = plan.to_flex(0)
    picks = [int(np.argmin(head_density)), int(np.argmax(head_density))]
    fig, axes = plt.subplots(1, 2, figsize=(8, 4))
    for ax, h in zip(axes, picks):
        nqb = num.shape[1]
        mask = np.zeros((nqb, nqb))
        for m in range(nqb):
            mask[m, idx[h, m, :num[h, m]]] = 1
        ax.imshow(mask, cmap="Greys", interpolation="nearest")
        ax.set_title(f"head {h}: density {head_density[h]:.2f}", fontsize=9)
        ax.set_xlabel("key block")
        ax.set_ylabel("query block")
    fig.suptitle("kept blocks (black), gamma 0.95, structured input 16K", fontsize=10)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "kept_mask.png"), dpi=DPI)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", default="bench/results")
    ap.add_argument("--out", default="docs/img")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    plot_speedup(args.results, args.out)
    plot_time_split(args.results, args.out)
    plot_heads_and_masks(args.out)
    print("wrote", sorted(os.listdir(args.out)))


if __name__ == "__main__":
    main()
