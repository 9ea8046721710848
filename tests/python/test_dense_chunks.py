"""The chunked-prefill baselines' FlexAttention block mask (python/proxyattn/bench/dense_chunks.py):
its full and partial key blocks of every query block against the token-level bottom-right causal
rule, and attention through it against SDPA's bottom-right causal bias (CPU)."""
import pytest

torch = pytest.importorskip("torch")
from torch.nn.attention.bias import causal_lower_right  # noqa: E402
from torch.nn.attention.flex_attention import flex_attention  # noqa: E402

from proxyattn.bench.dense_chunks import FlexChunk  # noqa: E402

CASES = [(200, 700, 64), (128, 512, 128), (333, 333, 64), (1, 300, 64), (65, 1000, 128), (130, 131, 64)]


def blocks(mask):
    """Per query block: the set of partial and of full key blocks of a BlockMask."""
    def rows(num, idx):
        return [set(idx[0, 0, m, :num[0, 0, m]].tolist()) for m in range(num.shape[2])]
    return rows(mask.kv_num_blocks, mask.kv_indices), rows(mask.full_kv_num_blocks, mask.full_kv_indices)


@pytest.mark.parametrize("q_len, kv_len, block", CASES)
def test_chunk_mask_blocks_follow_the_token_rule(q_len, kv_len, block):
    offset = kv_len - q_len
    partial, full = blocks(FlexChunk.__new__(FlexChunk).chunk_mask(q_len, kv_len, "cpu", block))
    visible = (torch.arange(q_len)[:, None] + offset) >= torch.arange(kv_len)[None]
    for m in range(-(-q_len // block)):
        rows = visible[m * block:(m + 1) * block]
        seen = {n for n in range(-(-kv_len // block)) if rows[:, n * block:(n + 1) * block].any()}
        whole = {n for n in seen if rows[:, n * block:(n + 1) * block].all()}
        # Every visible block listed once; full ones wholly visible (a whole last key block,
        # cut by the sequence's end, may go through the mask function).
        assert partial[m] | full[m] == seen and not partial[m] & full[m], f"query block {m}"
        assert full[m] <= whole and whole - full[m] <= {(kv_len - 1) // block}, f"query block {m}: full blocks"


def test_chunk_mask_attention_equals_sdpa_bottom_right():
    q_len, kv_len = 200, 700
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, 4, q_len, 32, generator=g)
    k, v = (torch.randn(1, 2, kv_len, 32, generator=g) for _ in range(2))
    mask = FlexChunk.__new__(FlexChunk).chunk_mask(q_len, kv_len, "cpu", 64)
    out = flex_attention(q, k, v, block_mask=mask, enable_gqa=True)
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=causal_lower_right(q_len, kv_len),
                                                           enable_gqa=True)
    assert (out - ref).abs().max().item() < 1e-5


@pytest.mark.gpu
@pytest.mark.parametrize("q_len, kv_len", [(1024, 4096), (1000, 1000), (384, 1000)])
def test_cudnn_chunk_equals_sdpa_bottom_right(q_len, kv_len):
    from proxyattn.bench.baselines import repeat_kv
    from proxyattn.bench.dense_chunks import cudnn_chunk

    g = torch.Generator().manual_seed(1)
    q = torch.randn(1, 8, q_len, 128, generator=g).to("cuda", torch.bfloat16)
    k, v = (torch.randn(1, 2, kv_len, 128, generator=g).to("cuda", torch.bfloat16) for _ in range(2))
    out = cudnn_chunk(*repeat_kv(q, k, v))
    ref = torch.nn.functional.scaled_dot_product_attention(q.float(), k.float(), v.float(), enable_gqa=True,
                                                           attn_mask=causal_lower_right(q_len, kv_len))
    assert ((out.float() - ref).norm() / ref.norm()).item() < 1e-2
