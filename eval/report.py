"""Tables (markdown) and plots from the JSON files of attention_accuracy.py and needle.py.

    python eval/report.py --results eval/results/accuracy --needle eval/results/needle.json \
        --img docs/img --out eval/results/tables.md

Every number printed is read from the result files; nothing is computed here beyond means,
minima and maxima over heads and layers, and (selection curves) a linear interpolation of
each threshold curve at ProxyAttn's densities.
"""
import argparse
import json
import pathlib

import numpy as np

# Competing rankings in the order the tables show them (names as in estimators.py).
ESTIMATORS = ["proxyattn", "meanpool", "vslash", "flexprefill", "xattn_s8", "xattn_s16", "tokmax_perhead",
              "toksum_perhead", "oracle"]
NON_ORACLE = [e for e in ESTIMATORS if e != "oracle"]
COMPETITORS = ["meanpool", "vslash", "flexprefill", "xattn_s8", "xattn_s16"]  # the other methods' estimators
ABLATIONS = ["tokmax_perhead", "toksum_perhead"]
# Settings shown layer by layer (setting keys of attention_accuracy.setting_key, without the
# block size, which is each file's own).
# Settings missing from a file are skipped (g = 3 is SmolLM2's Hkv, g = 2 Qwen2.5-Coder's).
PER_LAYER_SETTINGS = ["mb2048_g0.95_p1", "mb512_g0.90_p1", "mb512_g0.95_p1", "mb512_g0.95_p3", "mb512_g0.95_p2"]
COMPARISON_SETTINGS = ["mb512_g0.95_p1", "mb512_g0.95_p3", "mb512_g0.95_p2"]  # per layer, for every block size
PLOT_DPI = 80
PLOT_BLOCK = 128  # the plots show the files of this block size
# Selection curves: the curves drawn and tabulated (names as in attention_accuracy.py's output).
CURVE_ESTIMATORS = ["meanpool", "vslash", "flexprefill", "xattn_s8", "xattn_s16", "toksum_perhead", "oracle"]


def load(results):
    docs = [json.loads(p.read_text()) for p in sorted(pathlib.Path(results).glob("*.json"))]
    return sorted(docs, key=lambda d: (d["text"], d["tokens"]))


def label(doc):
    return f"{doc['text']} {doc['tokens'] // 1024}K"


def describe(key):
    """b128_mb512_g0.95_p1 -> 'b=128, min 512, γ=0.95, g=1'."""
    b, mb, g, p = key.split("_")
    return f"b={b[1:]}, min {mb[2:]}, γ={g[1:]}, g={p[1:]}"


def layer_values(doc, setting, field):
    """[layers, heads] (or [layers]) array of one field of one setting."""
    return np.array([doc["layers"][l]["settings"][setting][field] for l in sorted(doc["layers"], key=int)])


def ranking_values(doc, setting, name):
    return np.array([doc["layers"][l]["settings"][setting]["ranking_recall"][name]
                     for l in sorted(doc["layers"], key=int)])


# ---- tables ---------------------------------------------------------------------------------
def summary_table(docs):
    lines = ["| input | setting | density | recall (mean) | recall (worst head) | error (mean over layers) "
             "| error (worst layer) | error (worst head) | heads with recall < γ |", "|---|---|---|---|---|---|---|---|---|"]
    for doc in docs:
        for s in doc["settings"]:
            dens = layer_values(doc, s, "layer_density")
            rec = layer_values(doc, s, "recall")
            err_all = layer_values(doc, s, "error_all")
            err = layer_values(doc, s, "error")
            gamma = doc["layers"][next(iter(doc["layers"]))]["settings"][s]["config"]["gamma"]
            lines.append(f"| {label(doc)} | {describe(s)} | {dens.mean():.3f} | {rec.mean():.4f} | {rec.min():.3f} "
                         f"| {err_all.mean():.2e} | {err_all.max():.2e} | {err.max():.2e} "
                         f"| {(rec < gamma).sum()}/{rec.size} |")
    return "\n".join(lines)


