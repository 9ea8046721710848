"""Block-importance estimators to compare with ProxyAttn's proxy-head ranking, and the dense
reference they are scored against. Written from the papers' descriptions (no code copied):

- `meanpool`: FlexPrefill's "query-aware" estimate (and MInference's block-sparse pattern):
  mean-pool Q and K over each block, score block pairs by softmax of the pooled logits.
- `vslash`: the vertical-slash pattern of MInference / FlexPrefill: the last query block's
  attention, summed by key column (vertical) and by diagonal offset q - k (slash), pooled to
  blocks; a block's score is the mass the two patterns predict for it.
- `flexprefill`: FlexPrefill's per-head choice between the two: `meanpool` where the pooled
  estimate of the last block's block distribution is close to the true one (square root of
  the Jensen-Shannon divergence below tau), `vslash` elsewhere.
- `xattn_s<S>`: XAttention's antidiagonal scoring: within every S x S cell of the attention
  map, the logits along the antidiagonal (upper right to lower left) are averaged; softmax over
  the cells of a row; the block score is the sum over the block's cells.
- `tokmax_perhead`, `toksum_perhead`: ProxyAttn's own token-level estimate (stride-s sampled
  queries and keys, softmax per sampled row) with every Q head as its own proxy, pooled to
  blocks by max (as ProxyAttn) or by sum (an estimate of block mass). Ablations: against
  ProxyAttn they separate the effect of sharing one ranking per group from that of max pooling.
- `oracle`: the true dense block masses (an upper bound for any ranking at a given budget).

Every estimator gives, per head, a score matrix [Nb, Nb]; `rank_rows` turns it into a
ranking per query-block row with the same forced blocks as ProxyAttn's defaults (sink block 0,
then the diagonal block), so that at equal per-row budgets only the ranking differs.
All tensors here are torch float32 on the CPU; Q [N, Hq, d], K [N, Hkv, d].
"""
import numpy as np
import torch

# FlexPrefill's threshold on sqrt(JS divergence) for choosing the query-aware pattern
# (the value the FlexPrefill paper uses for its main results).
FLEXPREFILL_TAU = 0.1
# Query rows per chunk when computing the dense reference (bounds memory to rows x N floats).
DENSE_CHUNK_ROWS = 1024
# Forced blocks get scores above any real score, sink above diagonal.
_FORCED_SINK, _FORCED_DIAG = 3.0e38, 2.0e38
_EPS = 1e-30


def kv_head_of(h, num_q_heads, num_kv_heads):
    return h // (num_q_heads // num_kv_heads)


