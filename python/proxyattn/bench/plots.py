"""Pictures for docs/benchmarks.md from one results file of `python -m proxyattn.bench`:

  speedup.png       speedup over cuDNN dense against N, per method (one panel per shape)
  time_split.png    estimation and attention time as a share of cuDNN dense, per N and gamma
  head_density.png  per-head budget and density against N (first shape, each gamma)
  kept_mask.png     the kept blocks of the sparsest and the densest head (first shape, 32K)
  ttft.png          whole-model time to first token, dense vs ProxyAttn, attention vs the rest
  cp_scaling.png    context parallelism: speedup over one GPU against the GPUs, per N (cp files
                    of several world sizes, tables.cp_scaling)
"""
import json
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .config import BLOCK_SIZE  # noqa: E402
from .tables import CP_BENCHMARK, cp_scaling  # noqa: E402

DPI = 110


def _cases(doc, shape):
    return sorted((c for c in doc["compare"]["cases"] if c.get("shape") == shape and "dense" in c),
                  key=lambda c: c["N"])


def _save(fig, out, name, source):
    """Writes the figure as out/name with the results file names in a corner, and closes it."""
    fig.text(0.01, 0.01, source, fontsize=6, color="grey")
    fig.tight_layout()
    fig.savefig(os.path.join(out, name), dpi=DPI)
    plt.close(fig)


def _ms(entry):
    return entry["ms"] if entry and "ms" in entry else np.nan


