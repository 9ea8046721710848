"""The Python API on torch tensors: CPU and CUDA, the custom op under torch.compile, the
caller's stream, CUDA graph capture, and FlexAttention on our exact mask."""
import pytest

torch = pytest.importorskip("torch")

import proxyattn  # noqa: E402

SETTINGS = dict(block_size=64, min_budget_tokens=128, gamma=0.9)


def qkv(b, n, hq, hkv, d, device="cpu", dtype=torch.float32, seed=0):
    g = torch.Generator(device="cpu").manual_seed(seed)
    make = lambda h, s: (torch.randn(b, n, h, d, generator=g) * s).to(device=device, dtype=dtype)  # noqa: E731
    return make(hq, 1.5), make(hkv, 1.5), make(hkv, 1.0)


def sdpa_reference(q, k, v):
    """Dense causal attention in fp32 through torch: [B, N, H, d] layouts, GQA by repeat."""
    group = q.shape[2] // k.shape[2]
    qh, kh, vh = (t.float().transpose(1, 2) for t in (q, k, v))
    kh, vh = kh.repeat_interleave(group, 1), vh.repeat_interleave(group, 1)
    return torch.nn.functional.scaled_dot_product_attention(qh, kh, vh, is_causal=True).transpose(1, 2)


def rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def test_cpu_full_budget_matches_sdpa():
    q, k, v = qkv(2, 500, 4, 2, 64)
    out = proxyattn.attention(q, k, v, block_size=64, gamma=1.0, min_budget_tokens=1 << 20, dense_below=0)
    assert out.shape == q.shape and out.dtype == q.dtype
    assert rel(out, sdpa_reference(q, k, v)) < 1e-5


def test_cpu_matches_flex_attention_on_our_mask():
    """FlexAttention (eager) on plan.to_flex_block_mask() computes attention over exactly
    the kept blocks: an independent check of the sparse output and of the conversion."""
    from torch.nn.attention.flex_attention import flex_attention

    # Gaussian inputs attend diffusely: a low gamma makes it sparse; without anchors, which on
    # such inputs (8 heads a group, 32 anchors) would force most of the 16 blocks
    sparse = dict(SETTINGS, gamma=0.5, anchor_blocks=0)
    q, k, v = qkv(1, 1000, 8, 2, 64, seed=4)
    out = proxyattn.attention(q, k, v, **sparse)
    plan = proxyattn.estimate(q, k, **sparse)
    assert plan.density < 0.9
    qh, kh, vh = (t.transpose(1, 2) for t in (q, k, v))
    ref = flex_attention(qh, kh, vh, block_mask=plan.to_flex_block_mask(0), enable_gqa=True).transpose(1, 2)
    assert rel(out, ref) < 1e-5
    assert rel(out, sdpa_reference(q, k, v)) > 1e-3  # the mask matters on this input


def test_compile_has_no_graph_break():
    q, k, v = qkv(1, 400, 4, 2, 64)

    def f(q, k, v):
        return proxyattn.attention(q, k, v, **SETTINGS) * 2

    compiled = torch.compile(f, fullgraph=True)  # inductor; fullgraph fails on any graph break
    assert torch.equal(compiled(q, k, v), f(q, k, v))


def test_eager_inference_and_the_custom_op_agree():
    """Eager calls autograd does not record skip the custom op; calls it would record go
    through it, and backward says there is no gradient."""
    q, k, v = qkv(1, 400, 4, 2, 64)
    with torch.no_grad():
        direct, direct_lse = proxyattn.attention(q, k, v, return_lse=True, **SETTINGS)
    recorded = [t.clone().requires_grad_() for t in (q, k, v)]
    through_op, op_lse = proxyattn.attention(*recorded, return_lse=True, **SETTINGS)
    assert direct.grad_fn is None and through_op.grad_fn is not None
    assert torch.equal(direct, through_op.detach()) and torch.equal(direct_lse, op_lse.detach())
    with pytest.raises(RuntimeError, match="autograd"):
        through_op.sum().backward()


