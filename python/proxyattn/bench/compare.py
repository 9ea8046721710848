"""The comparison suite: for each model shape, input and sequence length, dense attention
(cuDNN SDPA, FlashAttention-2 via SDPA, FlexAttention, ours), and for each gamma ProxyAttn's
estimation, sparse attention and whole call, FlexAttention on ProxyAttn's exact mask and the
plain PyTorch estimation; with the density, the per-head budgets and the mass recall.

Inputs: the library's structured default input (docs/design.md) of each shape, or captured
real-model activations (files of post-RoPE q, k, v [N, H, d], see load_activations)."""
import time

import numpy as np
import torch

import proxyattn
from proxyattn import _C

from .baselines import Flex, repeat_kv, sdpa, sdpa_gqa_mode, torch_estimate
from .config import BLOCK_SIZE, SHAPES
from .timing import Rotation, clocks, interleaved_median_ms, median_ms

REPEATS = {8192: 20, 16384: 12, 32768: 6, 65536: 4, 131072: 3, 262144: 2}  # under ~1 s of timing per method
WARMUP = 2
SYNTH_SEED = 1
MASK_PICTURE_N = 32768  # the kept mask of two heads is stored once, at this length (first shape)


def structured_input(n, hq, hkv, d, dtype=torch.bfloat16, device="cuda"):
    """The structured default input, [N, H, d] (bf16 on the GPU unless told), made on the host."""
    q = torch.empty(n, hq, d, dtype=dtype)
    k = torch.empty(n, hkv, d, dtype=dtype)
    v = torch.empty_like(k)
    _C.synth_generate([0, n], SYNTH_SEED, q, k, v)
    return q.to(device), k.to(device), v.to(device)


def load_activations(path):
    """A file written by torch.save of {"q", "k", "v": [N, H, d] tensors (post-RoPE),
    "scale": softmax scale, "source": what they are}; returns bf16 GPU tensors and the rest."""
    doc = torch.load(path, map_location="cpu", weights_only=True)
    q, k, v = (doc[x].to(torch.bfloat16).cuda().contiguous() for x in ("q", "k", "v"))
    return q, k, v, {"scale": float(doc["scale"]), "source": str(doc.get("source", path))}


ELEMENT_BYTES = 2               # bf16
FLEX_MASK_TABLES = 3            # kv_indices, the kept table and its int32 scatter, [Hq, Nqb, Nqb] int32 each
WORKING_BYTES = 6 << 30         # the baselines' temporaries (PyTorch estimation chunks, SDPA workspace)


