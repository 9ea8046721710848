"""Where ProxyAttn loses the asked needle: one needle prompt, every layer and Q head, the last
query-block row (the question, the answer prefix and the token the answer is generated from).

    PYTHONPATH=python:eval python eval/needle_blocks.py --corpus .corpus \
        --model ~/.cache/proxyattn/qwen2.5-coder-0.5b-hf \
        --case multikey pg_essays 32768 0.3 --out eval/results/needle-blocks-qwen05-32k.json

 1. The prompt is regenerated exactly as eval/needle.py builds it (draw_cases: the same seed,
    the same itertools.product order over --lengths/--depths/--tasks/--haystacks, so the random
    keys and values are those of the needle run); the needles' keys, values and token spans
    (the needle sentence, its key and its value tokens) are recorded.
 2. One greedy generation (float32, CPU) with an attention function that records the post-RoPE
    Q and K of every layer's prefill call, and answers: with --qkv-from dense the layers run
    transformers' SDPA (dense model, its own activations in every layer); with --qkv-from proxy
    they run ProxyAttn (proxyattn.hf, --proxy-gamma etc.), so the Q/K are those the sparse
    model really has, errors of earlier layers included.
 3. Per layer, on those Q/K: ProxyAttn's plans (proxyattn.estimate, CPU) for each --gammas
    value (g, floor, block as given); per Q head, for the last query-block row:
      - the key blocks of each needle's sentence (and which hold its key and its value tokens);
      - dense attention of the last --last-queries query tokens (softmax over all causal keys,
        float64, averaged over those queries): mass on each needle's blocks (together and per
        block), on its sentence tokens, its key tokens and its value tokens;
      - the dense mass of the whole last query block (ALGORITHM.md step 5's a_i) on each
        needle block, and that block's rank in a_i (the oracle ranking);
      - the plan: the head's kept blocks in the row (its budget there), the rank of each
        needle block in its group's row order (plan.index(): forced blocks first, then by
        proxy score; 0-based), kept or not, for every gamma (a needle is "kept" when all its
        blocks are);
      - the proxy score A[j][last][n] (ALGORITHM.md steps 2-4, recomputed here in float64)
        of the needle block and of the row's last kept block, and the rank the block would get
        if the head were its own proxy (its own Q, same stride and max pooling).
The JSON has per layer and head numbers only (no activations): {"model", "environment", "runs": [...]},
one run per (case, --qkv-from); with --append a run is added to an existing file.
"""
import argparse
import json
import pathlib
import time

import numpy as np
import torch

import common
import estimators as est
import needle

CAPTURE_NAME = "proxyattn_needle_blocks_capture"
DIGITS = 3


# ---- the prompt -------------------------------------------------------------------------------
def regenerate_case(args, tokenizer, keys):
    """The case (task, haystack, length, depth) of eval/needle.make_cases with its needles
    (needle.draw_cases repeats the random draws of every case before it; only this one is built)."""
    wanted = (args.case[0], args.case[1], int(args.case[2]), float(args.case[3]))
    for task, name, length, depth, needles in needle.draw_cases(args, keys):
        if (task, name, length, depth) != wanted:
            continue
        ids = needle.build_prompt(tokenizer, common.read_text(args.corpus, name), length, depth, needles, task)
        return {"task": task, "haystack": name, "length": length, "depth": depth, "tokens": len(ids),
                "key": needles[0][0], "value": needles[0][1],
                "needles": [{"key": k, "value": v, "asked": i == 0} for i, (k, v) in enumerate(needles)]}, ids
    raise SystemExit(f"--case {args.case}: not among the cases of these --tasks/--haystacks/--lengths/--depths")


