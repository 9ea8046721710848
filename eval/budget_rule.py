#!/usr/bin/env python3
"""The library's budget rules on real attention (issue #28): each plan estimated by the library
itself (CPU, float32) and its kept set per (head, query-block row) scored on the dense block
masses, so the numbers are those of the code users run, not of a reconstruction.

Rules (all with the library's anchors at T auto):
  today    anchor_mode="in_budget", budget_rule="paper"   (the defaults before issue #28)
  on_top   anchor_mode="on_top",    budget_rule="paper"   (the anchors on top, the paper's count)
  ranked_s<S>  anchor_mode="on_top", budget_rule="ranked", ranked_slack=S

    # from layers captured by recall_rules.py (q, k, scale, dense masses per layer file)
    PYTHONPATH=python:eval python eval/budget_rule.py --cache CACHE/recall/qwen2.5-coder-0.5b-hf \
        --inputs pg_essays-16384 stdlib_code-16384 --out eval/results/budget-rule-qwen05-16k.json
    # or captured here, on a GPU (float32 weights and activations; nothing written but the JSON)
    PYTHONPATH=python:eval python eval/budget_rule.py --model CACHE/qwen2.5-coder-1.5b-hf --device cuda \
        --corpus ../shared/corpus --text pg_essays --tokens 16384 --out FILE
    python eval/budget_rule.py table [--with-layer0] FILE [FILE ...]

Settings: every (gamma, floor, g) of --gammas x --min-budgets x --groups; block 128, stride 4,
absolute budgets, sink and diagonal forced (the library defaults). Per rule and setting: recall
(kept dense mass / N) and density per head; the table gives, over layers 1..L-1, density
relative to `today`, mean recall and the share of heads below gamma - 0.05, and layer 0 apart
(--with-layer0: counted with them).
"""
import argparse
import json
import pathlib
import sys
import time

import numpy as np
import torch

_HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(_HERE))
sys.path.insert(0, str(_HERE.parent / "python"))
import common  # noqa: E402
import estimators as est  # noqa: E402
from attention_accuracy import capture_qkv, rounded  # noqa: E402
from recall_rules import BLOCK, STRIDE, counts_mask, input_name, load_text, positions  # noqa: E402

DEFAULT_GAMMAS = [0.90, 0.95]
DEFAULT_MIN_BUDGETS = [512, 2048]
DEFAULT_GROUPS = [1, 2]
DEFAULT_SLACKS = [2.0]
SHORTFALL = 0.05     # a head "misses" when its recall < gamma - SHORTFALL (the target)
HEAD_SHARE = 0.10    # at most this share of heads may miss
DENSITY_SLACK = 0.10  # a rule may cost at most this much density above today's


def rules(slacks):
    out = {"today": dict(anchor_mode="in_budget", budget_rule="paper"),
           "on_top": dict(anchor_mode="on_top", budget_rule="paper")}
    for s in slacks:
        out[f"ranked_s{s:g}"] = dict(anchor_mode="on_top", budget_rule="ranked", ranked_slack=s)
    return out


