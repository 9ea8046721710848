"""ProxyAttn against dense attention on a real model's Q, K, V, layer by layer and head by head.

    PYTHONPATH=python python eval/attention_accuracy.py --corpus ../shared/corpus \
        --model ~/.cache/proxyattn/smollm2-hf --out eval/results/accuracy

For every text (TEXTS in common.py) and length:
 1. One prefill of the model (float32, CPU) with a capturing attention function that records
    the query, key and value each attention layer receives (after RoPE) and then runs SDPA.
 2. Per layer: dense attention and its LSE (proxyattn.dense_attention), the dense block-mass
    matrix (estimators.dense_block_mass), and for every setting (block size, min budget,
    gamma, proxy groups) ProxyAttn's plan and output: per head density, mass recall
    (exp(LSE_sparse - LSE_dense) averaged over queries), output error ||O_s - O_d|| / ||O_d||.
 3. Estimator comparison at equal density: for each head and query-block row, every estimator's
    ranking keeps the same number of blocks ProxyAttn kept; the dense mass inside them is
    that ranking's recall. ProxyAttn's own ranking is scored the same way (a check: it must
    equal the LSE-based recall).
 4. With --curves, each method with its own selection rule, swept: every estimator's ranking
    with a cumulative-score threshold per row (estimators.threshold_counts) for each of
    --curve-thresholds, and ProxyAttn's plan for each of --curve-gammas (its per-head budget
    rule, at each of --curve-min-budgets and proxy groups): (density, mass recall) per head.
One JSON per (text, length) goes to --out (named <text>-<length><tag>.json); eval/report.py
turns them into tables and plots.
"""
import argparse
import itertools
import pathlib
import time

import numpy as np
import torch

import common
import estimators as est

DEFAULT_LENGTHS = [4096, 8192]
DEFAULT_GAMMAS = [0.90, 0.95]
DEFAULT_MIN_BUDGETS = [2048, 512]  # the library's default (2048 tokens) and a smaller floor
DEFAULT_BLOCK_SIZES = [128]
DEFAULT_XATTN_STRIDES = [8, 16]
# Selection curves (--curves): the estimators' cumulative thresholds, ProxyAttn's gammas, and
# ProxyAttn's floors (the library default, and one block so that only gamma limits the budget).
DEFAULT_CURVE_THRESHOLDS = [0.5, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99]
DEFAULT_CURVE_GAMMAS = [0.8, 0.85, 0.9, 0.95, 0.98]
DEFAULT_CURVE_MIN_BUDGETS = [2048, 128]
PROXY_STRIDE = 4  # ProxyAttn's estimation stride (the library default), for the ablations
CAPTURE_NAME = "proxyattn_eval_capture"
DIGITS = 6  # significant digits kept in the JSON


# ---- capture -------------------------------------------------------------------------------
class _CaptureDone(Exception):
    """Raised after the last layer in Capture.keep: the layers above it need not run."""


class Capture:
    """A transformers attention function that stores the post-RoPE query/key/value ([N, H, d]
    float32 tensors of batch row 0) of the layers in `keep` (all if None) and computes SDPA
    attention; with `keep`, the forward pass stops after the last layer kept."""

    def __init__(self, keep=None):
        self.keep, self.layers, self.scaling = keep, {}, {}

    def __call__(self, module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        if self.keep is None or module.layer_idx in self.keep:
            self.layers[module.layer_idx] = tuple(t[0].transpose(0, 1).contiguous().float()
                                                  for t in (query, key, value))
            # the softmax scale the layer uses: its own, or SDPA's default 1 / sqrt(d)
            self.scaling[module.layer_idx] = scaling if scaling is not None else query.shape[-1] ** -0.5
            if self.keep is not None and module.layer_idx == max(self.keep):
                raise _CaptureDone
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout,
                                      **kwargs)

    def register(self):
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

        AttentionInterface.register(CAPTURE_NAME, self)
        AttentionMaskInterface.register(CAPTURE_NAME, sdpa_mask)