def token_spans(tokenizer, ids, needles):
    """Token spans [begin, end) of each needle's sentence, key and value in `ids`, found in the
    concatenation of the tokens decoded one by one (the needles are ASCII, so a multi-byte
    character split over tokens elsewhere cannot shift them)."""
    pieces = [tokenizer.decode([i]) for i in ids]
    starts = np.cumsum([0] + [len(p) for p in pieces])
    text = "".join(pieces)

    def tokens_of(c0, c1):  # tokens overlapping characters [c0, c1)
        return int(np.searchsorted(starts, c0, side="right") - 1), int(np.searchsorted(starts, c1, side="left"))

    for nd in needles:
        sentence = needle.NEEDLE.format(key=nd["key"], value=nd["value"])
        c0 = text.find(sentence)
        if c0 < 0 or text.find(sentence, c0 + 1) >= 0:
            raise SystemExit(f"needle {sentence!r}: found {text.count(sentence)} times in the prompt")
        nd["sentence_tokens"] = tokens_of(c0, c0 + len(sentence))
        k0 = c0 + sentence.index(nd["key"])
        nd["key_tokens"] = tokens_of(k0, k0 + len(nd["key"]))
        v0 = c0 + sentence.rindex(nd["value"])
        nd["value_tokens"] = tokens_of(v0, v0 + len(nd["value"]))
        nd["value_text"] = "".join(pieces[nd["value_tokens"][0]:nd["value_tokens"][1]])
    return needles