def per_layer_settings(doc):
    return [f"b{b}_{s}" for b in blocks(doc) for s in PER_LAYER_SETTINGS if f"b{b}_{s}" in doc["settings"]]


def per_layer_table(doc):
    settings = per_layer_settings(doc)
    lines = ["| layer | " + " | ".join(describe(s) for s in settings) + " |", "|---|" + "---|" * len(settings)]
    cols = {s: (layer_values(doc, s, "layer_density"), layer_values(doc, s, "recall").mean(1),
                layer_values(doc, s, "error_all")) for s in settings}
    for i, layer in enumerate(sorted(doc["layers"], key=int)):
        cells = [f"{cols[s][0][i]:.2f} / {cols[s][1][i]:.3f} / {cols[s][2][i]:.1e}" for s in settings]
        lines.append(f"| {layer} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def blocks(doc):
    return sorted({int(s.split("_")[0][1:]) for s in doc["settings"]})


def label_blocks(doc):
    return f"{label(doc)}, b={'/'.join(map(str, blocks(doc)))}"


def comparison_table(doc, setting):
    """Per layer: each ranking's recall at ProxyAttn's per-row budgets, and the best non-oracle."""
    vals = {e: ranking_values(doc, setting, e).mean(1) for e in ESTIMATORS}
    dens = layer_values(doc, setting, "layer_density")
    lines = ["| layer | density | " + " | ".join(ESTIMATORS) + " | most mass (excl. oracle) |",
             "|---|---|" + "---|" * (len(ESTIMATORS) + 1)]
    for i, layer in enumerate(sorted(doc["layers"], key=int)):
        best = max(NON_ORACLE, key=lambda e: vals[e][i])
        lines.append(f"| {layer} | {dens[i]:.2f} | " + " | ".join(f"{vals[e][i]:.4f}" for e in ESTIMATORS)
                     + f" | {best} |")
    lines.append("| mean | {:.2f} | ".format(dens.mean()) + " | ".join(f"{vals[e].mean():.4f}" for e in ESTIMATORS)
                 + " | |")
    return "\n".join(lines)


def missed_mass_table(docs):
    """Per input and setting: missed mass (1 - recall, %, mean over heads and layers) of each
    ranking at ProxyAttn's budgets, and in how many layers ProxyAttn's mean recall is at least
    that of the best of the other methods' estimators."""
    lines = ["| input | setting | density | " + " | ".join(ESTIMATORS) + " | layers ProxyAttn >= best other |",
             "|---|---|---|" + "---|" * (len(ESTIMATORS) + 1)]
    for doc in docs:
        for s in doc["settings"]:
            vals = {e: ranking_values(doc, s, e).mean(1) for e in ESTIMATORS}
            best_other = np.max([vals[e] for e in COMPETITORS], axis=0)
            wins = int((vals["proxyattn"] >= best_other).sum())
            dens = layer_values(doc, s, "layer_density").mean()
            lines.append(f"| {label(doc)} | {describe(s)} | {dens:.3f} | "
                         + " | ".join(f"{100 * (1 - vals[e].mean()):.2f}" for e in ESTIMATORS)
                         + f" | {wins}/{len(best_other)} |")
    return "\n".join(lines)


def flexprefill_choice_line(docs):
    out = []
    for doc in docs:
        for block in map(str, blocks(doc)):
            qa = np.array([doc["layers"][l]["per_block_size"][block]["flexprefill"]["query_aware"]
                           for l in sorted(doc["layers"], key=int)])
            out.append(f"{label(doc)} b={block}: {qa.sum()}/{qa.size} heads query-aware")
    return "; ".join(out)


def lse_check_line(docs):
    """Per input: the largest |dense LSE, library - torch| and |ProxyAttn recall from the LSEs -
    recall of its ranking on the block-mass matrix| over layers, heads and settings."""
    out = []
    for doc in docs:
        lse = max(e["lse_check_max_abs"] for l in doc["layers"] for e in doc["layers"][l]["per_block_size"].values())
        gap = max(np.abs(layer_values(doc, s, "recall") - ranking_values(doc, s, "proxyattn")).max()
                  for s in doc["settings"])
        out.append(f"{label_blocks(doc)}: {lse:.2e} / {gap:.2e}")
    return "; ".join(out)


def needle_section(paths):
    """The needle table over the cases of all files (same modes in each), and per mode against
    dense: identical answers, cases lost and gained, how many layers ran ProxyAttn per prompt."""
    from needle import summary_table

    docs = [json.loads(pathlib.Path(p).read_text()) for p in paths]
    modes = list(docs[0]["modes"])
    if any(list(d["modes"]) != modes for d in docs):
        raise SystemExit(f"{paths}: the needle files ran different modes")
    cases = [c for d in docs for c in d["cases"]]
    lines = ["| mode | answers identical to dense | right dense, wrong here | wrong dense, right here "
             "| layers running ProxyAttn per prompt (by length) |", "|---|---|---|---|---|"]
    for m in modes:
        same = sum(c["answers"][m] == c["answers"]["dense"] for c in cases)
        lost = sum(c["correct"]["dense"] and not c["correct"][m] for c in cases)
        gained = sum(c["correct"][m] and not c["correct"]["dense"] for c in cases)
        calls = {length: sorted({c["sparse_layer_calls"][m] for c in cases if c["length"] == length})
                 for length in sorted({c["length"] for c in cases})}
        lines.append(f"| {m} | {same}/{len(cases)} | {lost} | {gained} | "
                     + ", ".join(f"{k}: {'/'.join(map(str, v))}" for k, v in calls.items()) + " |")
    seconds = {m: round(sum(d["seconds_per_mode"][m] for d in docs), 1) for m in modes}
    # an int in older files, {task: steps} since the list-answer tasks
    max_new = docs[0]["max_new_tokens"]
    if isinstance(max_new, dict):
        max_new = ", ".join(f"{steps} ({task})" for task, steps in max_new.items())
    return summary_table(cases, modes), "\n".join(lines), seconds, len(cases), max_new


def layer_list(doc):
    layers = sorted(int(l) for l in doc["layers"])
    return f"{layers[0]}-{layers[-1]}" if layers == list(range(layers[0], layers[-1] + 1)) else ",".join(map(str, layers))


def curve_points(doc, kind, name):
    """{sweep value: (density, recall)} means over heads and layers of one curve; kind is
    "thresholds" (name: an estimator) or "proxyattn" (name: mb<floor>_p<groups>)."""
    per_layer = [doc["layers"][l]["per_block_size"][str(PLOT_BLOCK)]["curves"][kind][name]
                 for l in sorted(doc["layers"], key=int)]
    return {x: (np.mean([p[x]["density"] for p in per_layer]), np.mean([p[x]["recall"] for p in per_layer]))
            for x in per_layer[0]}


def proxy_curve_names(doc):
    return [f"mb{mb}_p{g}" for mb in doc["curves"]["min_budgets"] for g in doc["curves"]["groups"]]


def curve_table(doc):
    """One row per curve: density / recall at each sweep value."""
    lines = ["| method | swept | value: density / recall |", "|---|---|---|"]
    for name in proxy_curve_names(doc):
        mb, g = name.split("_")
        pts = curve_points(doc, "proxyattn", name)
        lines.append(f"| proxyattn (min {mb[2:]}, g={g[1:]}) | γ | "
                     + "; ".join(f"{x}: {d:.3f} / {r:.4f}" for x, (d, r) in pts.items()) + " |")
    for name in CURVE_ESTIMATORS:
        pts = curve_points(doc, "thresholds", name)
        lines.append(f"| {name} | τ | " + "; ".join(f"{x}: {d:.3f} / {r:.4f}" for x, (d, r) in pts.items()) + " |")
    return "\n".join(lines)


def interpolate(points, density):
    """Recall of a (density, recall) curve at `density`, None outside the curve's range."""
    d, r = zip(*sorted(points.values()))
    return float(np.interp(density, d, r)) if d[0] <= density <= d[-1] else None


def curve_at_proxy_table(doc):
    """At each ProxyAttn point (density, recall): each threshold curve's recall there."""
    lines = ["| ProxyAttn curve | γ | density | proxyattn | " + " | ".join(CURVE_ESTIMATORS) + " |",
             "|---|---|---|---|" + "---|" * len(CURVE_ESTIMATORS)]
    curves = {e: curve_points(doc, "thresholds", e) for e in CURVE_ESTIMATORS}
    for name in proxy_curve_names(doc):
        for gamma, (dens, rec) in curve_points(doc, "proxyattn", name).items():
            cells = [interpolate(curves[e], dens) for e in CURVE_ESTIMATORS]
            lines.append(f"| {name} | {gamma} | {dens:.3f} | {rec:.4f} | "
                         + " | ".join("-" if c is None else f"{c:.4f}" for c in cells) + " |")
    return "\n".join(lines)


# ---- plots ---------------------------------------------------------------------------------
def save_figure(fig, img, name):
    """Writes fig as img/name (PNG), closes it and returns the path."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    out = pathlib.Path(img) / name
    fig.savefig(out, dpi=PLOT_DPI)
    plt.close(fig)
    return out


def plot_layers(shown, img, prefix):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    longest = [d for d in shown if blocks(d) == [PLOT_BLOCK]]
    fig, axes = plt.subplots(2, len(longest), figsize=(4.2 * len(longest), 5.2), squeeze=False, sharex=True)
    for col, doc in enumerate(longest):
        layers = sorted(int(l) for l in doc["layers"])
        for s in per_layer_settings(doc):
            axes[0][col].plot(layers, layer_values(doc, s, "layer_density"), marker=".", label=describe(s))
            axes[1][col].plot(layers, layer_values(doc, s, "recall").mean(1), marker=".", label=describe(s))
        axes[0][col].set_title(label(doc))
        axes[0][col].set_ylabel("density")
        axes[1][col].set_ylabel("mass recall (mean over heads)")
        axes[1][col].set_xlabel("layer")
    axes[0][0].legend(fontsize=7)
    out = save_figure(fig, img, f"{prefix}_layers.png")

    fig, axes = plt.subplots(1, len(longest), figsize=(4.2 * len(longest), 3.4), squeeze=False)
    setting = f"b{PLOT_BLOCK}_{COMPARISON_SETTINGS[0]}"
    for col, doc in enumerate(longest):
        layers = sorted(int(l) for l in doc["layers"])
        for e in ESTIMATORS:
            style = {"proxyattn": dict(linewidth=2.2, color="C0"), "oracle": dict(linestyle="--", color="k")}
            axes[0][col].semilogy(layers, 1 - ranking_values(doc, setting, e).mean(1), marker=".", label=e,
                                  **style.get(e, dict(linewidth=1.0)))
        axes[0][col].set_title(f"{label(doc)}, {describe(setting)}", fontsize=9)
        axes[0][col].set_xlabel("layer")
        axes[0][col].set_ylabel("missed mass at equal budget")
    axes[0][0].legend(fontsize=6)
    return [out, save_figure(fig, img, f"{prefix}_estimators.png")]


def plot_curves(docs, img, prefix):
    """Density against mass recall: ProxyAttn's gamma sweeps and each estimator's threshold sweep."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with_curves = [d for d in docs if d.get("curves")]
    if not with_curves:
        return []
    fig, axes = plt.subplots(1, len(with_curves), figsize=(5.0 * len(with_curves), 4.0), squeeze=False)
    for col, doc in enumerate(with_curves):
        ax = axes[0][col]
        for i, name in enumerate(proxy_curve_names(doc)):
            d, r = zip(*curve_points(doc, "proxyattn", name).values())
            ax.plot(d, r, marker="o", linewidth=2.0, color=f"C{i}", label=f"proxyattn {name} (γ)")
        for i, name in enumerate(CURVE_ESTIMATORS):
            d, r = zip(*curve_points(doc, "thresholds", name).values())
            style = dict(linestyle="--", color="k") if name == "oracle" else dict(linewidth=1.0, color=f"C{i + 4}")
            ax.plot(d, r, marker=".", label=f"{name} (τ)", **style)
        ax.set_title(f"{label(doc)}, b={PLOT_BLOCK}, layers {layer_list(doc)}", fontsize=9)
        ax.set_xlabel("density (mean over heads and layers)")
        ax.set_ylabel("mass recall")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=6)
    return [save_figure(fig, img, f"{prefix}_curves.png")]


