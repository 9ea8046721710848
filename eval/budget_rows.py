#!/usr/bin/env python3
"""Per-head budgets from several query blocks instead of the last one (ALGORITHM.md step 5),
measured on a real model's layers against the dense block-mass reference. Nothing in the
library changes: the budgets are recomputed here and applied to the library's own ranking.

    PYTHONPATH=python python eval/budget_rows.py --corpus ../shared/corpus \
        --model ~/.cache/proxyattn/qwen2.5-coder-0.5b-hf --runs 32768:0,12 16384:0 \
        --out eval/results/budget-rows-qwen05.json
    python eval/budget_rows.py --table eval/results/budget-rows-qwen05.json --table-settings g0.95_mb512_p2

For every run LENGTH:LAYERS (one prefill, attention_accuracy.capture_qkv: float32 post-RoPE
Q/K/V of the layers) and every setting (gamma, floor, proxy groups g; block 128, stride 4):
 1. proxyattn.estimate gives the plan: the ranking of each group's rows and the library's counts
    (plan.index()), its budgets K_i and needed blocks count_i (plan.heads()).
 2. estimators.dense_block_mass gives M[h, m, n], the dense attention mass of query block m in
    key block n. Row m of M, normalised, is exactly what step 5 computes for query block m
    (its rows' softmax averaged, summed per key block), so count_i(m), the smallest number of
    key blocks whose sorted masses reach gamma, is known for every m; count_i(last) must equal
    the library's needed_blocks (checked).
 3. Budget rules, all absolute mode (row m keeps min(m + 1, K_i) blocks of the library's
    ranking, forced sink / diagonal blocks first), each recall scored on M:
      library      the plan's own counts (their recall must equal the one from
                   proxyattn.attend's LSE: checked on --check-setting)
      last         K_i = max(count_i(last), floor): step 5 recomputed (must equal the library)
      max_r<r>     K_i = max(max_j count_i(m_j), floor) over r query blocks m_j at j/r of the
                   sequence (j = 1..r; r = 4: the blocks ending at 1/4, 1/2, 3/4 and the last)
      mean_r<r>    K_i = max(ceil(mean_j count_i(m_j)), floor)
      max_all      the max over every query block (the limit of max_r<r> as r grows)
      oracle       the smallest K_i whose recall, averaged over all rows with the library's
                   ranking, reaches gamma (no floor); oracle_floor: that with the floor
    Per rule: density, recall per head (mean over all queries), over the first and second half
    of the query rows, the budgets; and the recall of the same per-row counts with the true
    ranking (key blocks by dense mass, forced blocks first), which tells a budget that is too
    small from a ranking that misses the heavy blocks.
 4. The extra estimation work: step 5 for query block m costs 2 b (m + 1) b d FLOPs per head
    (Q K^T over its causal keys); reported relative to the last block's, and the whole
    estimate (steps 2-5) relative to dense attention.
"""
import argparse
import itertools
import json
import os
import pathlib
import sys
import time

import numpy as np
import torch

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, _HERE)
sys.path.insert(0, os.path.join(_HERE, "..", "python"))
import common  # noqa: E402
import estimators as est  # noqa: E402
from attention_accuracy import capture_qkv, group_of_head, proxy_groups, rounded  # noqa: E402

BLOCK, STRIDE = 128, 4  # the library defaults
DEFAULT_GAMMAS = [0.90, 0.95]
DEFAULT_MIN_BUDGETS = [2048, 512]
DEFAULT_ROWS = [2, 4, 8]


def step5_counts(mass_h, gamma):
    """count(m) for every query block m of one head: ALGORITHM.md step 5 applied to row m of
    the dense block-mass matrix (normalised, sorted descending, fewest blocks reaching gamma)."""
    nb = mass_h.shape[0]
    rows = np.where(np.tri(nb, dtype=bool), mass_h, 0.0)
    rows = rows / rows.sum(1, keepdims=True)
    cum = np.cumsum(-np.sort(-rows, axis=1), axis=1)
    return np.minimum((cum < gamma).sum(1) + 1, np.arange(nb) + 1)


def spread_blocks(nb, r):
    """r query blocks spread over the sequence: the ones ending at j/r of it, j = 1..r."""
    return sorted({max(0, round(nb * j / r) - 1) for j in range(1, r + 1)})


def absolute_counts(budget, nb):
    """Row m keeps min(m + 1, K) blocks (budget_mode absolute)."""
    return np.minimum(np.arange(nb) + 1, budget)