def measure_layer(q, k, mass, scale, settings, rule_set):
    """{setting: {rule: {recall [Hq], density [Hq], estimate_s}}} for one layer: q [N, Hq, d],
    k [N, Hkv, d] float32 (CPU), mass [Hq, nb, nb] float64 dense block masses."""
    import proxyattn

    n_tok, hq, _ = q.shape
    nb = n_tok // BLOCK
    qn, kn = q.numpy()[None], k.numpy()[None]
    causal = nb * (nb + 1) / 2
    out = {}
    for gamma, mb, g in settings:
        key = f"g{gamma:.2f}_mb{mb}_p{g}"
        heads_per_group = hq // g
        out[key] = {}
        for name, fields in rule_set.items():
            t0 = time.perf_counter()
            plan = proxyattn.estimate(qn, kn, softmax_scale=scale, block_size=BLOCK, stride=STRIDE, gamma=gamma,
                                      min_budget_tokens=mb, num_proxy_groups=g, **fields)
            seconds = time.perf_counter() - t0
            order, counts = plan.index()
            pos = positions(est.proxy_orders(order, g, nb))
            mask = np.stack([counts_mask(pos[h // heads_per_group], counts[:, h]) for h in range(hq)])
            out[key][name] = {"recall": rounded((mass * mask).sum((1, 2)) / n_tok),
                              "density": rounded(mask.sum((1, 2)) / causal), "estimate_s": rounded(seconds)}
    return out


def cached_layers(folder, layers):
    for path in sorted(pathlib.Path(folder).glob("layer*.pt")):
        layer = int(path.stem[len("layer"):])
        if layers and layer not in layers:
            continue
        data = torch.load(path)
        yield layer, data["q"], data["k"], data["scale"], data["mass"].numpy()


def captured_layers(args, text):
    """Captures text on args.device in float32 and yields (layer, q, k, scale, mass) on the CPU."""
    model, tokenizer = common.load_model(args.model)  # float32, as the CPU captures
    model = model.to(args.device)
    ids = common.token_prefix(tokenizer, text, args.tokens)
    cap = capture_qkv(model, ids, set(args.layers) if args.layers else None)
    del model
    for layer in sorted(cap.layers):
        q, k, _ = cap.layers.pop(layer)
        mass, _ = est.dense_block_mass(q, k, BLOCK, cap.scaling[layer])
        yield layer, q.cpu(), k.cpu(), float(cap.scaling[layer]), mass.numpy()


def measure(args):
    common.set_threads(args.threads)
    settings = [(gm, mb, g) for gm in args.gammas for mb in args.min_budgets for g in args.groups]
    rule_set = rules(args.slacks)
    inputs = []
    if args.cache:
        sources = [(name, json.loads((pathlib.Path(args.cache) / name / "source.json").read_text()),
                    cached_layers(pathlib.Path(args.cache) / name, args.layers)) for name in args.inputs]
    else:
        name, text, described = load_text(args)
        sources = [(input_name(name, args.tokens), described, captured_layers(args, text))]
    for name, described, layers in sources:
        per_layer = {}
        for layer, q, k, scale, mass in layers:
            t0 = time.perf_counter()
            per_layer[str(layer)] = measure_layer(q, k, mass, scale, settings, rule_set)
            print(f"{name} layer {layer}: {time.perf_counter() - t0:.0f} s", flush=True)
        inputs.append({"input": name, "source": described, "layers": per_layer})
    result = {"model": common.model_label(args.model) if args.model else inputs[0]["source"].get("model"),
              "block_size": BLOCK, "stride": STRIDE, "budget_mode": "absolute", "rules": rule_set,
              "environment": common.environment(), "inputs": inputs}
    pathlib.Path(args.out).write_text(json.dumps(result) + "\n")
    print(f"wrote {args.out}")


# ---- table ----------------------------------------------------------------------------------------
def summarize(layers, setting, rule, gamma):
    """(density, mean recall, share of heads below gamma - SHORTFALL) over the given layers."""
    recall = np.concatenate([layers[lay][setting][rule]["recall"] for lay in layers])
    density = np.concatenate([layers[lay][setting][rule]["density"] for lay in layers])
    return density.mean(), recall.mean(), (recall < gamma - SHORTFALL).mean()


def merged_inputs(paths):
    """[(model, input, rules, layers)] over the files, one entry per (model, input): the layers of
    an input measured in several runs (e.g. layers 0-5, then 6-23) are joined, under the rules
    every one of those runs has."""
    merged = {}
    for path in paths:
        data = json.loads(pathlib.Path(path).read_text())
        for item in data["inputs"]:
            key = (data["model"], item["input"])
            rules_, layers = merged.get(key, (list(data["rules"]), {}))
            merged[key] = ([r for r in rules_ if r in data["rules"]], {**layers, **item["layers"]})
    return [(model, name, rules_, layers) for (model, name), (rules_, layers) in merged.items()]


def table(args):
    first = 0 if args.with_layer0 else 1
    print(f"layers {first}..: density vs today / mean recall / heads below gamma - {SHORTFALL}; "
          "**target met**; last column layer 0 mean recall per rule")
    for model, name, names, layers in merged_inputs(args.files):
        print(f"\n{name} ({model}), layers {','.join(sorted(layers, key=int))}")
        print("| input | γ, floor, g | " + " | ".join(names) + " | layer 0 |")
        print("|---" * (len(names) + 3) + "|")
        rest = {lay: v for lay, v in layers.items() if int(lay) >= first}
        for setting in next(iter(layers.values())):
            gamma = float(setting[1:5])
            today = summarize(rest, setting, "today", gamma)[0]
            cells = []
            for rule in names:
                dens, rec, below = summarize(rest, setting, rule, gamma)
                cell = f"{dens / today - 1:+.1%} / {rec:.3f} / {below:.0%}"
                met = rec >= gamma and below <= HEAD_SHARE and dens <= (1 + DENSITY_SLACK) * today
                cells.append(f"**{cell}**" if met else cell)
            zero = " / ".join(f"{summarize({'0': layers['0']}, setting, r, gamma)[1]:.3f}" for r in names) \
                if "0" in layers else "-"
            print(f"| {name} | {setting} | " + " | ".join(cells) + f" | {zero} |")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command")
    t = sub.add_parser("table")
    t.add_argument("files", nargs="+", help="result files; an input's layers in several files are joined")
    t.add_argument("--with-layer0", action="store_true", help="layer 0 counted with the others")
    m = sub.add_parser("measure")
    m.add_argument("--cache", help="folder of recall_rules.py's captures for one model")
    m.add_argument("--inputs", nargs="+", default=[], help="input folders under --cache")
    m.add_argument("--model", help="a model folder of acquire.py (capture here instead of --cache)")
    m.add_argument("--device", default="cpu")
    m.add_argument("--corpus")
    m.add_argument("--text", default="pg_essays", choices=sorted(common.TEXTS))
    m.add_argument("--text-name", help="name of --text-file's joined files")
    m.add_argument("--text-file", nargs="+")
    m.add_argument("--tokens", type=int, default=16384)
    m.add_argument("--layers", type=int, nargs="+")
    m.add_argument("--gammas", type=float, nargs="+", default=DEFAULT_GAMMAS)
    m.add_argument("--min-budgets", type=int, nargs="+", default=DEFAULT_MIN_BUDGETS)
    m.add_argument("--groups", type=int, nargs="+", default=DEFAULT_GROUPS)
    m.add_argument("--slacks", type=float, nargs="+", default=DEFAULT_SLACKS)
    m.add_argument("--threads", type=int, default=0)
    m.add_argument("--out", required=True)
    args = ap.parse_args()
    if args.command == "table":
        table(args)
    elif args.command == "measure":
        if not args.cache and not args.model:
            ap.error("measure: --cache or --model")
        measure(args)
    else:
        ap.print_help()


if __name__ == "__main__":
    main()