def shown_docs(docs, tokens):
    """The files shown layer by layer: those of the given lengths (default: the longest)."""
    tokens = tokens or [max(d["tokens"] for d in docs)]
    return [d for d in docs if d["tokens"] in tokens]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--results", type=pathlib.Path, required=True, help="folder of attention_accuracy.py JSONs")
    ap.add_argument("--needle", type=pathlib.Path, nargs="+", help="needle.py JSON file(s), tabulated together")
    ap.add_argument("--img", type=pathlib.Path, help="folder for PNG plots")
    ap.add_argument("--prefix", default="accuracy", help="file name prefix of the plots")
    ap.add_argument("--per-layer-tokens", nargs="+", type=int,
                    help="input lengths shown layer by layer (tables and plots; default: the longest)")
    ap.add_argument("--out", type=pathlib.Path, required=True, help="markdown file to write")
    args = ap.parse_args()
    docs = load(args.results)
    layer_counts = "/".join(sorted({str(len(d["layers"])) for d in docs}))
    parts = [f"## Summary per input and setting (means over the {layer_counts} layers evaluated)",
             summary_table(docs)]
    for doc in shown_docs(docs, args.per_layer_tokens):
        parts += [f"## Per layer, {label_blocks(doc)}: density / mass recall / output error", per_layer_table(doc)]
    parts += ["## Missed mass (%) of each ranking at ProxyAttn's per-row budgets", missed_mass_table(docs)]
    for doc in shown_docs(docs, args.per_layer_tokens):
        for s in (f"b{b}_{c}" for b in blocks(doc) for c in COMPARISON_SETTINGS):
            if s in doc["settings"]:
                parts += [f"## Rankings at equal budget, per layer, {label(doc)}, {describe(s)}",
                          comparison_table(doc, s)]
    for doc in (d for d in docs if d.get("curves")):
        parts += [f"## Selection curves, {label(doc)}, b={PLOT_BLOCK}, layers {layer_list(doc)}: each method with "
                  "its own rule (density / mass recall, means over heads and layers)", curve_table(doc),
                  f"## Recall of each threshold curve at ProxyAttn's densities, {label(doc)} (linear interpolation; "
                  "- where the curve does not reach that density)", curve_at_proxy_table(doc)]
    parts += ["## Checks", "- max |difference| of the dense LSE, library vs torch reference / of ProxyAttn's recall "
              "from the LSEs vs from the block-mass matrix and its own ranking: " + lse_check_line(docs),
              f"- FlexPrefill pattern choice (tau = {docs[0]['flexprefill_tau']}): "
              + flexprefill_choice_line(docs)]
    if args.needle:
        table, against_dense, seconds, prompts, max_new = needle_section(args.needle)
        parts += ["## Needle in a haystack (exact match, %)", table, "## Needle: each mode against dense",
                  against_dense, f"- wall seconds per mode ({prompts} prompts, prefill and up to "
                  f"{max_new} decoding steps): {seconds}"]
    if args.img:
        args.img.mkdir(parents=True, exist_ok=True)
        for p in plot_layers(shown_docs(docs, args.per_layer_tokens), args.img, args.prefix) + plot_curves(docs, args.img, args.prefix):
            parts.append(f"- plot: {p} ({p.stat().st_size // 1024} KiB)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n\n".join(parts) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
