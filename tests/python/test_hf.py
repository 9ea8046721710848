"""transformers integration: attn_implementation="proxyattn" on a real model config with
small random weights, end to end (prefill and generate)."""
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import contextlib  # noqa: E402

import proxyattn.hf  # noqa: E402


@contextlib.contextmanager
def counting_proxy_calls():
    """Counts the calls of proxyattn.attention the integration makes, in calls["proxy"]."""
    calls = {"proxy": 0}
    original = proxyattn.hf._api.attention

    def counting(*args, **kwargs):
        calls["proxy"] += 1
        return original(*args, **kwargs)

    proxyattn.hf._api.attention = counting
    try:
        yield calls
    finally:
        proxyattn.hf._api.attention = original


def tiny_llama(attn_implementation):
    config = transformers.LlamaConfig(vocab_size=512, hidden_size=256, intermediate_size=512,
                                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                      max_position_embeddings=4096)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).eval()
    model.config._attn_implementation = attn_implementation  # shared by every layer
    return model


def test_prefill_matches_dense_when_budget_covers_everything():
    proxyattn.hf.enable(gamma=1.0, block_size=64, min_budget_tokens=1 << 20, dense_below=64)
    ids = torch.randint(0, 512, (1, 700), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        dense = tiny_llama("sdpa")(ids).logits
        sparse = tiny_llama("proxyattn")(ids).logits
    assert ((sparse - dense).norm() / dense.norm()).item() < 1e-4


def test_generate_runs_sparse_prefill_then_dense_decoding():
    proxyattn.hf.enable(gamma=0.9, block_size=64, min_budget_tokens=128, dense_below=256)
    ids = torch.randint(0, 512, (1, 600), generator=torch.Generator().manual_seed(2))
    with counting_proxy_calls() as calls, torch.no_grad():
        out = tiny_llama("proxyattn").generate(ids, max_new_tokens=5, do_sample=False)
    assert out.shape == (1, 605)
    assert calls["proxy"] == 2  # one prefill per layer; the 5 decoding steps ran dense


def test_from_pretrained_accepts_the_name(tmp_path):
    proxyattn.hf.enable(gamma=0.95)
    tiny_llama("sdpa").save_pretrained(tmp_path)
    model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="proxyattn")
    assert model.config._attn_implementation == "proxyattn"


def test_dense_layers_run_sdpa():
    """dense_layers=[0, 1] makes every layer dense: the logits equal SDPA's even with a sparse
    setting; dense_layers=[0] leaves one layer (1) on ProxyAttn."""
    sparse = dict(gamma=0.5, block_size=64, min_budget_tokens=64, dense_below=64)
    ids = torch.randint(0, 512, (1, 700), generator=torch.Generator().manual_seed(3))
    with counting_proxy_calls() as calls, torch.no_grad():
        dense = tiny_llama("sdpa")(ids).logits
        proxyattn.hf.enable(dense_layers=[0, 1], **sparse)
        all_dense = tiny_llama("proxyattn")(ids).logits
        assert calls["proxy"] == 0
        proxyattn.hf.enable(dense_layers=[0], **sparse)
        tiny_llama("proxyattn")(ids)
        assert calls["proxy"] == 1
    assert ((all_dense - dense).norm() / dense.norm()).item() < 1e-5
    with pytest.raises(ValueError, match="dense_layers"):
        proxyattn.hf.enable(dense_layers=[-1])


@pytest.mark.gpu
def test_cuda_bf16_prefill_matches_dense_and_generates():
    """The GPU path of the integration (bf16 model on CUDA, the library's GPU kernels): with a
    budget covering every block the logits are SDPA's up to bf16 rounding, and generate runs
    the sparse prefill in every layer, then decodes."""
    proxyattn.hf.enable(gamma=1.0, block_size=128, min_budget_tokens=1 << 20, dense_below=128)
    ids = torch.randint(0, 512, (1, 1000), generator=torch.Generator().manual_seed(4)).cuda()
    with torch.no_grad():
        dense = tiny_llama("sdpa").to("cuda", torch.bfloat16)(ids).logits.float()
        with counting_proxy_calls() as calls:
            sparse = tiny_llama("proxyattn").to("cuda", torch.bfloat16)(ids).logits.float()
        assert calls["proxy"] == 2
        assert ((sparse - dense).norm() / dense.norm()).item() < 2e-2
        proxyattn.hf.enable(gamma=0.9, block_size=128, min_budget_tokens=256, dense_below=256)
        with counting_proxy_calls() as calls:
            out = tiny_llama("proxyattn").to("cuda", torch.bfloat16).generate(ids, max_new_tokens=4, do_sample=False)
    assert out.shape == (1, 1004) and calls["proxy"] == 2