def oracle_budget(cum, gamma, num_tokens):
    """Smallest K with mean recall over all rows >= gamma when row m keeps min(m + 1, K)
    blocks of this ranking (cum: est.cumulative_mass of the ranking)."""
    nb = cum.shape[0]
    idx = np.minimum(np.arange(nb)[:, None], np.arange(nb)[None, :])  # [m, K-1] -> min(m, K-1)
    recall = np.take_along_axis(cum, idx, axis=1).sum(0) / num_tokens  # [K-1]
    return int(np.argmax(recall >= gamma) + 1) if (recall >= gamma).any() else nb


def score(cums, counts, num_tokens, true_cums):
    """Per head (counts [nb, Hq]): density, recall over all rows, first / second half of the rows;
    and the recall the same counts would have with the true ranking (true_cums: blocks in order
    of their dense mass, forced blocks first), which separates the budget from the ranking."""
    nb, hq = counts.shape
    half = nb // 2
    rows = np.arange(nb)
    kept = np.stack([cums[h][rows, counts[:, h] - 1] for h in range(hq)])  # [Hq, nb] mass kept
    per_row = kept / (num_tokens / nb)
    true_kept = np.stack([true_cums[h][rows, counts[:, h] - 1] for h in range(hq)])
    return {"density": counts.sum(0) / (nb * (nb + 1) / 2), "recall": kept.sum(1) / num_tokens,
            "recall_first_half": per_row[:, :half].mean(1), "recall_second_half": per_row[:, half:].mean(1),
            "recall_true_ranking": true_kept.sum(1) / num_tokens}


def summary(per_head, gamma):
    return {"density": rounded(per_head["density"].mean()), "recall_mean": rounded(per_head["recall"].mean()),
            "recall_worst_head": rounded(per_head["recall"].min()),
            "recall_first_half": rounded(per_head["recall_first_half"].mean()),
            "recall_second_half": rounded(per_head["recall_second_half"].mean()),
            "heads_below_gamma": int((per_head["recall"] < gamma).sum()),
            "recall_true_ranking_mean": rounded(per_head["recall_true_ranking"].mean()),
            "recall_true_ranking_worst_head": rounded(per_head["recall_true_ranking"].min())}