# ---- capture ------------------------------------------------------------------------------------
class Capture:
    """transformers attention function: stores the post-RoPE Q [N, Hq, d] and K [N, Hkv, d]
    (float32, batch row 0) of every layer's prefill call, then runs `inner` (SDPA or ProxyAttn)."""

    def __init__(self, inner, n_tokens):
        self.inner, self.n_tokens, self.q, self.k, self.scaling = inner, n_tokens, {}, {}, {}

    def __call__(self, module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
        if query.shape[2] == self.n_tokens:  # the prefill; decoding steps are not recorded
            i = module.layer_idx
            self.q[i] = query[0].transpose(0, 1).contiguous().float()
            self.k[i] = key[0].transpose(0, 1).contiguous().float()
            self.scaling[i] = scaling if scaling is not None else query.shape[-1] ** -0.5
        return self.inner(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs)


def capture_and_answer(model, tokenizer, ids, source, proxy_settings):
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    import proxyattn.hf

    if source == "dense":
        inner = sdpa_attention_forward
    else:
        proxyattn.hf.enable(**proxy_settings)
        inner = proxyattn.hf.attention_forward
    cap = Capture(inner, len(ids))
    AttentionInterface.register(CAPTURE_NAME, cap)
    AttentionMaskInterface.register(CAPTURE_NAME, sdpa_mask)
    model.set_attn_implementation(CAPTURE_NAME)
    stop_ids = [tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")]
    text = needle.answer(model, tokenizer, ids, stop_ids)
    return cap, text


# ---- per-layer analysis -----------------------------------------------------------------------
def r(x):
    return float(f"{float(x):.{DIGITS}g}")


def proxy_row_scores(qp, kp, n_tok, block, stride, scale):
    """A[last][n] of ALGORITHM.md step 4 for the last query-block row, float64: softmax over
    the sampled causal keys of each sampled query of the row, max per key block. qp [N, d]
    and kp [N, d] are the (proxy or single) head's Q and K."""
    nb = -(-n_tok // block)
    m = nb - 1
    tq = np.arange(m * block, n_tok)
    tq = tq[tq % stride == 0]
    tk = np.arange(0, n_tok, stride)
    s = (qp[tq].double() @ kp[tk].double().T) * scale
    s.masked_fill_(torch.from_numpy(tk[None, :] > tq[:, None]), float("-inf"))
    p = torch.softmax(s, dim=1)
    scores = torch.full((nb,), -1.0, dtype=torch.float64)
    key_block = torch.from_numpy(tk // block)
    colmax = p.max(0).values
    scores.scatter_reduce_(0, key_block, colmax, reduce="amax")
    return scores.numpy()


def rank_in(order_row, blocks):
    """Best (smallest) 0-based position of any of `blocks` in a row order."""
    pos = {int(b): i for i, b in enumerate(order_row)}
    return min(pos[b] for b in blocks)


def oracle_row_order(mass):
    """Block order by descending mass (ties to the lower block)."""
    return np.lexsort((np.arange(len(mass)), -mass))


def analyse_layer(q, k, scale, needles, cfg, gammas, last_queries):
    import proxyattn

    n_tok, hq, _ = q.shape
    hkv = k.shape[1]
    block, g, stride = cfg["block_size"], cfg["num_proxy_groups"], 4
    nb = -(-n_tok // block)
    m = nb - 1
    tri = nb * (nb + 1) // 2
    qn, kn = q.numpy()[None], k.numpy()[None]
    plans = {}
    for gamma in gammas:
        plan = proxyattn.estimate(qn, kn, softmax_scale=scale, gamma=gamma, **cfg)
        order, count = plan.index()
        heads = plan.heads()
        rows = [order[j * tri + m * (m + 1) // 2: j * tri + m * (m + 1) // 2 + m + 1] for j in range(g)]
        plans[gamma] = {"rows": rows, "count": count[m], "budget": heads["budget_blocks"][0],
                        "needed": heads["needed_blocks"][0]}
    group_of = [est.kv_head_of(h, hq, hkv) // (hkv // g) for h in range(hq)]
    # the group proxies' row scores (ALGORITHM.md steps 2-4) and agreement with the library's order
    proxy_scores, agree = [], []
    for j in range(g):
        qh = [h for h in range(hq) if group_of[h] == j]
        kh = [h for h in range(hkv) if h // (hkv // g) == j]
        sc = proxy_row_scores(q[:, qh].mean(1), k[:, kh].mean(1), n_tok, block, stride, scale)
        proxy_scores.append(sc)
        lib = plans[gammas[0]]["rows"][j]
        forced = [0, m]
        mine = forced + [int(b) for b in oracle_row_order(sc) if b not in forced]
        agree.append(r(np.mean(np.asarray(mine) == lib)))
    pos = torch.arange(n_tok)
    heads_out = []
    for h in range(hq):
        j, kvh = group_of[h], est.kv_head_of(h, hq, hkv)
        kh = k[:, kvh].double()
        # dense attention of the whole last query block (step 5's a_i) and of the last queries
        q0 = m * block
        s = (q[q0:, h].double() @ kh.T) * scale
        s.masked_fill_(pos[None, :] > pos[q0:, None], float("-inf"))
        p = torch.softmax(s, dim=1)
        a_row = torch.zeros(nb, dtype=torch.float64).index_add_(0, pos // block, p.mean(0)).numpy()
        p_last = p[-last_queries:].mean(0).numpy()
        a_last = np.bincount(np.arange(n_tok) // block, weights=p_last, minlength=nb)
        oracle = oracle_row_order(a_row)
        own = proxy_row_scores(q[:, h], k[:, kvh], n_tok, block, stride, scale)
        own_order = [0, m] + [int(b) for b in oracle_row_order(own) if b not in (0, m)]
        entry = {"head": h, "kv_head": kvh, "group": j, "needles": []}
        for gamma in gammas:
            pl = plans[gamma]
            kept = int(pl["count"][h])
            entry[f"g{gamma:g}"] = {"kept_blocks": kept, "budget_blocks": int(pl["budget"][h]),
                                    "needed_blocks": int(pl["needed"][h]),
                                    "row_recall": r(a_row[pl["rows"][j][:kept]].sum())}
        base = plans[gammas[0]]
        kept0 = int(base["count"][h])
        last_kept = int(base["rows"][j][kept0 - 1])
        entry["proxy_score_last_kept"] = r(proxy_scores[j][last_kept])
        for nd in needles:
            t0, t1 = nd["sentence_tokens"]
            k0, k1 = nd["key_tokens"]
            v0, v1 = nd["value_tokens"]
            blocks = sorted({t // block for t in range(t0, t1)})
            info = {"blocks": blocks,
                    "key_blocks": sorted({t // block for t in range(k0, k1)}),
                    "value_blocks": sorted({t // block for t in range(v0, v1)}),
                    "dense_mass_last": r(a_last[blocks].sum()),
                    "dense_mass_last_sentence": r(p_last[t0:t1].sum()),
                    "dense_mass_last_key": r(p_last[k0:k1].sum()),
                    "dense_mass_last_value": r(p_last[v0:v1].sum()),
                    "dense_mass_row": r(a_row[blocks].sum()),
                    "per_block": []}
            for bl in blocks:
                b0, b1 = max(t0, bl * block), min(t1, (bl + 1) * block)
                pb = {"block": bl, "dense_mass_last": r(a_last[bl]), "dense_mass_last_sentence": r(p_last[b0:b1].sum()),
                      "dense_mass_row": r(a_row[bl]), "oracle_rank": rank_in(oracle, [bl]),
                      "own_proxy_rank": rank_in(own_order, [bl]), "proxy_score": r(proxy_scores[j][bl])}
                for gamma in gammas:
                    rank = rank_in(plans[gamma]["rows"][j], [bl])
                    pb[f"g{gamma:g}"] = {"rank": rank, "kept": rank < int(plans[gamma]["count"][h])}
                info["per_block"].append(pb)
            # the needle counts as kept when every block of its sentence is kept
            for gamma in gammas:
                gk = f"g{gamma:g}"
                info[gk] = {"rank": max(pb[gk]["rank"] for pb in info["per_block"]),
                            "kept": all(pb[gk]["kept"] for pb in info["per_block"]),
                            "kept_any": any(pb[gk]["kept"] for pb in info["per_block"])}
            entry["needles"].append(info)
        heads_out.append(entry)
    return {"order_agreement": agree, "heads": heads_out}


# ---- output -----------------------------------------------------------------------------------
BLOCK_COLUMNS = ["needle", "block", "holds", "mass_last", "needle_token_mass_last", "mass_row", "oracle_rank",
                 "own_proxy_rank", "proxy_score"]
NEEDLE_COLUMNS = ["mass_last_blocks", "mass_last_sentence", "mass_last_key", "mass_last_value", "mass_row_blocks"]


def compact_layer(lay, gammas):
    """A layer's per-head numbers as rows of the columns in `legend` (keeps the JSON small)."""
    heads = []
    for e in lay["heads"]:
        rows, needle_rows = [], []
        for i, nd in enumerate(e["needles"]):
            needle_rows.append([nd["dense_mass_last"], nd["dense_mass_last_sentence"], nd["dense_mass_last_key"],
                                nd["dense_mass_last_value"], nd["dense_mass_row"]])
            for pb in nd["per_block"]:
                holds = "+".join(part for part in ("key", "value") if pb["block"] in nd[f"{part}_blocks"]) or "-"
                rows.append([i, pb["block"], holds, pb["dense_mass_last"], pb["dense_mass_last_sentence"],
                             pb["dense_mass_row"], pb["oracle_rank"], pb["own_proxy_rank"], pb["proxy_score"]]
                            + [pb[f"g{g:g}"]["rank"] for g in gammas])
        heads.append({"head": e["head"], "group": e["group"],
                      "kept_blocks": [e[f"g{g:g}"]["kept_blocks"] for g in gammas],
                      "budget_blocks": [e[f"g{g:g}"]["budget_blocks"] for g in gammas],
                      "needed_blocks": [e[f"g{g:g}"]["needed_blocks"] for g in gammas],
                      "row_recall": [e[f"g{g:g}"]["row_recall"] for g in gammas],
                      "proxy_score_last_kept": e["proxy_score_last_kept"], "needles": needle_rows, "blocks": rows})
    return {"order_agreement": lay["order_agreement"], "seconds": lay["seconds"], "heads": heads}


def legend(gammas, last_queries):
    return {
        "heads[].kept_blocks / budget_blocks / needed_blocks / row_recall": f"per gamma {gammas}: blocks the head "
        "keeps in the last query-block row, its budget K_i, count_i, and the last row's dense mass (a_i) inside "
        "the kept blocks",
        "heads[].proxy_score_last_kept": f"proxy score A[last][n] of the last kept block at gamma {gammas[0]}",
        "heads[].needles": f"one row per needle (case.needles order, the asked one first): {NEEDLE_COLUMNS}; "
        f"mass_last_*: dense attention of the last {last_queries} queries (mean) on the needle's blocks, sentence, "
        "key and value tokens; mass_row_blocks: a_i (whole last query block) on its blocks",
        "heads[].blocks": "one row per block of each needle's sentence: " + str(
            BLOCK_COLUMNS + [f"rank_g{g:g}" for g in gammas]) + "; holds: which of the needle's key/value tokens "
        "lie in the block; ranks 0-based (oracle: by a_i; own_proxy: the head as its own proxy; rank_g: the "
        "library's order of the head's group); the block is kept at gamma g when rank_g < kept_blocks[g]",
        "order_agreement": "per group: fraction of the last row's order where the float64 recomputation of steps "
        "2-4 (forced blocks first) equals the library's",
    }


# ---- summary ----------------------------------------------------------------------------------
def summarise(layers, gammas, threshold):
    """The (layer, head, block) triples where a block of the asked needle's sentence gets more
    than `threshold` of the last queries' dense attention (block mass); per gamma, how many of
    them the plan drops, and how many it drops while keeping a block of a distractor needle."""
    notable = []
    for li, lay in layers.items():
        for e in lay["heads"]:
            asked, others = e["needles"][0], e["needles"][1:]
            for pb in asked["per_block"]:
                if pb["dense_mass_last"] <= threshold:
                    continue
                rec = {"layer": int(li), "head": e["head"], "block": pb["block"],
                       "holds": [part for part in ("key", "value") if pb["block"] in asked[f"{part}_blocks"]],
                       "block_mass": pb["dense_mass_last"], "needle_token_mass": pb["dense_mass_last_sentence"],
                       "distractor_mass": [nd["dense_mass_last"] for nd in others],
                       "oracle_rank": pb["oracle_rank"], "own_proxy_rank": pb["own_proxy_rank"]}
                for gamma in gammas:
                    gk = f"g{gamma:g}"
                    rec[gk] = {"kept": pb[gk]["kept"], "rank": pb[gk]["rank"], "kept_blocks": e[gk]["kept_blocks"],
                               "distractors_kept": [i for i, nd in enumerate(others, 1) if nd[gk]["kept_any"]]}
                notable.append(rec)
    out = {"threshold": threshold, "notable": len(notable)}
    for gamma in gammas:
        gk = f"g{gamma:g}"
        dropped = [x for x in notable if not x[gk]["kept"]]
        out[f"dropped_{gk}"] = len(dropped)
        out[f"dropped_while_distractor_kept_{gk}"] = sum(1 for x in dropped if x[gk]["distractors_kept"])
        out[f"dropped_layers_{gk}"] = sorted({x["layer"] for x in dropped})
    out["records"] = notable
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", type=pathlib.Path, required=True, help="the shared corpus folder")
    ap.add_argument("--model", type=pathlib.Path, default=common.default_model_dir(common.DEFAULT_CACHE,
                                                                                   "qwen2.5-coder-0.5b"))
    ap.add_argument("--out", type=pathlib.Path, required=True, help="result JSON file")
    ap.add_argument("--case", nargs=4, required=True, metavar=("TASK", "HAYSTACK", "LENGTH", "DEPTH"))
    # the arguments of the needle run whose cases (and random draws) are reproduced
    ap.add_argument("--lengths", nargs="+", type=int, default=[8192, 16384, 32768])
    ap.add_argument("--depths", nargs="+", type=float, default=needle.DEFAULT_DEPTHS)
    ap.add_argument("--tasks", nargs="+", default=needle.DEFAULT_TASKS, choices=needle.DEFAULT_TASKS,
                    help="the tasks of the needle run whose draws to repeat (single-value needles only)")
    ap.add_argument("--haystacks", nargs="+", default=["pg_essays", "emma"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--layers", nargs="+", type=int, help="layers to analyse (default: all)")
    ap.add_argument("--gammas", nargs="+", type=float, default=[0.95, 0.98])
    ap.add_argument("--groups", type=int, default=2, help="num_proxy_groups")
    ap.add_argument("--min-budget", type=int, default=2048, help="min_budget_tokens")
    ap.add_argument("--block", type=int, default=needle.BLOCK)
    ap.add_argument("--last-queries", type=int, default=16, help="query tokens whose dense attention is reported")
    ap.add_argument("--threshold", type=float, default=0.05, help="notable dense mass on the asked needle")
    ap.add_argument("--qkv-from", default="dense", choices=["dense", "proxy"],
                    help="the forward whose Q/K are analysed: dense SDPA, or ProxyAttn in every layer")
    ap.add_argument("--proxy-gamma", type=float, default=0.95, help="gamma of the --qkv-from proxy forward")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--qkv-cache", type=pathlib.Path,
                    help="folder for the captured Q/K (several GB at 32K, outside the repository): loaded from "
                         "there when this case and --qkv-from were captured before, else saved there")
    ap.add_argument("--append", action="store_true",
                    help="add this run to the runs of an existing --out file (replacing one of the same case "
                         "and --qkv-from) instead of overwriting it")
    args = ap.parse_args()

    t_start = time.perf_counter()
    common.set_threads(args.threads)
    model, tokenizer = common.load_model(args.model)
    case, ids = regenerate_case(args, tokenizer, needle.load_keys(args.corpus))
    token_spans(tokenizer, ids, case["needles"])
    print(case, flush=True)
    # the paper's estimation (no anchor blocks): the analysis rebuilds its order rows with only
    # the sink and the diagonal forced
    cfg = dict(num_proxy_groups=args.groups, block_size=args.block, min_budget_tokens=args.min_budget,
               anchor_blocks=0)
    proxy_settings = dict(gamma=args.proxy_gamma, **cfg)
    t0 = time.perf_counter()
    cached = None
    if args.qkv_cache:
        name = f"{case['task']}-{case['haystack']}-{case['length']}-d{case['depth']:g}-{args.qkv_from}"
        if args.qkv_from == "proxy":
            name += f"-g{args.proxy_gamma:g}-p{args.groups}-mb{args.min_budget}-b{args.block}"
        cached = args.qkv_cache / f"{name}.pt"
    if cached is not None and cached.exists():
        saved = torch.load(cached)
        if saved["ids"] != ids:
            raise SystemExit(f"{cached}: captured from other token ids")
        cap, text = argparse.Namespace(q=saved["q"], k=saved["k"], scaling=saved["scaling"]), saved["answer"]
        t_forward = saved["seconds"]
    else:
        cap, text = capture_and_answer(model, tokenizer, ids, args.qkv_from, proxy_settings)
        t_forward = time.perf_counter() - t0
        if cached is not None:
            cached.parent.mkdir(parents=True, exist_ok=True)
            torch.save({"ids": ids, "q": cap.q, "k": cap.k, "scaling": cap.scaling, "answer": text,
                        "seconds": t_forward}, cached)
    print(f"answer {text!r} ({t_forward:.0f} s)", flush=True)
    del model
    layers = {}
    for li in (args.layers if args.layers is not None else sorted(cap.q)):
        t1 = time.perf_counter()
        layers[str(li)] = analyse_layer(cap.q[li], cap.k[li], cap.scaling[li], case["needles"], cfg, args.gammas,
                                        args.last_queries)
        layers[str(li)]["seconds"] = round(time.perf_counter() - t1, 1)
        asked = [e["needles"][0] for e in layers[str(li)]["heads"]]
        print(f"layer {li:2d}: asked mass " + " ".join(f"{a['dense_mass_last']:.3f}" for a in asked)
              + "\n          kept@0.95 " + " ".join(f"{'Y' if a[f'g{args.gammas[0]:g}']['kept'] else 'n'}"
                                                  f"{a[f'g{args.gammas[0]:g}']['rank']}" for a in asked)
              + f"  ({layers[str(li)]['seconds']} s)", flush=True)
    run = {"case": case, "seed": args.seed, "qkv_from": args.qkv_from,
           "proxy_forward": proxy_settings if args.qkv_from == "proxy" else None,
           "answer": text, "correct": int(case["value"] in text),
           "settings": {**cfg, "gammas": args.gammas, "stride": 4, "budget_mode": "absolute"},
           "last_queries": args.last_queries,
           "last_row_queries": [(len(ids) - 1) // args.block * args.block, len(ids)],
           "seconds": {"forward_and_answer": round(t_forward, 1), "total": round(time.perf_counter() - t_start, 1)},
           "summary": summarise(layers, args.gammas, args.threshold), "legend": legend(args.gammas, args.last_queries),
           "layers": {li: compact_layer(lay, args.gammas) for li, lay in layers.items()}}
    result = {"model": common.model_label(args.model), "environment": common.environment(), "runs": []}
    if args.append and args.out.exists():
        result["runs"] = [x for x in json.loads(args.out.read_text())["runs"]
                          if (x["case"]["task"], x["case"]["haystack"], x["case"]["length"], x["case"]["depth"],
                              x["qkv_from"]) != (case["task"], case["haystack"], case["length"], case["depth"],
                                                 args.qkv_from)]
    result["runs"].append(run)
    common.write_json(args.out, result, compact=True)


if __name__ == "__main__":
    main()