def test_unsupported_calls_fall_back_to_sdpa_with_one_warning(monkeypatch):
    """What the library cannot run (ProxyAttnUnsupported, e.g. head_dim 96 on a GPU) runs
    transformers' SDPA, with one warning per reason; the logits are SDPA's."""
    def unsupported(*args, **kwargs):
        raise proxyattn.ProxyAttnUnsupported("PA_STATUS_UNSUPPORTED: a case the test declares unsupported")

    proxyattn.hf.enable(gamma=0.5, block_size=64, min_budget_tokens=64, dense_below=64)
    proxyattn.hf._warned.clear()
    ids = torch.randint(0, 512, (1, 300), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        dense = tiny_llama("sdpa")(ids).logits
        monkeypatch.setattr(proxyattn.hf._api, "attention", unsupported)
        with pytest.warns(UserWarning, match="SDPA attention instead: .*declares unsupported") as caught:
            fallback = tiny_llama("proxyattn")(ids).logits
    assert len([w for w in caught if "proxyattn" in str(w.message)]) == 1  # two layers, one warning
    assert torch.equal(fallback, dense)


def test_unsupported_is_a_proxyattn_error():
    """PA_STATUS_UNSUPPORTED from the library raises ProxyAttnUnsupported, a ProxyAttnError."""
    q = torch.zeros(8, 2, 2)  # head_dim 2: the structured-input generator needs >= 4
    k, v = torch.zeros(8, 1, 2), torch.zeros(8, 1, 2)
    with pytest.raises(proxyattn.ProxyAttnUnsupported, match="head_dim = 2") as caught:
        proxyattn._C.synth_generate([0, 8], 1, q, k, v)
    assert isinstance(caught.value, proxyattn.ProxyAttnError)


@pytest.mark.gpu
def test_cuda_float32_model_falls_back_to_sdpa():
    """A float32 model on the GPU (the CUDA estimation takes bf16 and fp16) runs SDPA with a
    warning instead of failing in the middle of a forward."""
    proxyattn.hf.enable(gamma=0.9, block_size=128, min_budget_tokens=256, dense_below=256)
    proxyattn.hf._warned.clear()
    ids = torch.randint(0, 512, (1, 1000), generator=torch.Generator().manual_seed(6)).cuda()
    with torch.no_grad():
        dense = tiny_llama("sdpa").cuda()(ids).logits
        with pytest.warns(UserWarning, match="float32"):
            fallback = tiny_llama("proxyattn").cuda()(ids).logits
    assert torch.allclose(fallback, dense, atol=1e-5, rtol=1e-5)


def test_enable_takes_a_settings_object():
    """enable(settings=...) runs what the same keyword settings run; an invalid one raises at
    enable time (tests/python/test_settings.py checks more)."""
    settings = proxyattn.Settings(gamma=0.5, block_size=64, min_budget_tokens=64, dense_below=64)
    ids = torch.randint(0, 512, (1, 700), generator=torch.Generator().manual_seed(6))
    with torch.no_grad(), counting_proxy_calls() as calls:
        proxyattn.hf.enable(settings=settings)
        with_object = tiny_llama("proxyattn")(ids).logits
        proxyattn.hf.enable(gamma=0.5, block_size=64, min_budget_tokens=64, dense_below=64)
        with_keywords = tiny_llama("proxyattn")(ids).logits
    assert calls["proxy"] == 4 and torch.equal(with_object, with_keywords)
    with pytest.raises(proxyattn.ProxyAttnError, match=r"config\.gamma = 2"):
        proxyattn.hf.enable(settings=settings, gamma=2)