def capture_qkv(model, ids, keep=None):
    cap = Capture(keep)
    cap.register()
    model.set_attn_implementation(CAPTURE_NAME)
    with torch.no_grad():
        try:
            model.model(torch.tensor([ids], device=model.device))  # the decoder only: no [N, vocab] logits
        except _CaptureDone:
            pass
    return cap


# ---- metrics ---------------------------------------------------------------------------------
def rounded(x):
    """Floats (or arrays of them) to DIGITS significant digits for the JSON."""
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim == 0:
        return float(f"{float(arr):.{DIGITS}g}")
    return [float(f"{v:.{DIGITS}g}") for v in arr.ravel()]


def per_head_error(out_s, out_d):
    """||O_s - O_d|| / ||O_d|| per head ([N, H, d] arrays) and over all heads."""
    diff = (out_s - out_d).astype(np.float64)
    ref = out_d.astype(np.float64)
    per = np.sqrt((diff ** 2).sum((0, 2)) / (ref ** 2).sum((0, 2)))
    return per, float(np.sqrt((diff ** 2).sum() / (ref ** 2).sum()))


def group_of_head(hq, hkv, g):
    """Proxy group of every Q head (ALGORITHM.md step 1)."""
    return [est.kv_head_of(h, hq, hkv) // (hkv // g) for h in range(hq)]


def estimator_rankings(q, k, block, scale, strides):
    """{name: [Hq score matrices]} of the competing estimators, and FlexPrefill's choices."""
    scores = {"meanpool": est.meanpool_scores(q, k, block, scale), "vslash": est.vslash_scores(q, k, block, scale)}
    choice, dist = est.flexprefill_choice(q, k, block, scale)
    scores["flexprefill"] = [scores["meanpool"][h] if c else scores["vslash"][h] for h, c in enumerate(choice)]
    for s in strides:
        scores[f"xattn_s{s}"] = est.xattention_scores(q, k, block, scale, s)
    for pool in ("max", "sum"):
        scores[f"tok{pool}_perhead"] = est.strided_token_scores(q, k, block, scale, PROXY_STRIDE, pool)
    return scores, {"query_aware": [bool(c) for c in choice], "js_distance": rounded(dist)}


def selection_curves(q, k, block, scale, mass_np, scores, orders, cums, curves):
    """(density, recall) per head of every estimator under its cumulative threshold rule, and
    of ProxyAttn's own plans (ALGORITHM.md budget rule) over a sweep of gamma."""
    import proxyattn

    n_tok, hq, _ = q.shape
    hkv, nb = k.shape[1], n_tok // block
    causal_pairs = nb * (nb + 1) // 2
    out = {"thresholds": {}, "proxyattn": {}}
    for name, sc in scores.items():
        out["thresholds"][name] = {}
        for tau in curves["thresholds"]:
            counts = [est.threshold_counts(sc[h], orders[name][h], tau) for h in range(hq)]
            out["thresholds"][name][f"{tau:g}"] = {
                "density": rounded([c.sum() / causal_pairs for c in counts]),
                "recall": rounded([est.recall_at_counts(cums[name][h], counts[h], n_tok) for h in range(hq)])}
    qn, kn = q.numpy()[None], k.numpy()[None]
    for mb, g in itertools.product(curves["min_budgets"], curves["groups"]):
        points = out["proxyattn"][f"mb{mb}_p{g}"] = {}
        groups = group_of_head(hq, hkv, g)
        for gamma in curves["gammas"]:
            plan = proxyattn.estimate(qn, kn, softmax_scale=scale, block_size=block, min_budget_tokens=mb,
                                      gamma=gamma, num_proxy_groups=g)
            order, count = plan.index()
            porders = est.proxy_orders(order, g, nb)
            points[f"{gamma:g}"] = {
                "density": rounded(plan.heads()["density"][0]),
                "recall": rounded([est.recall_at_counts(est.cumulative_mass(mass_np[h], porders[groups[h]]),
                                                        count[:, h], n_tok) for h in range(hq)])}
    return out


def layer_measurements(q, k, v, scale, settings, strides, curves=None):
    """Every number of one layer: {setting key: {...per head...}} plus per-block-size extras
    (with `curves`, a dict of the sweep's values, the selection curves too)."""
    import proxyattn

    n_tok, hq, _ = q.shape
    hkv = k.shape[1]
    qn, kn, vn = (t.numpy()[None] for t in (q, k, v))
    out_d, lse_d = proxyattn.dense_attention(qn, kn, vn, softmax_scale=scale, return_lse=True)
    out_d, lse_d = out_d[0], lse_d[0]
    result, extras = {}, {}
    for block in sorted({s["block_size"] for s in settings}):
        mass, lse_ref = est.dense_block_mass(q, k, block, scale)
        mass_np = mass.numpy()
        scores, choice = estimator_rankings(q, k, block, scale, strides)
        scores["oracle"] = est.oracle_scores(mass)
        orders = {name: [est.rank_rows(sc[h]) for h in range(hq)] for name, sc in scores.items()}
        cums = {name: [est.cumulative_mass(mass_np[h], orders[name][h]) for h in range(hq)] for name in scores}
        extras[block] = {"flexprefill": choice,
                         "lse_check_max_abs": rounded(np.abs(lse_ref.numpy() - lse_d).max())}
        if curves:
            extras[block]["curves"] = selection_curves(q, k, block, scale, mass_np, scores, orders, cums, curves)
        for cfg in (s for s in settings if s["block_size"] == block):
            t0 = time.perf_counter()
            plan = proxyattn.estimate(qn, kn, softmax_scale=scale, **cfg)
            out_s, lse_s = proxyattn.attend(plan, qn, kn, vn, return_lse=True)
            seconds = time.perf_counter() - t0
            heads = plan.heads()
            order, count = plan.index()
            nb = n_tok // block
            g = cfg["num_proxy_groups"]
            porders = est.proxy_orders(order, g, nb)
            groups = group_of_head(hq, hkv, g)
            recall_lse = np.exp(lse_s[0].astype(np.float64) - lse_d.astype(np.float64)).mean(1)
            err, err_all = per_head_error(out_s[0], out_d)
            rank_recall = {"proxyattn": [est.recall_at_counts(est.cumulative_mass(mass_np[h], porders[groups[h]]),
                                                              count[:, h], n_tok) for h in range(hq)]}
            for name, cum in cums.items():
                rank_recall[name] = [est.recall_at_counts(cum[h], count[:, h], n_tok) for h in range(hq)]
            result[setting_key(cfg)] = {
                "config": cfg, "density": rounded(heads["density"][0]), "budget_blocks": heads["budget_blocks"][0].tolist(),
                "needed_blocks": heads["needed_blocks"][0].tolist(), "recall": rounded(recall_lse),
                "error": rounded(err), "error_all": rounded(err_all), "layer_density": rounded(plan.density),
                "ranking_recall": {name: rounded(r) for name, r in rank_recall.items()},
                "seconds_estimate_attend": rounded(seconds)}
    return result, extras


def setting_key(cfg):
    return f"b{cfg['block_size']}_mb{cfg['min_budget_tokens']}_g{cfg['gamma']:.2f}_p{cfg['num_proxy_groups']}"


def proxy_groups(groups, hkv):
    """The proxy-group counts to measure: `groups` (--groups), or 1 and Hkv."""
    return sorted({1, hkv} if groups is None else set(groups))


def settings_grid(args, hkv):
    groups = proxy_groups(args.groups, hkv)
    return [dict(block_size=b, min_budget_tokens=mb, gamma=gm, num_proxy_groups=g)
            for b, mb, gm, g in itertools.product(args.block_sizes, args.min_budgets, args.gammas, groups)]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", type=pathlib.Path, required=True, help="the shared corpus folder")
    ap.add_argument("--model", type=pathlib.Path, default=common.default_model_dir(common.DEFAULT_CACHE),
                    help="model folder written by acquire.py")
    ap.add_argument("--out", type=pathlib.Path, required=True, help="folder for the result JSON files")
    ap.add_argument("--texts", nargs="+", default=list(common.TEXTS), choices=list(common.TEXTS))
    ap.add_argument("--lengths", nargs="+", type=int, default=DEFAULT_LENGTHS)
    ap.add_argument("--gammas", nargs="+", type=float, default=DEFAULT_GAMMAS)
    ap.add_argument("--groups", nargs="+", type=int, help="proxy groups g (default: 1 and Hkv)")
    ap.add_argument("--min-budgets", nargs="+", type=int, default=DEFAULT_MIN_BUDGETS)
    ap.add_argument("--block-sizes", nargs="+", type=int, default=DEFAULT_BLOCK_SIZES)
    ap.add_argument("--xattn-strides", nargs="+", type=int, default=DEFAULT_XATTN_STRIDES)
    ap.add_argument("--layers", nargs="+", type=int, help="only these layers (default: all)")
    ap.add_argument("--threads", type=int, default=0, help="CPU threads (0: all cores)")
    ap.add_argument("--tag", default="", help="suffix of the result file names (e.g. -b64)")
    ap.add_argument("--curves", action="store_true",
                    help="also the selection curves: every method with its own rule, swept")
    ap.add_argument("--curve-thresholds", nargs="+", type=float, default=DEFAULT_CURVE_THRESHOLDS,
                    help="the estimators' cumulative-score thresholds")
    ap.add_argument("--curve-gammas", nargs="+", type=float, default=DEFAULT_CURVE_GAMMAS)
    ap.add_argument("--curve-min-budgets", nargs="+", type=int, default=DEFAULT_CURVE_MIN_BUDGETS)
    args = ap.parse_args()

    common.set_threads(args.threads)
    model, tokenizer = common.load_model(args.model)
    cfg = model.config
    hq, hkv = cfg.num_attention_heads, cfg.num_key_value_heads
    settings = settings_grid(args, hkv)
    curves = dict(thresholds=args.curve_thresholds, gammas=args.curve_gammas, min_budgets=args.curve_min_budgets,
                  groups=sorted({s["num_proxy_groups"] for s in settings})) if args.curves else None
    for name, n_tok in itertools.product(args.texts, args.lengths):
        if any(n_tok % b for b in args.block_sizes):
            raise SystemExit(f"length {n_tok} must be a multiple of every block size {args.block_sizes}")
        t0 = time.perf_counter()
        ids = common.token_prefix(tokenizer, common.read_text(args.corpus, name), n_tok)
        cap = capture_qkv(model, ids, set(args.layers) if args.layers else None)
        t_capture = time.perf_counter() - t0
        layers = sorted(cap.layers)
        doc = {"model": common.model_label(args.model), "model_dir_name": args.model.name, "text": name,
               "text_file": common.TEXTS[name], "tokens": n_tok, "num_q_heads": hq, "num_kv_heads": hkv,
               "head_dim": cfg.hidden_size // hq, "settings": [setting_key(s) for s in settings],
               "xattn_strides": args.xattn_strides, "flexprefill_tau": est.FLEXPREFILL_TAU,
               "environment": common.environment(), "seconds_capture": rounded(t_capture), "curves": curves,
               "layers": {}}
        for layer in layers:
            t1 = time.perf_counter()
            q, k, v = cap.layers[layer]
            scale = cap.scaling[layer]
            res, extras = layer_measurements(q, k, v, float(scale), settings, args.xattn_strides, curves)
            doc["layers"][str(layer)] = {"settings": res, "per_block_size": {str(b): e for b, e in extras.items()},
                                         "seconds": rounded(time.perf_counter() - t1)}
            first = res[setting_key(settings[-1])]
            print(f"{name} N={n_tok} layer {layer:2d}: {time.perf_counter() - t1:5.1f} s; {setting_key(settings[-1])}: "
                  f"density {first['layer_density']:.3f}, recall {np.mean(first['recall']):.4f}, "
                  f"error {first['error_all']:.3e}", flush=True)
        common.write_json(args.out / f"{name}-{n_tok}{args.tag}.json", doc, compact=True)


if __name__ == "__main__":
    main()