def plot_speedup(doc, out, source):
    shapes = list(doc["compare"]["shapes"])
    fig, axes = plt.subplots(1, len(shapes), figsize=(6.2 * len(shapes), 4.6), squeeze=False)
    for ax, shape in zip(axes[0], shapes):
        cases = _cases(doc, shape)
        ns = [c["N"] // 1024 for c in cases]
        cudnn = np.array([_ms(c["dense"]["cudnn"]) for c in cases])
        for name, style in (("fa2", "v:"), ("flex", "x:"), ("ours", "d:")):
            label = {"fa2": "FlashAttention-2 dense (SDPA)", "flex": "FlexAttention dense",
                     "ours": "ours dense"}[name]
            ax.plot(ns, cudnn / np.array([_ms(c["dense"].get(name)) for c in cases]), style, color="grey",
                    label=label)
        for i, gamma in enumerate(doc["compare"]["gammas"]):
            rows = [next(r for r in c["proxyattn"] if r["gamma"] == gamma) for c in cases]
            ax.plot(ns, cudnn / np.array([r["total_ms"] for r in rows]), "o-", color=f"C{i}",
                    label=f"ProxyAttn total, gamma {gamma:g}")
            ax.plot(ns, cudnn / np.array([r["attend_ms"] for r in rows]), "s--", color=f"C{i}", alpha=0.6,
                    label=f"ProxyAttn attention only, gamma {gamma:g}")
            ax.plot(ns, cudnn / np.array([r.get("flex_masked_ms", np.nan) for r in rows]), "x--", color=f"C{i}",
                    alpha=0.6, label=f"FlexAttention on our mask, gamma {gamma:g}")
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log", base=2)
        ax.set_xlabel("sequence length (K tokens)")
        ax.set_ylabel("speedup over cuDNN dense causal")
        hq, hkv, d, g = doc["compare"]["shapes"][shape]
        ax.set_title(f"{shape}: {hq} Q / {hkv} KV heads, d={d}, g={g}, structured input", fontsize=9)
        ax.legend(fontsize=6.5)
    fig.suptitle(doc["machine"]["device"], fontsize=10)
    _save(fig, out, "speedup.png", source)


def plot_time_split(doc, out, source):
    shape = list(doc["compare"]["shapes"])[0]
    cases = _cases(doc, shape)
    labels, est, att = [], [], []
    for c in cases:
        for r in c["proxyattn"]:
            labels.append(f"{c['N'] // 1024}K\n{r['gamma']:g}\n{r['density']:.2f}")
            cudnn = r.get("cudnn_ms", _ms(c["dense"]["cudnn"]))  # same rounds as the row where timed so
            est.append(r["estimate_ms"] / cudnn)
            att.append(r["attend_ms"] / cudnn)
    x = np.arange(len(labels))
    fig, ax = plt.subplots(figsize=(max(6, 0.55 * len(labels)), 4))
    ax.bar(x, att, 0.6, label="sparse attention", color="C0")
    ax.bar(x, est, 0.6, bottom=att, label="estimation", color="C1")
    ax.set_xticks(x, labels, fontsize=7)
    ax.set_xlabel("N / gamma / density")
    ax.set_ylabel("time / cuDNN dense time")
    ax.set_title(f"{shape}, structured input: where ProxyAttn's time goes", fontsize=9)
    ax.legend(fontsize=8)
    _save(fig, out, "time_split.png", source)


def plot_head_density(doc, out, source):
    """Per head and N: the budget K_i (as a share of the row's blocks) and the density, per gamma."""
    shape = list(doc["compare"]["shapes"])[0]
    cases = _cases(doc, shape)
    gammas = doc["compare"]["gammas"]
    fig, axes = plt.subplots(2, len(gammas), figsize=(5.5 * len(gammas), 6.4), squeeze=False)
    for col, gamma in enumerate(gammas):
        rows = [next(r for r in c["proxyattn"] if r["gamma"] == gamma) for c in cases]
        block = doc["compare"].get("block_size", BLOCK_SIZE)
        nqb = np.array([-(-c["N"] // block) for c in cases], dtype=float)[:, None]
        grids = (("budget K_i / blocks per row", np.array([r["head_budget_blocks"] for r in rows]) / nqb),
                 ("density", np.array([r["head_density"] for r in rows])))
        for row, (what, grid) in enumerate(grids):
            ax = axes[row][col]
            im = ax.imshow(grid, aspect="auto", cmap="viridis", vmin=0, vmax=1)
            ax.set_yticks(range(len(cases)), [f"{c['N'] // 1024}K" for c in cases])
            ax.set_xlabel("Q head")
            ax.set_ylabel("N")
            ax.set_title(f"{shape}: per-head {what}, gamma {gamma:g}", fontsize=9)
            fig.colorbar(im, ax=ax, fraction=0.04)
    _save(fig, out, "head_density.png", source)


def plot_kept_mask(doc, out, source):
    found = [(c, r) for c in doc["compare"]["cases"] for r in c.get("proxyattn", []) if "kept_mask" in r]
    if not found:
        return
    case, row = found[0]
    mask = row["kept_mask"]
    fig, axes = plt.subplots(1, len(mask["heads"]), figsize=(4.2 * len(mask["heads"]), 4.2), squeeze=False)
    for ax, head, rows in zip(axes[0], mask["heads"], mask["rows"]):
        grid = np.zeros((len(rows), len(rows)))
        for m, kept in enumerate(rows):
            grid[m, :m + 1] = 0.15  # causal but skipped
            grid[m, kept] = 1.0
        ax.imshow(grid, cmap="Greys", vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(f"head {head}: density {row['head_density'][head]:.3f}", fontsize=9)
        ax.set_xlabel("key block")
        ax.set_ylabel("query block")
    fig.suptitle(f"{case['shape']}, N={case['N'] // 1024}K, gamma {row['gamma']:g}: kept blocks (black)", fontsize=9)
    _save(fig, out, "kept_mask.png", source)


def plot_ttft(doc, out, source):
    if "model" not in doc:
        return
    rows = doc["model"]["results"]
    fig, ax = plt.subplots(figsize=(7, 4))
    x = np.arange(len(rows))
    for offset, method, color in ((-0.2, "dense_cudnn", "C7"), (0.2, "proxyattn", "C0")):
        att = np.array([r[method]["attention_ms"] for r in rows]) / 1e3
        rest = np.array([r[method]["rest_ms"] for r in rows]) / 1e3
        ax.bar(x + offset, att, 0.4, color=color, label=f"{method}: attention")
        ax.bar(x + offset, rest, 0.4, bottom=att, color=color, alpha=0.4, label=f"{method}: rest of the model")
    ax.set_xticks(x, [f"{r['N'] // 1024}K, {r['attention_input']}\ndensity {r['density_layer0']:.2f}"
                      for r in rows], fontsize=7)
    ax.set_ylabel("time to first token (s)")
    ax.set_title("Llama-3.1-8B-shaped prefill (random weights), dense cuDNN vs ProxyAttn", fontsize=9)
    ax.legend(fontsize=7)
    _save(fig, out, "ttft.png", source)


def plot_cp_scaling(docs, out, source):
    rows = cp_scaling(docs)
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    worlds = sorted({r["world"] for r in rows})
    ax.plot(worlds, worlds, "k--", lw=0.8, label="ideal")
    for n in sorted({r["seq_len"] for r in rows}):
        for exchange, style in (("gather", "-o"), ("fetch", ":s")):
            pts = sorted((r["world"], r["speedup"]) for r in rows if r["seq_len"] == n and r["exchange"] == exchange)
            if pts:
                ax.plot(*zip(*pts), style, ms=4, label=f"{n // 1024}K {exchange}")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log", base=2)
    ax.set_xlabel("GPUs")
    ax.set_ylabel("speedup over one GPU's single call")
    ax.set_title("Context parallelism, one layer (proxyattn.distributed)", fontsize=9)
    ax.legend(fontsize=6, ncol=2)
    _save(fig, out, "cp_scaling.png", source)


def main(results, img):
    """results: paths of results files; their suites are read together (compare, model; the cp
    files of several world sizes)."""
    doc, cp_docs = {}, []
    for path in results:
        with open(path) as f:
            one = json.load(f)
        if one.get("benchmark") == CP_BENCHMARK and "model" not in one:
            cp_docs.append(one)
        else:
            doc.update(one)
    os.makedirs(img, exist_ok=True)
    source = ", ".join(os.path.basename(p) for p in results)
    if "compare" in doc:
        for fn in (plot_speedup, plot_time_split, plot_head_density, plot_kept_mask):
            fn(doc, img, source)
    plot_ttft(doc, img, source)
    if cp_docs:
        plot_cp_scaling(cp_docs, img, source)
    print("pictures in", img)
