"""Time to first token of a whole model of a known shape (config.MODELS: Llama-3.1-8B,
Qwen2.5-Coder-0.5B; random bf16 weights, HF transformers), dense attention (SDPA on cuDNN)
against ProxyAttn (proxyattn.hf), with the split between attention and the rest of the model.

Random weights give near-uniform attention, so ProxyAttn's budgets there come out close to
dense. The suite therefore runs two attention inputs: the model's own ("model": its random
q, k, v; says what the machinery costs when nothing is sparse) and "structured": each layer
computes its projections as usual and then attends over the library's structured default
input of the same shape (the density a long real prompt gives is what decides the speed).
"""
import statistics
import time

import torch
from torch.nn.attention import sdpa_kernel

from . import compare
from .config import MODEL_SIZES, MODELS
from .timing import once_ms, warm_up

REPEATS = {32768: 3, 131072: 2}
WARMUP = 1
GAMMA = 0.95


class AttentionTimer:
    """transformers attention functions that time each call with CUDA events and may swap the
    layer's q, k, v for fixed inputs [1, H, N, d] (the "structured" mode)."""

    def __init__(self):
        self.events, self.replacement, self.taken_calls = [], None, 0
        self.first_qk = None  # (query, key) of layer 0's last call, [1, H, N, d]

    def wrap(self, attention_forward, dense_backend=None):
        def timed(module, query, key, value, attention_mask, **kwargs):
            if self.replacement is not None:
                query, key, value = self.replacement
            if getattr(module, "layer_idx", None) == 0:
                self.first_qk = (query, key)
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            if dense_backend is not None:
                with sdpa_kernel(dense_backend):
                    out = attention_forward(module, query, key, value, attention_mask, **kwargs)
            else:
                out = attention_forward(module, query, key, value, attention_mask, **kwargs)
            end.record()
            self.events.append((start, end))
            return out
        return timed

    def take_ms(self):
        """Summed attention time of the calls since the last take (synchronises); their
        number is left in self.taken_calls."""
        torch.cuda.synchronize()
        total = sum(s.elapsed_time(e) for s, e in self.events)
        self.taken_calls = len(self.events)
        self.events = []
        return total


def model_config(name, num_layers):
    """The shape of MODELS[name], with num_layers layers (None: all)."""
    shape = MODELS[name].config
    return {**shape, "num_hidden_layers": num_layers or shape["num_hidden_layers"]}


def build_model(name, num_layers):
    import transformers

    spec = MODELS[name]
    config = getattr(transformers, spec.config_class)(**model_config(name, num_layers),
                                                      max_position_embeddings=2 * max(MODEL_SIZES))
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device("cuda"):
            model = getattr(transformers, spec.model_class)(config).eval()
    finally:
        torch.set_default_dtype(previous)
    return model


def run(sizes, num_layers, name="llama3.1-8b", log=print):
    """Records per N and attention input: dense and ProxyAttn TTFT, attention time, density."""
    import proxyattn.hf
    from torch.nn.attention import SDPBackend
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    t0 = time.time()
    groups = MODELS[name].groups
    settings = proxyattn.Settings(gamma=GAMMA, num_proxy_groups=groups)
    proxyattn.hf.enable(settings=settings)
    timer = AttentionTimer()
    AttentionInterface.register("bench_dense", timer.wrap(sdpa_attention_forward, SDPBackend.CUDNN_ATTENTION))
    AttentionInterface.register("bench_proxyattn", timer.wrap(proxyattn.hf.attention_forward))
    for impl in ("bench_dense", "bench_proxyattn"):
        AttentionMaskInterface.register(impl, sdpa_mask)
    model = build_model(name, num_layers)
    params = sum(p.numel() for p in model.parameters())
    log(f"  model: {name}, {model.config.num_hidden_layers} layers, {params / 1e9:.2f} B parameters, "
        f"built in {time.time() - t0:.0f} s")
    cfg = model.config
    hq, hkv = cfg.num_attention_heads, cfg.num_key_value_heads
    d = getattr(cfg, "head_dim", None) or cfg.hidden_size // hq  # Qwen2's config derives it
    rows = []
    for n in sizes:
        ids = torch.randint(0, cfg.vocab_size, (1, n), device="cuda", generator=torch.Generator("cuda").manual_seed(n))
        q, k, v = compare.structured_input(n, hq, hkv, d)
        structured = tuple(t.transpose(0, 1).contiguous()[None] for t in (q, k, v))  # [1, H, N, d]
        del q, k, v
        for attention_input in ("model", "structured"):
            timer.replacement = structured if attention_input == "structured" else None
            row = {"N": n, "attention_input": attention_input, "gamma": GAMMA}
            for method, impl in (("dense_cudnn", "bench_dense"), ("proxyattn", "bench_proxyattn")):
                model.set_attn_implementation(impl)

                def prefill():
                    with torch.no_grad():
                        return model(ids, logits_to_keep=1).logits

                warm_up(prefill, WARMUP)
                timer.take_ms()  # the warm-up's attention calls
                ttft, attention, calls = [], [], set()
                for _ in range(REPEATS.get(n, 3)):
                    ttft.append(once_ms(prefill))  # one forward, so the timer holds its calls only
                    attention.append(timer.take_ms())
                    calls.add(timer.taken_calls)
                ttft_ms, attn_ms = statistics.median(ttft), statistics.median(attention)
                row[method] = {"ttft_ms": ttft_ms, "ttft_all_ms": ttft, "attention_ms": attn_ms,
                               "attention_all_ms": attention, "rest_ms": ttft_ms - attn_ms,
                               "attention_calls_per_forward": sorted(calls)}
            query, key = (t[0].transpose(0, 1) for t in timer.first_qk)  # [N, H, d] views
            row["density_layer0"] = proxyattn.estimate(query, key, [0, n], settings=settings).density
            timer.first_qk = None
            row["ttft_speedup"] = row["dense_cudnn"]["ttft_ms"] / row["proxyattn"]["ttft_ms"]
            row["attention_speedup"] = row["dense_cudnn"]["attention_ms"] / row["proxyattn"]["attention_ms"]
            rows.append(row)
            log("  model N=%6d %-10s density (layer 0) %.3f | dense TTFT %8.1f ms (attention %8.1f) | ProxyAttn TTFT %8.1f ms "
                "(attention %8.1f) | x%.2f TTFT, x%.2f attention" % (
                    n, attention_input, row["density_layer0"], row["dense_cudnn"]["ttft_ms"],
                    row["dense_cudnn"]["attention_ms"], row["proxyattn"]["ttft_ms"],
                    row["proxyattn"]["attention_ms"], row["ttft_speedup"], row["attention_speedup"]))
        timer.replacement = None
        del structured
        torch.cuda.empty_cache()
    return {"model": name, "config": model_config(name, num_layers), "parameters": params,
            "weights": "random (transformers' init, seed 0), bf16", "dense": "SDPA forced to cuDNN",
            "proxyattn": f"proxyattn.hf, gamma {GAMMA}, g {groups}, other settings default",
            "timing": f"CUDA events, median of {REPEATS} after {WARMUP} warm-up; attention time = median "
                      "over the timed forwards of the summed per-layer attention calls",
            "peak_memory_bytes": torch.cuda.max_memory_allocated(), "results": rows, "wall_s": time.time() - t0}