# ---- the dense reference --------------------------------------------------------------------
def dense_block_mass(q, k, block, scale):
    """Per Q head, M[h, m, n] = sum over the queries of block m of the dense causal attention
    probability that falls in key block n (so M[h].sum() = N), and the dense LSE [Hq, N].
    N must be a multiple of `block`."""
    n_tok, hq, _ = q.shape
    hkv = k.shape[1]
    if n_tok % block:
        raise ValueError(f"N = {n_tok} is not a multiple of block {block}")
    nb = n_tok // block
    mass = torch.zeros(hq, nb, nb, dtype=torch.float64)
    lse = torch.empty(hq, n_tok, dtype=torch.float32, device=q.device)
    rows = max(block, DENSE_CHUNK_ROWS // block * block)
    pos = torch.arange(n_tok, device=q.device)
    for h in range(hq):
        qh, kh = q[:, h], k[:, kv_head_of(h, hq, hkv)]
        for r0 in range(0, n_tok, rows):
            r1 = min(n_tok, r0 + rows)
            s = (qh[r0:r1] @ kh[:r1].T) * scale
            s.masked_fill_(pos[:r1][None, :] > pos[r0:r1][:, None], float("-inf"))
            row_lse = torch.logsumexp(s, dim=1)
            p = torch.exp(s - row_lse[:, None])
            lse[h, r0:r1] = row_lse
            per_key_block = p.reshape(r1 - r0, r1 // block, block).sum(-1)
            mass[h, r0 // block:r1 // block, :r1 // block] = \
                per_key_block.reshape((r1 - r0) // block, block, -1).sum(1).double()
    return mass, lse


def last_block_attention(qh, kh, block, scale):
    """softmax(Q_last K^T * scale), causal, for the last `block` queries: [block, N]."""
    n_tok = qh.shape[0]
    q_last = qh[n_tok - block:]
    s = (q_last @ kh.T) * scale
    qpos = torch.arange(n_tok - block, n_tok)[:, None]
    s.masked_fill_(torch.arange(n_tok)[None, :] > qpos, float("-inf"))
    return torch.softmax(s, dim=1)


# ---- rankings -----------------------------------------------------------------------------
def rank_rows(score):
    """score [Nb, Nb] (row m: query block, column n: key block) -> order [Nb, Nb] int64: row m
    lists the causal key blocks n <= m, forced blocks first (0, then m), then by score
    descending, ties to the lower block; entries past m + 1 are padding."""
    nb = score.shape[0]
    s = np.array(score, dtype=np.float64, copy=True)
    s[np.triu_indices(nb, 1)] = -np.inf
    s[:, 0] = _FORCED_SINK
    diag = np.arange(1, nb)
    s[diag, diag] = _FORCED_DIAG
    return np.argsort(-s, axis=1, kind="stable")


def cumulative_mass(mass_h, order):
    """cum[m, j] = dense mass of the first j + 1 blocks of row m's ranking (queries summed)."""
    return np.cumsum(np.take_along_axis(mass_h, order, axis=1), axis=1)


def recall_at_counts(cum, counts, num_tokens):
    """Mass recall (mean over queries) of keeping counts[m] blocks of each row's ranking."""
    rows = np.arange(cum.shape[0])
    return float(cum[rows, counts - 1].sum() / num_tokens)


def threshold_counts(score, order, tau):
    """The estimators' own selection rule (FlexPrefill's and XAttention's cumulative threshold,
    per query-block row): the row's causal scores normalised to sum 1, taken in ranking
    order, keep the fewest blocks whose scores add up to at least tau. The forced blocks
    (sink, diagonal) lead every ranking and are always kept. Returns counts [Nb] int64."""
    nb = score.shape[0]
    s = np.where(np.tri(nb, dtype=bool), np.asarray(score, dtype=np.float64), 0.0)
    s /= np.maximum(s.sum(1, keepdims=True), _EPS)
    cum = np.cumsum(np.take_along_axis(s, order, axis=1), axis=1)
    counts = (cum < tau).sum(1) + 1  # the first position where the cumulative score reaches tau
    rows = np.arange(nb)
    forced = np.minimum(rows + 1, 2)
    return np.clip(np.maximum(counts, forced), 1, rows + 1)


# ---- the estimators -------------------------------------------------------------------------
def oracle_scores(mass):
    return [mass[h].numpy() for h in range(mass.shape[0])]


def meanpool_scores(q, k, block, scale):
    """FlexPrefill query-aware / MInference block-sparse: softmax of mean-pooled logits."""
    n_tok, hq, d = q.shape
    hkv, nb = k.shape[1], n_tok // block
    qp = q.reshape(nb, block, hq, d).mean(1)
    kp = k.reshape(nb, block, hkv, d).mean(1)
    out = []
    causal = torch.ones(nb, nb, dtype=torch.bool).tril()
    for h in range(hq):
        s = (qp[:, h] @ kp[:, kv_head_of(h, hq, hkv)].T) * scale
        out.append(torch.softmax(s.masked_fill(~causal, float("-inf")), dim=1).numpy())
    return out


def _slash_block_weights(block, nb):
    """W[delta, o]: number of (q, k) pairs with q - k = o inside a block pair whose block
    offset is delta = m - n, divided by the block size (queries of the block averaged)."""
    offsets = np.arange(nb * block)
    delta = np.arange(nb)[:, None]
    w = np.maximum(0, block - np.abs(offsets[None, :] - delta * block)).astype(np.float64)
    w[0, :block] = block - offsets[:block]  # diagonal block: causal pairs only, q - k >= 0
    w[0, block:] = 0
    return w / block


def vslash_scores(q, k, block, scale):
    """Vertical-slash: block score = V[n] + S[m - n], V the last block's attention mass per key
    block (verticals), S the mass its diagonals (slashes) carry into a block pair at that
    offset, for an average query of the block. Each pattern sums to one over a row."""
    n_tok, hq, _ = q.shape
    hkv, nb = k.shape[1], n_tok // block
    weights = _slash_block_weights(block, nb)
    rows = np.arange(block)
    qpos = n_tok - block + rows
    m_idx, n_idx = np.meshgrid(np.arange(nb), np.arange(nb), indexing="ij")
    delta = np.clip(m_idx - n_idx, 0, nb - 1)
    out = []
    for h in range(hq):
        a = last_block_attention(q[:, h], k[:, kv_head_of(h, hq, hkv)], block, scale).double().numpy()
        vertical = a.mean(0)  # [N]
        slash = np.zeros(n_tok)
        for r in rows:  # offsets o = q - k of row r are 0..qpos[r]
            slash[:qpos[r] + 1] += a[r, qpos[r]::-1]
        slash /= block
        v_block = vertical.reshape(nb, block).sum(1)
        s_block = weights @ slash  # [nb] by block offset
        out.append(v_block[n_idx] + s_block[delta])
    return out


def _js_distance(p, r):
    p, r = p / p.sum(), r / r.sum()
    mid = 0.5 * (p + r)
    kl = lambda a, b: float(np.sum(a * (np.log(a + _EPS) - np.log(b + _EPS))))
    return np.sqrt(max(0.0, 0.5 * kl(p, mid) + 0.5 * kl(r, mid)))


def flexprefill_choice(q, k, block, scale, tau=FLEXPREFILL_TAU):
    """Per head: True where FlexPrefill would use the query-aware (meanpool) pattern: the
    pooled estimate of the last block's block distribution is within tau (sqrt JSD) of the
    true one."""
    n_tok, hq, d = q.shape
    hkv, nb = k.shape[1], n_tok // block
    kp = k.reshape(nb, block, hkv, d).mean(1)
    choice, dist = [], []
    for h in range(hq):
        kh = k[:, kv_head_of(h, hq, hkv)]
        true = last_block_attention(q[:, h], kh, block, scale).sum(0).reshape(nb, block).sum(1).double().numpy()
        est = torch.softmax((q[n_tok - block:, h].mean(0) @ kp[:, kv_head_of(h, hq, hkv)].T) * scale, 0)
        dist.append(_js_distance(true, est.double().numpy()))
        choice.append(dist[-1] < tau)
    return choice, dist


def xattention_scores(q, k, block, scale, stride):
    """Antidiagonal scoring: cell (t, u) = the mean of the S logits q[tS + i] . k[uS + S-1-i]
    (i = 0..S-1), softmax over the causal cells u <= t of row t, summed per block pair."""
    n_tok, hq, d = q.shape
    hkv = k.shape[1]
    if block % stride:
        raise ValueError(f"stride {stride} does not divide block {block}")
    cells, per_block, nb = n_tok // stride, block // stride, n_tok // block
    causal = torch.ones(cells, cells, dtype=torch.bool).tril()
    out = []
    for h in range(hq):
        qr = q[:, h].reshape(cells, stride * d)  # row t: q[tS], ..., q[tS + S-1]
        kr = k[:, kv_head_of(h, hq, hkv)].reshape(cells, stride, d).flip(1).reshape(cells, stride * d)
        s = (qr @ kr.T) * (scale / stride)
        p = torch.softmax(s.masked_fill(~causal, float("-inf")), dim=1)
        out.append(p.reshape(nb, per_block, nb, per_block).sum((1, 3)).numpy())
    return out


def strided_token_scores(q, k, block, scale, stride, pool):
    """Per Q head: softmax over the sampled causal keys of each sampled query (positions
    0, s, 2s, ...), pooled over each block pair's (b/s) x (b/s) tile by `pool` ("max" or
    "sum"). ALGORITHM.md steps 3-4 with the head itself as proxy."""
    n_tok, hq, _ = q.shape
    hkv = k.shape[1]
    if block % stride:
        raise ValueError(f"stride {stride} does not divide block {block}")
    ns, per, nb = -(-n_tok // stride), block // stride, n_tok // block
    causal = torch.ones(ns, ns, dtype=torch.bool).tril()
    out = []
    for h in range(hq):
        s = (q[::stride, h] @ k[::stride, kv_head_of(h, hq, hkv)].T) * scale
        p = torch.softmax(s.masked_fill(~causal, float("-inf")), dim=1).reshape(nb, per, nb, per)
        out.append((p.amax((1, 3)) if pool == "max" else p.sum((1, 3))).numpy())
    return out


def proxy_orders(order_flat, num_groups, nb):
    """ProxyAttn's rankings from Plan.index() of a single sequence -> [g, Nb, Nb] (row m's
    first m + 1 entries valid, the rest padded with the row's last entry)."""
    tri = nb * (nb + 1) // 2
    out = np.zeros((num_groups, nb, nb), dtype=np.int64)
    for j in range(num_groups):
        base = j * tri
        for m in range(nb):
            start = base + m * (m + 1) // 2
            row = order_flat[start:start + m + 1]
            out[j, m, :m + 1] = row
            out[j, m, m + 1:] = row[-1]
    return out
