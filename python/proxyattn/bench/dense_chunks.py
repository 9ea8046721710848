"""Dense attention of a prefill chunk, the baselines of chunked prefill: q [1, Hq, Lq, d] holds
the last Lq positions of a sequence whose K and V [1, Hkv, Lk, d] it attends to causally
(bottom-right alignment, flash-attn's convention for Lq < Lk).

- cudnn_chunk: cuDNN through SDPA in two calls, the prefix keys [0, Lk - Lq) without a mask
  and the chunk's own keys with the causal mask (there Lq == Lk, so top-left is bottom-right),
  merged by their LSE; SDPA's bottom-right bias has no cuDNN kernel.
- FlexChunk: FlexAttention on the chunk's block mask, built from block lists (no Lq x Lk mask
  is materialised), compiled once per shape.
"""
import torch

from .baselines import Flex


def _cudnn(q, k, v, causal):
    """cuDNN attention with its LSE: out [1, Hq, L, d], lse [1, Hq, L] float32 (natural log)."""
    out, lse = torch.ops.aten._scaled_dot_product_cudnn_attention(q, k, v, None, True, 0.0, causal, False)[:2]
    return out, lse.reshape(out.shape[:3])


def cudnn_chunk(q, k, v):
    """K and V with Hq heads (repeat_kv: cuDNN's aten op takes no GQA)."""
    lq, lk = q.shape[2], k.shape[2]
    own, own_lse = _cudnn(q, k[:, :, lk - lq:], v[:, :, lk - lq:], True)
    if lq == lk:
        return own
    prefix, prefix_lse = _cudnn(q, k[:, :, :lk - lq], v[:, :, :lk - lq], False)
    lse = torch.logaddexp(own_lse, prefix_lse)
    return (own * (own_lse - lse).exp()[..., None] + prefix * (prefix_lse - lse).exp()[..., None]).to(q.dtype)


class FlexChunk(Flex):
    """Compiled FlexAttention with the bottom-right causal block mask of a chunk."""

    def chunk_mask(self, q_len, kv_len, device, block=128):
        """Query block m (positions offset + [m b, (m + 1) b) of the sequence) sees key blocks
        0 .. full_m - 1 whole and full_m .. last_m through the mask function."""
        from torch.nn.attention.flex_attention import BlockMask

        offset = kv_len - q_len
        nqb, nkb = -(-q_len // block), -(-kv_len // block)
        m = torch.arange(nqb, device=device, dtype=torch.int64)
        full = (offset + m * block + 1) // block
        last = (offset + torch.clamp((m + 1) * block, max=q_len) - 1) // block
        partial = last - full + 1
        cols = torch.arange(nkb, device=device, dtype=torch.int64)
        full_idx = cols.expand(nqb, nkb).contiguous()
        partial_idx = torch.clamp(full[:, None] + cols[None], max=nkb - 1)

        def visible(b, h, q_idx, kv_idx):
            return q_idx + offset >= kv_idx

        as_mask = lambda x: x.to(torch.int32)[None, None].contiguous()  # noqa: E731
        return BlockMask.from_kv_blocks(as_mask(partial), as_mask(partial_idx), as_mask(full), as_mask(full_idx),
                                        BLOCK_SIZE=block, mask_mod=visible, seq_lengths=(q_len, kv_len))