def test_fake_and_meta_tensors_take_the_op():
    """Shape inference (fake tensors, meta tensors) goes through the op's fake implementation,
    not to the library."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        q, k, v = torch.empty(1, 400, 4, 64), torch.empty(1, 400, 2, 64), torch.empty(1, 400, 2, 64)
        out, lse = proxyattn.attention(q, k, v, return_lse=True, **SETTINGS)
    assert out.shape == (1, 400, 4, 64) and lse.shape == (1, 4, 400)
    meta = [torch.empty(1, 400, h, 64, device="meta") for h in (4, 2, 2)]
    assert proxyattn.attention(*meta, **SETTINGS).device.type == "meta"


def test_a_refused_plan_is_not_made_again(monkeypatch):
    """A plan the library refuses (ProxyAttnUnsupported) is not cached; its key is, so that
    the next call with the same shapes raises the same error without making the plan again."""
    from proxyattn import _api

    made = []

    def refused(*args, **kwargs):
        made.append(args)
        raise proxyattn.ProxyAttnUnsupported("PA_STATUS_UNSUPPORTED: a plan the test refuses")

    proxyattn.clear_plan_cache()
    monkeypatch.setattr(_api, "Plan", refused)
    q, k, v = qkv(1, 400, 4, 2, 64)
    for _ in range(3):
        with pytest.raises(proxyattn.ProxyAttnUnsupported, match="the test refuses"):
            proxyattn.attention(q, k, v, **SETTINGS)
    assert len(made) == 1 and len(_api._PLAN_CACHE) == 0
    proxyattn.clear_plan_cache()
    with pytest.raises(proxyattn.ProxyAttnUnsupported):
        proxyattn.attention(q, k, v, **SETTINGS)
    assert len(made) == 2  # the verdicts go with the plans


@pytest.mark.gpu
def test_cuda_float32_plan_is_refused_when_made():
    """float32 on the GPU: the library refuses the plan itself (pa_plan_create), so no plan
    the GPU cannot run stays in the cache."""
    from proxyattn import _api

    proxyattn.clear_plan_cache()
    q, k, v = qkv(1, 400, 4, 2, 64, device="cuda")
    with pytest.raises(proxyattn.ProxyAttnUnsupported, match="pa_plan_create: float32"):
        proxyattn.attention(q, k, v, **SETTINGS)
    assert len(_api._PLAN_CACHE) == 0 and len(_api._REFUSED) == 1


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cuda_matches_cpu_plan_and_reference(dtype):
    q, k, v = qkv(1, 3000, 8, 2, 128, device="cuda", dtype=dtype, seed=1)
    out = proxyattn.attention(q, k, v, **SETTINGS)
    plan = proxyattn.estimate(q, k, **SETTINGS)
    plan.check()
    cpu_plan = proxyattn.estimate(q.cpu(), k.cpu(), **SETTINGS)
    assert (plan.heads()["budget_blocks"] == cpu_plan.heads()["budget_blocks"]).all()
    # FlexAttention on our exact mask is the independent reference of the sparse output.
    from torch.nn.attention.flex_attention import flex_attention

    mask = plan.to_flex_block_mask(0)
    qh, kh, vh = (t.transpose(1, 2) for t in (q, k, v))
    ref = flex_attention(qh.float(), kh.float(), vh.float(), block_mask=mask, enable_gqa=True).transpose(1, 2)
    assert rel(out, ref) < (2e-2 if dtype == torch.bfloat16 else 4e-3)


@pytest.mark.gpu
def test_cuda_runs_on_current_stream():
    q, k, v = qkv(1, 2048, 4, 1, 128, device="cuda", dtype=torch.bfloat16, seed=2)
    expected = proxyattn.attention(q, k, v, **SETTINGS)
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        out = proxyattn.attention(q, k, v, **SETTINGS)
    stream.synchronize()
    assert torch.equal(out, expected)


@pytest.mark.gpu
def test_cuda_graph_capture():
    q, k, v = qkv(1, 2048, 4, 1, 128, device="cuda", dtype=torch.bfloat16, seed=3)
    expected = proxyattn.attention(q, k, v, **SETTINGS)
    graph = torch.cuda.CUDAGraph()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        proxyattn.attention(q, k, v, **SETTINGS)  # warm-up outside capture
        with torch.cuda.graph(graph, stream=stream):
            out = proxyattn.attention(q, k, v, **SETTINGS)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(out, expected)


@pytest.mark.gpu
def test_cuda_estimate_one_million_tokens():
    """The longest rows (8192 blocks at b = 128) take the largest selection class; the index
    of a 1M-token sequence keeps every invariant and per-head budgets stay in range."""
    n = 1 << 20
    q = torch.randn(n, 32, 128, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(n, 8, 128, device="cuda", dtype=torch.bfloat16)
    plan = proxyattn.estimate(q, k, [0, n])
    plan.check()
    heads = plan.heads()
    nqb = n // 128
    assert ((heads["budget_blocks"] >= 16) & (heads["budget_blocks"] <= nqb)).all()
    assert ((heads["needed_blocks"] >= 1) & (heads["needed_blocks"] <= heads["budget_blocks"])).all()
    assert 0 < plan.density <= 1
