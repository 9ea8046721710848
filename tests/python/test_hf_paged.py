"""attn_implementation="paged|proxyattn" in transformers' continuous-batching engine
(model.generate_batch), on the CPU with a tiny random 2-layer Qwen2 (head_dim 64): which
sequences of each forward run ProxyAttn and which the engine's paged SDPA, the rows of routed
chunks against a one-shot prefill, and the estimation states' lifetime."""
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import contextlib  # noqa: E402
import gc  # noqa: E402

import proxyattn  # noqa: E402
import proxyattn.hf  # noqa: E402
from proxyattn import _hf_paged  # noqa: E402

BLOCK = 64  # ProxyAttn's block_size in these tests, and the engine's page size
CHUNK = 200  # the engine's max_batch_tokens: chunks that start inside a block
VOCAB = 512
SPARSE = dict(gamma=0.5, block_size=BLOCK, min_budget_tokens=BLOCK, dense_below=2 * BLOCK, anchor_blocks=0)
FULL_BUDGET = dict(gamma=1.0, block_size=BLOCK, min_budget_tokens=1 << 20, dense_below=2 * BLOCK)
MEMORY_BYTES = 8 << 30  # what the engine is told the host has


@pytest.fixture(autouse=True)
def host_memory(monkeypatch):
    """The engine sizes its cache from the device's memory; on the CPU it asks psutil, which
    the test venv lacks (it then reports 0 bytes and refuses every cache)."""
    from transformers.generation.continuous_batching import cache

    _hf_paged._warned.clear()
    if torch.cuda.is_available():
        return
    monkeypatch.setattr(cache, "get_device_and_memory_breakdown",
                        lambda: (torch.device("cpu"), MEMORY_BYTES, 0, 0))


def tiny_qwen2():
    config = transformers.Qwen2Config(vocab_size=VOCAB, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, head_dim=64,
                                      max_position_embeddings=4096)
    torch.manual_seed(0)
    return transformers.Qwen2ForCausalLM(config).eval()


def prompts(*lengths):
    generator = torch.Generator().manual_seed(sum(lengths))
    return [torch.randint(0, VOCAB, (n,), generator=generator).tolist() for n in lengths]


def generate_batch(model, inputs, attn_implementation, max_new_tokens=3, num_blocks=64):
    model.set_attn_implementation(attn_implementation)
    config = transformers.GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=-1,
                                           pad_token_id=0)
    cb = transformers.ContinuousBatchingConfig(block_size=BLOCK, num_blocks=num_blocks, max_batch_tokens=CHUNK)
    with torch.no_grad():
        out = model.generate_batch(inputs, generation_config=config, continuous_batching_config=cb)
    return [result.generated_tokens for result in out.values()]


@contextlib.contextmanager
def recording():
    """Records every call of the paged function on layer 0: the lengths of the forward, the
    sequences routed to ProxyAttn (with and without the state) and to the stock SDPA, q/k/v and
    the output, and which requests the layer's state holds after the call."""
    calls = []
    originals = {name: getattr(_hf_paged, name) for name in ("_proxy_with_state", "_proxy_gathered", "_stock")}
    current = {}

    def counting(name):
        def run(*args):
            sequences = next(a for a in args if isinstance(a, list))
            current.setdefault(name, []).extend(sequences)
            return originals[name](*args)
        return run

    def recorder(module, query, key, value, attention_mask, **kwargs):
        current.clear()
        out, _ = proxyattn.hf.paged_attention_forward(module, query, key, value, attention_mask, **kwargs)
        if module.layer_idx == 0:
            cache = kwargs["cache"]
            calls.append(dict(cu_q=kwargs["cu_seq_lens_q"].tolist(), cu_k=kwargs["cu_seq_lens_k"].tolist(),
                              state=current.get("_proxy_with_state", []), gathered=current.get("_proxy_gathered", []),
                              stock=current.get("_stock", []), q=query.clone(), k=key.clone(), v=value.clone(),
                              out=out.clone(), scaling=module.scaling,
                              held=set(_hf_paged.states_of(cache).proxied.get(0, {})),
                              live=set(cache.group_cache_managers[0].block_table)))
        return out, None

    for name in originals:
        setattr(_hf_paged, name, counting(name))
    transformers.AttentionInterface.register(_hf_paged.NAME, recorder)
    try:
        yield calls
    finally:
        for name, original in originals.items():
            setattr(_hf_paged, name, original)
        transformers.AttentionInterface.register(_hf_paged.NAME, proxyattn.hf.paged_attention_forward)


