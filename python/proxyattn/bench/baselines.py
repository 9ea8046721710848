"""What ProxyAttn is measured against, all in PyTorch on tensors [1, H, N, d]:
dense causal attention through SDPA's cuDNN and FlashAttention-2 backends and through
FlexAttention, FlexAttention on ProxyAttn's exact block masks, and ProxyAttn's estimation
written plainly in PyTorch (what a user would write without this library)."""
import math

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from proxyattn import _C

SDPA_BACKENDS = {"cudnn": SDPBackend.CUDNN_ATTENTION, "fa2": SDPBackend.FLASH_ATTENTION}
TORCH_ESTIMATE_CHUNK_BYTES = 2 << 30  # the PyTorch estimation keeps each logit chunk under 2 GiB


def sdpa(backend, q, k, v, gqa):
    """SDPA causal attention on one backend; gqa: K/V with fewer heads (enable_gqa=True)."""
    with sdpa_kernel(SDPA_BACKENDS[backend]):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)


def sdpa_gqa_mode(backend, q, k, v):
    """How a backend serves GQA: ("enable_gqa", None) natively, or ("repeated_kv", its error
    message) where it refuses enable_gqa and K and V must be repeated to Hq heads (repeat_kv)."""
    try:
        sdpa(backend, q, k, v, True)
        return "enable_gqa", None
    except RuntimeError as e:
        return "repeated_kv", str(e).splitlines()[0][:300]


def repeat_kv(q, k, v):
    groups = q.shape[1] // k.shape[1]
    return q, k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)


class Flex:
    """Compiled FlexAttention (one compiled function for every shape and mask)."""

    def __init__(self):
        import torch._dynamo
        from torch.nn.attention.flex_attention import flex_attention

        # One compiled graph per (shape, mask function): the suite's dozen shapes would pass
        # dynamo's default limit of 8 and fall back to the unfused eager path (this process only).
        torch._dynamo.config.cache_size_limit = 64
        self._flex = torch.compile(flex_attention, dynamic=False)

    def causal_mask(self, n, device, block=128):
        """Dense causal BlockMask, built from its block lists (create_block_mask would
        materialise the N x N mask): row m has full blocks 0..m-1 and the partial diagonal."""
        from torch.nn.attention.flex_attention import BlockMask

        nqb = -(-n // block)
        rows = torch.arange(nqb, device=device, dtype=torch.int32)
        full_idx = rows.expand(nqb, nqb).contiguous()[None, None]  # row m uses its first m entries
        partial_idx = torch.zeros(1, 1, nqb, nqb, device=device, dtype=torch.int32)
        partial_idx[..., 0] = rows
        return BlockMask.from_kv_blocks(torch.ones(1, 1, nqb, device=device, dtype=torch.int32), partial_idx,
                                        rows[None, None].contiguous(), full_idx, BLOCK_SIZE=block,
                                        mask_mod=lambda b, h, q_idx, kv_idx: q_idx >= kv_idx, seq_lengths=(n, n))

    def __call__(self, q, k, v, block_mask):
        return self._flex(q, k, v, block_mask=block_mask, enable_gqa=True)


def torch_estimate(q, k, config):
    """ProxyAttn's estimation (ALGORITHM.md steps 2-6) written plainly in PyTorch, absolute
    budget mode. q [N, Hq, d], k [N, Hkv, d] -> (order [g, Nqb, Nqb], count [Nqb, Hq],
    needed [Hq]); order rows put the sink, then the diagonal, then the others by score.
    No anchor blocks (its counts equal the library's at anchor_blocks=0; its needed blocks at
    any setting); config.budget_rule's count (the paper's, or also the ranked rule's)."""
    n, hq, d = q.shape
    hkv = k.shape[1]
    g, block, stride = config.num_proxy_groups, config.block_size, config.stride
    scale = config.softmax_scale if config.softmax_scale > 0 else 1.0 / math.sqrt(d)
    nqb = (n + block - 1) // block
    pb = block // stride
    # Steps 2-3: proxies (fp32 mean over each group's heads, stored in the input dtype) at the
    # stride positions.
    # fp32 products of the rounded proxies, as the library's kernels compute them.
    qp = q.view(n, g, hq // g, d).float().mean(2).to(q.dtype).float()[::stride].transpose(0, 1)  # [g, ns, d]
    kp = k.view(n, g, hkv // g, d).float().mean(2).to(q.dtype).float()[::stride].transpose(0, 1)
    ns = qp.shape[1]
    # Step 4: causal softmax per sampled row, max over each (query block, key block) tile.
    scores = torch.zeros(g, nqb, nqb, device=q.device, dtype=torch.float32)
    rows_per_chunk = max(pb, (TORCH_ESTIMATE_CHUNK_BYTES // (4 * g * ns)) // pb * pb)
    for r0 in range(0, ns, rows_per_chunk):
        r1 = min(ns, r0 + rows_per_chunk)
        logits = torch.matmul(qp[:, r0:r1], kp[:, :r1].transpose(1, 2)) * scale  # [g, R, r1]
        rows = torch.arange(r0, r1, device=q.device)[:, None]
        keys = torch.arange(r1, device=q.device)[None, :]
        logits.masked_fill_(keys > rows, float("-inf"))
        p = F.pad(torch.softmax(logits, dim=-1), (0, (-r1) % pb, 0, (-(r1 - r0)) % pb))
        tiles = p.view(g, p.shape[1] // pb, pb, p.shape[2] // pb, pb).amax(dim=(2, 4))
        scores[:, r0 // pb:r0 // pb + tiles.shape[1], :tiles.shape[2]] = tiles
    # Step 5: per-head budget from the last query block's mass per key block.
    q0 = (nqb - 1) * block
    logits = torch.matmul(q[q0:].transpose(0, 1).float(),
                          k.transpose(0, 1).float().repeat_interleave(hq // hkv, dim=0).transpose(1, 2)) * scale
    rows = torch.arange(q0, n, device=q.device)[:, None]
    logits.masked_fill_(torch.arange(n, device=q.device)[None, :] > rows, float("-inf"))
    p = F.pad(torch.softmax(logits, dim=-1), (0, nqb * block - n))
    mass = p.view(hq, n - q0, nqb, block).sum(-1).mean(1)  # [Hq, Nqb]
    cum = mass.sort(dim=-1, descending=True).values.cumsum(-1)
    needed = ((cum < config.gamma * cum[:, -1:]).sum(-1) + 1).clamp(max=nqb)
    # Step 6: one sort per (group, row); forced blocks first.
    m = torch.arange(nqb, device=q.device)
    ranked = torch.where(m[None, :] <= m[:, None], scores, torch.full_like(scores, -1.0))
    ranked[:, m, m] = 2.0
    ranked[:, :, 0] = 3.0
    order = ranked.sort(dim=-1, descending=True, stable=True).indices
    if config.budget_rule == _C.BUDGET_RULES["ranked"]:
        # The ranked rule: also the entries of the group's last row reaching the target share.
        last = order[torch.arange(hq, device=q.device) // (hq // g), -1]  # [Hq, Nqb]
        along = mass.gather(1, last).double().cumsum(-1)
        target = max(0.0, 1.0 - config.ranked_slack * (1.0 - config.gamma))
        needed = torch.maximum(needed, ((along < target * along[:, -1:]).sum(-1) + 1).clamp(max=nqb))
    budget = needed.clamp(min=-(-config.min_budget_tokens // block)).clamp(max=nqb)
    count = torch.minimum(budget[None, :], (m + 1)[:, None])
    return order, count, needed
