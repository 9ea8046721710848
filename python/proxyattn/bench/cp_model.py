"""bench cp --model: a whole model's prefill over the ranks (proxyattn.distributed.prefill),
the time to the next-token logits per exchange, and with --world 1 the single-process forward
of the same model with attn_implementation "proxyattn" and "sdpa" next to it. The model: a
name of config.MODELS (random bf16 weights: near-uniform attention, so budgets near dense; the
machinery's cost) or a transformers folder (its weights, bf16 on GPUs, float32 on the CPU). The
prompt: --text's tokens repeated to N (a folder with a tokenizer), else random token ids."""
import torch

import proxyattn
import proxyattn.hf
from proxyattn import distributed as pad

from .config import MODELS


def load(name, device):
    """The model (eval mode) and its tokenizer (None for a config.MODELS name)."""
    import transformers

    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if name in MODELS:
        spec = MODELS[name]
        config = getattr(transformers, spec.config_class)(**spec.config, max_position_embeddings=1 << 21)
        torch.manual_seed(0)
        previous = torch.get_default_dtype()
        torch.set_default_dtype(dtype)
        try:
            with device:
                model = getattr(transformers, spec.model_class)(config).eval()
        finally:
            torch.set_default_dtype(previous)
        return model, None
    model = transformers.AutoModelForCausalLM.from_pretrained(name, dtype=dtype).to(device).eval()
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError):
        tokenizer = None
    return model, tokenizer


def prompt(n, vocab, tokenizer, text_file, device):
    """[n] token ids: the text's tokens repeated, or random ids (seeded by n)."""
    if tokenizer is not None and text_file:
        with open(text_file, encoding="utf-8") as f:
            ids = torch.tensor(tokenizer(f.read())["input_ids"])
        return ids.repeat(-(-n // len(ids)))[:n].to(device)
    return torch.randint(0, vocab, (n,), generator=torch.Generator().manual_seed(n)).to(device)


def case(n, args, model, tokenizer, rank, world, device, timed):
    """One N: prefill per exchange (median seconds, peak memory, the next token), and at world
    1 the single-process forwards."""
    settings = proxyattn.Settings(gamma=args.gamma, num_proxy_groups=args.groups)
    head_dim = getattr(model.config, "head_dim", None) or model.config.hidden_size // model.config.num_attention_heads
    block = settings.resolve(head_dim).block_size
    ids = prompt(n, model.config.vocab_size, tokenizer, args.text, device)
    result = {"seq_len": n, "world": world, "rank": rank}
    if world == 1:
        proxyattn.hf.enable(settings=settings)
        previous = model.config._attn_implementation
        for impl in ("proxyattn", "sdpa"):
            model.set_attn_implementation(impl)

            def forward():
                with torch.no_grad():
                    return model(ids[None], logits_to_keep=1).logits[0, -1]

            forward()
            result[f"single_process_{impl}"] = {"total_s": timed(forward), "next_token": int(forward().argmax())}
        model.set_attn_implementation(previous)
    mine = pad.shard(ids, rank, world, block)
    for exchange in args.exchange:
        call = lambda: pad.prefill(model, mine, n, exchange=exchange, settings=settings)  # noqa: E731
        call()  # warm-up
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        total = timed(call)
        result[exchange] = {"total_s": total, "next_token": int(call().argmax()),
                            "peak_bytes": torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None}
        print(f"rank {rank} N={n} model prefill {exchange}: {total * 1e3:.1f} ms", flush=True)
    return result


def describe(model, name, tokenizer, args):
    return {"name": name, "layers": model.config.num_hidden_layers,
            "parameters": sum(p.numel() for p in model.parameters()),
            "weights": "random (transformers' init, seed 0)" if name in MODELS else "the folder's",
            "dtype": str(next(model.parameters()).dtype),
            "prompt": f"{args.text} repeated" if tokenizer is not None and args.text else "random token ids"}