def lengths(call, s):
    return call["cu_q"][s + 1] - call["cu_q"][s], call["cu_k"][s + 1] - call["cu_k"][s]


def test_enable_registers_the_paged_name(tmp_path):
    proxyattn.hf.enable(**SPARSE)
    assert transformers.AttentionInterface._global_mapping["paged|proxyattn"] is proxyattn.hf.paged_attention_forward
    tiny_qwen2().save_pretrained(tmp_path)
    model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="paged|proxyattn")
    assert model.config._attn_implementation == "paged|proxyattn"


def test_mixed_batch_routes_long_prefill_chunks_to_proxyattn():
    """Three long prompts and a short one in flight together, chunks of CHUNK tokens: every
    prefill chunk of at least a block of queries and dense_below keys runs ProxyAttn, every
    decode step and short chunk the stock SDPA, some forwards hold both; with a budget covering
    every block the answers are the stock engine's."""
    proxyattn.hf.enable(**FULL_BUDGET)
    model, inputs = tiny_qwen2(), prompts(700, 40, 300, 450)
    stock = generate_batch(model, inputs, "paged|sdpa")
    with recording() as calls, pytest.warns(UserWarning, match="decode steps") as caught:
        routed = generate_batch(model, inputs, "paged|proxyattn")
    assert routed == stock
    assert len([w for w in caught if "decode steps" in str(w.message)]) == 1
    mixed = 0
    for call in calls:
        proxy = call["state"] + call["gathered"]
        assert sorted(proxy + call["stock"]) == [s for s in range(len(call["cu_q"]) - 1) if lengths(call, s)[0]]
        for s in proxy:
            q_len, kv_len = lengths(call, s)
            assert q_len >= BLOCK and kv_len >= FULL_BUDGET["dense_below"]
        for s in call["stock"]:
            q_len, kv_len = lengths(call, s)
            assert q_len < BLOCK or kv_len < FULL_BUDGET["dense_below"]
        mixed += bool(proxy) and any(lengths(call, s)[0] == 1 for s in call["stock"])
    assert mixed > 0  # a prefill chunk and a decode step in the same forward
    assert sum(len(c["state"]) for c in calls) > 0
    # A chunk runs over the gathered K/V only after its request's first chunk ran the stock path
    # (here the 300-token prompt's first chunk of 100 tokens, under dense_below keys).
    for call in calls:
        assert all(lengths(call, s)[1] > lengths(call, s)[0] for s in call["gathered"])


def test_routed_chunks_get_the_rows_of_a_one_shot_prefill():
    """A 700-token prompt in chunks of 200 (starting inside blocks): each routed chunk's output
    on layer 0 equals the non-paged proxyattn.attention of the prompt cut at the chunk's end,
    which the chunk gets from the layer's estimation state."""
    proxyattn.hf.enable(**SPARSE)
    with recording() as calls:
        generate_batch(tiny_qwen2(), prompts(700), "paged|proxyattn", max_new_tokens=1)
    prefill = [c for c in calls if c["cu_q"][-1] > 1]
    q, k, v = (torch.cat([c[name][0] for c in prefill], dim=1).transpose(0, 1) for name in ("q", "k", "v"))
    compared = 0
    for call in prefill:
        q_len, kv_len = lengths(call, 0)
        if not call["state"]:
            continue
        cut = [t[:kv_len][None] for t in (q, k, v)]
        reference = proxyattn.attention(*cut, settings=proxyattn.Settings(**SPARSE), softmax_scale=call["scaling"])
        dense = proxyattn.dense_attention(*cut, softmax_scale=call["scaling"])
        rows = call["out"][0]
        assert torch.allclose(rows, reference[0, kv_len - q_len:], atol=1e-5, rtol=1e-4)
        dense_rows = dense[0, kv_len - q_len:]
        compared += ((rows - dense_rows).norm() / dense_rows.norm()).item() > 1e-3  # sparse rows, not dense ones
    assert compared >= 2