def flops(n_tok, hq, d, g, rows_used):
    """FLOPs of the estimate's parts, counting only the score products (multiply-add = 2; no
    softmax, pooling or sorting): proxy scores over the sampled causal pairs (steps 2-4), step 5
    over the given query blocks (all Q heads), and dense attention (Q K^T and P V)."""
    ns = -(-n_tok // STRIDE)
    proxy = 2 * d * g * ns * (ns + 1) / 2
    budget = sum(2 * d * hq * BLOCK * min(n_tok, (m + 1) * BLOCK) for m in rows_used)
    dense = 4 * d * hq * n_tok * (n_tok + 1) / 2
    return proxy, budget, dense


def measure_layer(q, k, v, scale, settings, rows_list, check_setting):
    import proxyattn

    n_tok, hq, d = q.shape
    hkv, nb = k.shape[1], n_tok // BLOCK
    floor_of = {mb: -(-mb // BLOCK) for mb in {s[1] for s in settings}}
    t0 = time.perf_counter()
    mass, lse_ref = est.dense_block_mass(q, k, BLOCK, scale)
    mass_np = mass.numpy()
    print(f"  dense block mass: {time.perf_counter() - t0:.0f} s", flush=True)
    true_cums = [est.cumulative_mass(mass_np[h], est.rank_rows(mass_np[h])) for h in range(hq)]
    qn, kn, vn = (t.numpy()[None] for t in (q, k, v))
    step5 = {gm: np.stack([step5_counts(mass_np[h], gm) for h in range(hq)], axis=1)  # [nb, Hq]
             for gm in {s[0] for s in settings}}
    spread = {r: spread_blocks(nb, r) for r in rows_list}
    out = {}
    for gamma, mb, g in settings:
        key = f"g{gamma:.2f}_mb{mb}_p{g}"
        plan = proxyattn.estimate(qn, kn, softmax_scale=scale, block_size=BLOCK, stride=STRIDE, gamma=gamma,
                                  min_budget_tokens=mb, num_proxy_groups=g, anchor_blocks=0,
                                  budget_rule="paper")  # the paper's rule
        order, lib_counts = plan.index()
        heads = plan.heads()
        porders = est.proxy_orders(order, g, nb)
        groups = group_of_head(hq, hkv, g)
        cums = [est.cumulative_mass(mass_np[h], porders[groups[h]]) for h in range(hq)]
        floor = floor_of[mb]
        counts5 = step5[gamma]
        budgets = {"last": np.maximum(counts5[-1], floor)}
        for r, blocks in spread.items():
            budgets[f"max_r{r}"] = np.maximum(counts5[blocks].max(0), floor)
            budgets[f"mean_r{r}"] = np.maximum(np.ceil(counts5[blocks].mean(0)).astype(np.int64), floor)
        budgets["max_all"] = np.maximum(counts5.max(0), floor)
        oracle = np.array([oracle_budget(cums[h], gamma, n_tok) for h in range(hq)])
        budgets["oracle"], budgets["oracle_floor"] = oracle, np.maximum(oracle, floor)
        rules = {"library": score(cums, lib_counts, n_tok, true_cums)}
        rules["library"]["budget"] = heads["budget_blocks"][0]
        for name, kb in budgets.items():
            counts = np.stack([absolute_counts(kb[h], nb) for h in range(hq)], axis=1)
            rules[name] = score(cums, counts, n_tok, true_cums)
            rules[name]["budget"] = kb
        proxy_f, last_f, dense_f = flops(n_tok, hq, d, g, [nb - 1])
        cost = {"last": {"budget_flops_vs_last": 1.0, "estimate_flops_vs_dense": rounded((proxy_f + last_f) / dense_f)}}
        for r, blocks in spread.items():
            _, bf, _ = flops(n_tok, hq, d, g, blocks)
            for kind in ("max", "mean"):
                cost[f"{kind}_r{r}"] = {"query_blocks": blocks, "budget_flops_vs_last": rounded(bf / last_f),
                                        "estimate_flops_vs_dense": rounded((proxy_f + bf) / dense_f)}
        _, bf, _ = flops(n_tok, hq, d, g, range(nb))
        cost["max_all"] = {"budget_flops_vs_last": rounded(bf / last_f),
                           "estimate_flops_vs_dense": rounded((proxy_f + bf) / dense_f)}
        checks = {
            "needed_blocks_mismatch_heads": int((heads["needed_blocks"][0] != counts5[-1]).sum()),
            "budget_mismatch_heads": int((heads["budget_blocks"][0] != budgets["last"]).sum()),
            "counts_equal_last_rule": bool(np.array_equal(
                lib_counts, np.stack([absolute_counts(budgets["last"][h], nb) for h in range(hq)], axis=1))),
            "library_density_vs_plan": rounded(abs(rules["library"]["density"].mean() - plan.density))}
        if (gamma, mb, g) == check_setting:
            _, lse_s = proxyattn.attend(plan, qn, kn, vn, return_lse=True)
            recall_lse = np.exp(lse_s[0].astype(np.float64) - lse_ref.numpy().astype(np.float64)).mean(1)
            checks["attend_recall_vs_mass_recall_max_abs"] = rounded(np.abs(recall_lse - rules["library"]["recall"]).max())
        out[key] = {"gamma": gamma, "min_budget_tokens": mb, "g": g, "checks": checks,
                    "rules": {name: {**summary(ph, gamma), "cost": cost.get(name),
                                     "per_head": {"budget": [int(x) for x in ph["budget"]],
                                                  "density": rounded(ph["density"]), "recall": rounded(ph["recall"]),
                                                  "recall_first_half": rounded(ph["recall_first_half"])}}
                              for name, ph in rules.items()}}
        line = "  ".join(f"{n} {out[key]['rules'][n]['density']:.3f}/{out[key]['rules'][n]['recall_mean']:.3f}"
                         f"/{out[key]['rules'][n]['recall_true_ranking_mean']:.3f}"
                         for n in ("library", "max_r4", "mean_r4", "max_all", "oracle_floor"))
        print(f"  {key}: density/recall/true-ranking recall {line}; checks {checks}", flush=True)
    return out, {"step5_counts_at_spread_blocks": {
        f"{gm:.2f}": {str(m): [int(x) for x in c[m]] for m in sorted(set(sum(spread.values(), [])))}
        for gm, c in step5.items()}}


TABLE_RULES = ["library", "max_r4", "mean_r4", "max_all", "oracle_floor"]


def print_table(path, settings, rules):
    """Markdown table of a result file: one line per (run, setting), one column per budget
    rule with density / recall mean / worst head / first half / second half of the rows, and
    the recall of the first two rules' counts with the true ranking."""
    doc = json.loads(pathlib.Path(path).read_text())
    print("| N, layer | γ, floor, g | " + " | ".join(rules) + f" | true ranking: {' / '.join(rules[:2])} |")
    print("|---|---|" + "---|" * (len(rules) + 1))
    for run in doc["runs"]:
        for key, res in run["settings"].items():
            if settings and key not in settings:
                continue
            cells = []
            for name in rules:
                r = res["rules"][name]
                cells.append(" / ".join(f"{r[x]:.3f}" for x in ("density", "recall_mean", "recall_worst_head",
                                                                 "recall_first_half", "recall_second_half")))
            true = " / ".join(f"{res['rules'][n]['recall_true_ranking_mean']:.3f}" for n in rules[:2])
            print(f"| {run['tokens'] // 1024}K, {run['layer']} | {res['gamma']:.2f}, {res['min_budget_tokens']}, "
                  f"{res['g']} | " + " | ".join(cells) + f" | {true} |")


def parse_run(text):
    length, layers = text.split(":")
    return int(length), [int(x) for x in layers.split(",")]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", type=pathlib.Path, help="the shared corpus folder")
    ap.add_argument("--model", type=pathlib.Path, help="model folder written by acquire.py")
    ap.add_argument("--text", default="pg_essays", choices=list(common.TEXTS))
    ap.add_argument("--runs", nargs="+", type=parse_run,
                    help="LENGTH:LAYER[,LAYER...], e.g. 32768:0,12 16384:0 (one prefill each)")
    ap.add_argument("--out", type=pathlib.Path, help="result JSON file")
    ap.add_argument("--gammas", nargs="+", type=float, default=DEFAULT_GAMMAS)
    ap.add_argument("--min-budgets", nargs="+", type=int, default=DEFAULT_MIN_BUDGETS)
    ap.add_argument("--groups", nargs="+", type=int, help="proxy groups g (default: 1 and Hkv)")
    ap.add_argument("--rows", nargs="+", type=int, default=DEFAULT_ROWS,
                    help="numbers r of query blocks the budgets are taken from")
    ap.add_argument("--check-setting", default="0.95,2048,1",
                    help="gamma,floor,g on which the library's recall is also computed from attend's LSE")
    ap.add_argument("--threads", type=int, default=0, help="CPU threads (0: all cores)")
    ap.add_argument("--table", metavar="FILE", help="only print a markdown table of a result file and exit")
    ap.add_argument("--table-settings", nargs="*", help="setting keys of the table (e.g. g0.95_mb512_p2; default all)")
    ap.add_argument("--table-rules", nargs="+", default=TABLE_RULES)
    args = ap.parse_args()
    if args.table:
        print_table(args.table, args.table_settings, args.table_rules)
        return
    missing = [f"--{n}" for n in ("corpus", "model", "runs", "out") if getattr(args, n) is None]
    if missing:
        ap.error(f"the measurement needs {', '.join(missing)}")

    common.set_threads(args.threads)
    model, tokenizer = common.load_model(args.model)
    cfg = model.config
    hq, hkv = cfg.num_attention_heads, cfg.num_key_value_heads
    groups = proxy_groups(args.groups, hkv)
    settings = list(itertools.product(args.gammas, args.min_budgets, groups))
    gm, mb, g = args.check_setting.split(",")
    check_setting = (float(gm), int(mb), int(g))
    text = common.read_text(args.corpus, args.text)
    doc = {"model": common.model_label(args.model), "text": args.text, "text_file": common.TEXTS[args.text],
           "block_size": BLOCK, "stride": STRIDE, "budget_mode": "absolute", "rows": args.rows,
           "inputs": "float32 post-RoPE Q/K/V of the dense model (attention_accuracy.capture_qkv)",
           "environment": common.environment(), "runs": []}
    for n_tok, layers in args.runs:
        t0 = time.perf_counter()
        cap = capture_qkv(model, common.token_prefix(tokenizer, text, n_tok), set(layers))
        print(f"{args.text} N={n_tok}: capture {time.perf_counter() - t0:.0f} s", flush=True)
        for layer in layers:
            t1 = time.perf_counter()
            q, k, v = cap.layers.pop(layer)
            scale = cap.scaling[layer]
            print(f"layer {layer}", flush=True)
            res, extra = measure_layer(q, k, v, float(scale), settings, args.rows, check_setting)
            doc["runs"].append({"tokens": n_tok, "layer": layer, "settings": res, **extra,
                                "seconds": rounded(time.perf_counter() - t1)})
            print(f"  layer {layer}: {time.perf_counter() - t1:.0f} s", flush=True)
            common.write_json(args.out, doc)  # after every layer, so a partial run leaves its results
        del cap


if __name__ == "__main__":
    main()