def fits(n, hq, hkv, d):
    """Whether inputs in both layouts (q, k, v, out), the exact-mask tables and the
    baselines' temporaries fit in free memory."""
    one_layout = ELEMENT_BYTES * n * d * (2 * hq + 2 * hkv)
    flex_mask = FLEX_MASK_TABLES * 4 * hq * (n // BLOCK_SIZE) ** 2
    return 2 * one_layout + flex_mask + WORKING_BYTES < torch.cuda.mem_get_info()[0]


def kept_rows(plan, head):
    """Kept key blocks of each query-block row of one head (for the mask picture)."""
    num, idx = plan.to_flex(0)
    return [idx[head, m, :num[head, m]].tolist() for m in range(num.shape[1])]


class Suite:
    def __init__(self, use_flex=True, use_torch_estimate=True, anchor_blocks="auto", log=print):
        self.flex = Flex() if use_flex else None
        self.anchor_blocks = anchor_blocks
        self.use_torch_estimate = use_torch_estimate
        self.log = log

    def run_cases(self, shape, input_name, q, k, v, groups, scale, gammas, keep_mask=False):
        """One (shape, input, N): dense baselines once, then for each g in groups a case record
        with ProxyAttn and the mask-dependent baselines per gamma (the dense part shared).
        q [N, Hq, d], k/v [N, Hkv, d] bf16 on the GPU."""
        n, hq, d = q.shape
        hkv = k.shape[1]
        reps = REPEATS.get(n, 3)
        dense_flop = 4.0 * d * hq * n * (n + 1) / 2
        mine = Rotation((q, k, v))
        heads_first = Rotation(tuple(t.transpose(0, 1).contiguous()[None] for t in (q, k, v)))  # [1, H, N, d]
        base = {"shape": shape, "input": input_name, "N": n, "num_q_heads": hq, "num_kv_heads": hkv,
                "head_dim": d, "rotated_copies": len(mine), "repeats": reps, "warmup": WARMUP, "dense": {}}
        t0 = time.time()

        def dense_entry(ms, **extra):
            return {"ms": ms, "tflops": dense_flop / ms / 1e9, **extra}

        # Dense attention: every method that takes these inputs, sampled in shuffled rounds
        # (interleaved_median_ms), so that the heat and power state the long calls leave
        # behind fall on all of them alike.
        calls = {}
        for backend in ("cudnn", "fa2"):
            try:
                mode, refusal = sdpa_gqa_mode(backend, *heads_first.sets[0])
                inputs = heads_first if mode == "enable_gqa" else Rotation(repeat_kv(*heads_first.sets[0]))
                calls[backend] = (lambda b=backend, i=inputs, m=mode: sdpa(b, *i.next(), m == "enable_gqa"))
                base["dense"][backend] = {"gqa": mode, **({"gqa_refused": refusal} if refusal else {})}
            except RuntimeError as e:  # the backend refuses these inputs: recorded, the rest stands
                base["dense"][backend] = {"error": str(e).splitlines()[0][:300]}
        causal = None
        if self.flex is not None:
            causal = self.flex.causal_mask(n, q.device)
            calls["flex"] = lambda: self.flex(*heads_first.next(), causal)
            base["dense"]["flex"] = {}
        calls["ours"] = lambda: proxyattn.dense_attention(*mine.next(), softmax_scale=scale)
        base["dense"]["ours"] = {}
        for name, ms in interleaved_median_ms(calls, reps, WARMUP).items():
            base["dense"][name] = dense_entry(ms, **base["dense"][name])
        cudnn = calls.get("cudnn")  # timed again next to each ProxyAttn row
        del calls, causal
        _, dense_lse = proxyattn.dense_attention(q, k, v, softmax_scale=scale, return_lse=True)  # [Hq, N]
        base["dense_s"] = time.time() - t0
        cases = []
        for g in groups:
            cases.append(self._proxy_case(dict(base, g=g, proxyattn=[]), q, k, v, mine, heads_first, cudnn, scale,
                                          gammas, keep_mask and g == groups[0], dense_lse))
        proxyattn.clear_plan_cache()  # the cached plans of this input's shapes: memory for the next
        return cases

    def _proxy_case(self, case, q, k, v, mine, heads_first, cudnn, scale, gammas, keep_mask, dense_lse):
        """The per-gamma rows of one case (its g): our calls timed in the same rounds as cuDNN's
        dense call `cudnn` (None where cuDNN refused these inputs; cudnn_ms, speedup_vs_cudnn);
        speedup_vs_best_dense against the case's dense timings."""
        n, _, d = q.shape
        g, reps = case["g"], case["repeats"]
        best_dense = min(x["ms"] for x in case["dense"].values() if "ms" in x)
        t0 = time.time()
        for gamma in gammas:
            settings = proxyattn.Settings(gamma=gamma, num_proxy_groups=g, softmax_scale=scale,
                                          anchor_blocks=self.anchor_blocks)
            config = settings.resolve(d)
            plan = proxyattn.estimate(q, k, [0, n], settings=settings)
            row = {"gamma": gamma, "anchor_blocks": plan._plan.anchor_blocks, "density": plan.density}
            # Our three calls and cuDNN's dense call, sampled in shuffled rounds: the speedup
            # compares times taken under the same clocks.
            timed = interleaved_median_ms({
                "estimate_ms": lambda: plan._estimate(*mine.next()[:2]),
                "attend_ms": lambda: proxyattn.attend(plan, *mine.next()),
                "total_ms": lambda: proxyattn.attention_varlen(*mine.next(), [0, n], settings=settings),
                **({"cudnn_ms": cudnn} if cudnn else {})}, reps, WARMUP)
            plan._estimate(q, k)
            row.update(timed)
            _, lse = proxyattn.attend(plan, q, k, v, return_lse=True)
            recall = torch.exp(lse - dense_lse).mean(dim=1)  # [Hq]: mean over queries per head
            heads = plan.heads()
            row.update({
                "speedup_vs_cudnn": row.get("cudnn_ms", float("nan")) / row["total_ms"],
                "speedup_vs_best_dense": best_dense / row["total_ms"],
                "attend_tflops_effective": 4.0 * d * plan.stats()["kept_token_pairs"] / row["attend_ms"] / 1e9,
                "estimate_share_of_total": row["estimate_ms"] / row["total_ms"],
                "mass_recall_mean": recall.mean().item(), "mass_recall_min_head": recall.min().item(),
                "head_budget_blocks": heads["budget_blocks"][0].tolist(),
                "head_needed_blocks": heads["needed_blocks"][0].tolist(),
                "head_density": heads["density"][0].tolist()})
            if self.flex is not None:
                t_mask = time.time()
                block_mask = plan.to_flex_block_mask(0, device=q.device)
                torch.cuda.synchronize()
                row["flex_mask_build_s"] = time.time() - t_mask
                row["flex_masked_ms"] = median_ms(lambda: self.flex(*heads_first.next(), block_mask), reps, WARMUP)
                row["speedup_attend_vs_flex_masked"] = row["flex_masked_ms"] / row["attend_ms"]
                del block_mask
            if self.use_torch_estimate:
                try:
                    row["torch_estimate_ms"] = median_ms(lambda: torch_estimate(*mine.next()[:2], config),
                                                         max(2, reps // 2), 1)
                    _, _, needed = torch_estimate(q, k, config)
                    row["torch_estimate_over_ours"] = row["torch_estimate_ms"] / row["estimate_ms"]
                    row["needed_equal_to_torch"] = float(np.mean(needed.cpu().numpy() == heads["needed_blocks"][0]))
                except torch.cuda.OutOfMemoryError as e:
                    row["torch_estimate_error"] = str(e).splitlines()[0][:300]
                    torch.cuda.empty_cache()
            if keep_mask and gamma == gammas[0]:
                density = heads["density"][0]
                picked = [int(np.argmin(density)), int(np.argmax(density))]
                row["kept_mask"] = {"heads": picked, "rows": [kept_rows(plan, h) for h in picked]}
            case["proxyattn"].append(row)
            self.log("  %-12s %-10s N=%6d gamma=%.2f density %.3f | est %7.3f attend %8.3f total %8.3f ms | "
                     "cuDNN %8.3f  FA2 %8s  flex %8s  flex-mask %8s | x%.2f cuDNN | recall %.4f" % (
                         case["shape"], case["input"], n, gamma, row["density"], row["estimate_ms"], row["attend_ms"],
                         row["total_ms"], row.get("cudnn_ms", float("nan")),
                         _fmt(case["dense"].get("fa2")), _fmt(case["dense"].get("flex")),
                         "%.3f" % row["flex_masked_ms"] if "flex_masked_ms" in row else "-",
                         row["speedup_vs_cudnn"], row["mass_recall_mean"]))
        case["clocks_after"] = clocks()
        case["wall_s"] = time.time() - t0  # this g's rows; the shared dense part: dense_s
        return case


def _fmt(entry):
    return "%.3f" % entry["ms"] if entry and "ms" in entry else "-"


def run(sizes, shapes, gammas, activations, use_flex, use_torch_estimate, anchor_blocks="auto",
        activation_groups=(1,), log=print):
    """All cases (each captured input once per g in activation_groups); returns the case records."""
    suite = Suite(use_flex, use_torch_estimate, anchor_blocks, log)
    cases = []
    for shape in shapes:
        hq, hkv, d, g = SHAPES[shape]
        for n in sizes:
            if not fits(n, hq, hkv, d):
                log(f"  {shape} N={n}: skipped, does not fit in free GPU memory")
                cases.append({"shape": shape, "input": "structured", "N": n, "skipped": "GPU memory"})
                continue
            q, k, v = structured_input(n, hq, hkv, d)
            keep = shape == shapes[0] and n == MASK_PICTURE_N
            cases += suite.run_cases(shape, "structured", q, k, v, [g], 1.0 / d ** 0.5, gammas, keep)
            del q, k, v
            torch.cuda.empty_cache()
    for path in activations:
        q, k, v, meta = load_activations(path)
        cases += suite.run_cases("captured", meta["source"], q, k, v, list(activation_groups), meta["scale"], gammas)
        del q, k, v
        torch.cuda.empty_cache()
    return cases