def test_state_follows_the_requests_and_the_cache():
    """A request's entry in the layer's state goes when the engine frees its blocks (the
    300-token prompt finishes while the 700-token one is still in prefill), and the states go
    with the cache when the engine stops. dense_below of a block: every chunk of both prompts
    (the first of the 700-token one is 100 tokens) goes through the state."""
    proxyattn.hf.enable(**dict(SPARSE, dense_below=BLOCK))
    with recording() as calls:
        generate_batch(tiny_qwen2(), prompts(300, 700), "paged|proxyattn", max_new_tokens=2)
    for call in calls:
        assert call["held"] <= call["live"] and not call["gathered"]
    held = [call["held"] for call in calls]
    first = next(i for i, h in enumerate(held) if "req_0" in h)
    assert any("req_0" not in h and "req_1" in h for h in held[first:])
    gc.collect()
    assert len(_hf_paged._cache_states) == 0


def test_unsupported_chunks_run_the_stock_path_with_one_warning(monkeypatch):
    def unsupported(*args, **kwargs):
        raise proxyattn.ProxyAttnUnsupported("PA_STATUS_UNSUPPORTED: a case the test declares unsupported")

    proxyattn.hf.enable(**SPARSE)
    model, inputs = tiny_qwen2(), prompts(500, 30)
    stock = generate_batch(model, inputs, "paged|sdpa")
    monkeypatch.setattr(_hf_paged._api, "attention_with_kvcache", unsupported)
    with pytest.warns(UserWarning) as caught:
        fallback = generate_batch(model, inputs, "paged|proxyattn")
    assert fallback == stock
    assert len([w for w in caught if "declares unsupported" in str(w.message)]) == 1


def test_dense_layers_and_short_prompts_run_the_stock_path():
    proxyattn.hf.enable(dense_layers=[0, 1], **SPARSE)
    model, inputs = tiny_qwen2(), prompts(500, 30)
    stock = generate_batch(model, inputs, "paged|sdpa")
    with recording() as calls, pytest.warns(UserWarning, match="dense_layers"):
        assert generate_batch(model, inputs, "paged|proxyattn") == stock
    assert all(not c["state"] and not c["gathered"] for c in calls)


def test_without_the_engine_it_is_the_non_paged_function():
    """model.generate on a model loaded with the paged name runs "proxyattn": ProxyAttn prefill."""
    proxyattn.hf.enable(**FULL_BUDGET)
    model = tiny_qwen2()
    ids = torch.tensor(prompts(300))
    with torch.no_grad():
        model.set_attn_implementation("sdpa")
        dense = model.generate(ids, max_new_tokens=3, do_sample=False)
        model.set_attn_implementation("paged|proxyattn")
        paged = model.generate(ids, max_new_tokens=3, do_sample=False)
    assert torch.equal(paged, dense)


@pytest.mark.gpu
def test_cuda_generate_batch_routes_to_the_library_and_matches_stock():
    """bf16 on CUDA: with a budget covering every block the answers are the stock engine's, and
    ProxyAttn (not its fallback) ran the long chunks."""
    proxyattn.hf.enable(**dict(FULL_BUDGET, block_size=128, dense_below=256))
    model, inputs = tiny_qwen2().to("cuda", torch.bfloat16), prompts(1500, 40, 700)
    stock = generate_batch(model, inputs, "paged|sdpa")
    with recording() as calls, pytest.warns(UserWarning) as caught:
        routed = generate_batch(model, inputs, "paged|proxyattn")
    assert not [w for w in caught if "instead" in str(w.message)]
    assert sum(len(c["state"]) + len(c["gathered"]) for c in calls) > 0
    assert routed == stock


@pytest.mark.gpu
def test_cuda_real_model_needle_answer_matches_stock():
    """Qwen2.5-Coder-0.5B (where eval/acquire.py put it): an 8K needle prompt through
    generate_batch gives the stock engine's answer with the default sparse setting."""
    import os
    import pathlib

    model_dir = pathlib.Path(os.environ.get("PROXYATTN_CACHE", "~/.cache/proxyattn")).expanduser() / \
        "qwen2.5-coder-0.5b-hf"
    if not (model_dir / "config.json").exists():
        pytest.skip(f"{model_dir}: no model weights")
    proxyattn.hf.enable(gamma=0.95, num_proxy_groups=2)
    tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16).to("cuda").eval()
    filler = " ".join(f"Sentence {i} says nothing." for i in range(600))
    text = f"{filler} The secret number is 4818273. {filler}\nWhat is the secret number? The secret number is"
    ids = tokenizer(text)["input_ids"]
    answers = {impl: generate_batch(model, [ids], impl, max_new_tokens=8, num_blocks=4 * len(ids) // BLOCK)
               for impl in ("paged|sdpa", "paged|proxyattn")}
    assert answers["paged|proxyattn"] == answers["paged|sdpa"]
