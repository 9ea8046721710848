"""proxyattn.distributed on gloo: 2, 3 and 4 processes of this machine against the single-process
call on the whole sequence (kept blocks identical, outputs and LSE within float rounding), both
exchanges, g = 1 and 2, GQA, a padded last piece, dense and proportional sequences, budget_rows
4 and 16 with anchors on top; and bad input (a rank with another config, a shard of the wrong
length) raising on every rank. A piece's kept key blocks (the fetch exchange's list) against
the per-head definition. On GPUs through NCCL (marked gpu, world sizes as the GPUs allow):
the same against the single-process GPU call, and bench cp's dense ring baseline against dense
attention."""
import os
import tempfile

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import proxyattn  # noqa: E402
from proxyattn import distributed as pad  # noqa: E402
from process_group import spawn  # noqa: E402
from proxyattn.distributed.pieces import PiecePlan  # noqa: E402

BLOCK = 64
# Small settings so that sequences of a few hundred tokens are sparse with several rows.
SETTINGS = dict(block_size=BLOCK, min_budget_tokens=128, dense_below=256, gamma=0.9)
# (seq_len, Hq, Hkv, head_dim, changes): GQA 4/2 and 2/2; N % b != 0; a last piece of N % b
# tokens joining the piece before it; a whole sequence below dense_below; proportional budgets;
# step 5 over 4 and 16 query blocks (budget_rows), spread over the ranks.
CASES = [
    (1000, 4, 2, 32, dict(num_proxy_groups=1)),
    (1000, 4, 2, 32, dict(num_proxy_groups=2)),
    (1090, 4, 2, 16, dict(num_proxy_groups=2, budget_mode="proportional")),
    (200, 2, 2, 16, dict(num_proxy_groups=1)),
    (1000, 4, 2, 32, dict(num_proxy_groups=2, budget_rows=4, anchor_mode="on_top")),
    (1090, 4, 2, 16, dict(budget_rows=16, budget_mode="proportional")),
    # the ranked rule at its tightest beside budget rows
    (1000, 4, 2, 32, dict(budget_rows=4, ranked_slack=1.0)),
]


def _inputs(n, hq, hkv, d, seed, sharp_tail=False):
    """Random q, k, v with some structure for the ranking; sharp_tail: the last block's queries
    attend to one key, so that an earlier block needs more key blocks (budget_rows decides)."""
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(n, h, d, generator=g) for h in (hq, hkv, hkv))
    k[:, :, 0] += torch.linspace(0, 3, n)[:, None]
    if sharp_tail:
        tail = (n - 1) // BLOCK * BLOCK
        q[tail:] = 4.0 * k[5].repeat_interleave(hq // hkv, 0)
    return q, k, v


def _check_case(rank, world, case, exchange):
    n, hq, hkv, d, changes = case
    settings = proxyattn.Settings(**SETTINGS, **changes)
    q, k, v = _inputs(n, hq, hkv, d, seed=n + hq, sharp_tail=changes.get("budget_rows", 1) > 1)
    ref_out, ref_lse = proxyattn.attention_varlen(q, k, v, [0, n], return_lse=True, settings=settings)
    ref_rows = pad.plan_rows(proxyattn.estimate(q[None], k[None], settings=settings), 0, -(-n // BLOCK))
    shards = [pad.shard(t, rank, world, BLOCK) for t in (q, k, v)]
    out, lse, plan = pad.attention(*shards, seq_len=n, exchange=exchange, return_lse=True, return_plan=True,
                                   settings=settings)
    rows = plan.rows()
    for m, (order, count) in rows.items():
        ref_order, ref_count = ref_rows[m]
        assert np.array_equal(order, ref_order), f"{case} {exchange} rank {rank}: order row {m} differs"
        assert np.array_equal(count, ref_count), f"{case} {exchange} rank {rank}: counts of row {m} differ"
    want_out = pad.shard(ref_out, rank, world, BLOCK)
    want_lse = pad.shard(ref_lse.T, rank, world, BLOCK).T
    torch.testing.assert_close(out, want_out, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(lse, want_lse, rtol=1e-5, atol=1e-5)
    return sorted(rows)


def _bad_inputs(rank, world):
    """Each case must raise DistributedInputError on every rank, naming the difference."""
    n, hq, hkv, d = 600, 4, 2, 16
    q, k, v = _inputs(n, hq, hkv, d, seed=1)
    shards = [pad.shard(t, rank, world, BLOCK) for t in (q, k, v)]
    cases = [
        ("gamma differs", dict(shards=shards, gamma=0.9 if rank == 0 else 0.8)),
        ("rank 0 holds", dict(shards=[t[1:] for t in shards] if rank == 0 else shards, gamma=0.9)),
        ("exchange differs", dict(shards=shards, gamma=0.9, exchange="gather" if rank else "fetch")),
        ("num_q_heads differs", dict(shards=[shards[0][:, :2] if rank == 1 else shards[0]] + shards[1:],
                                     gamma=0.9)),
        ("rank 1 refused", dict(shards=[shards[0].double() if rank == 1 else shards[0]] + shards[1:], gamma=0.9)),
    ]
    for expected, c in cases:
        with pytest.raises(pad.DistributedInputError, match=expected):
            pad.attention(*c["shards"], seq_len=n, exchange=c.get("exchange", "gather"), block_size=BLOCK,
                          min_budget_tokens=128, dense_below=256, gamma=c["gamma"])


def _check_cases(rank, world, tmp, bad):
    torch.set_num_threads(1)
    proxyattn.set_num_threads(1)
    seen = [_check_case(rank, world, case, exchange) for case in CASES for exchange in pad.EXCHANGES]
    if bad:
        _bad_inputs(rank, world)
    with open(os.path.join(tmp, f"rank{rank}"), "w") as f:
        f.write(repr(seen))


@pytest.mark.parametrize("world", [2, 3, 4])
def test_distributed_matches_single_process(world):
    with tempfile.TemporaryDirectory() as tmp:
        spawn(world, "gloo", _check_cases, tmp, world == 2)
        # Together the ranks hold every query-block row of each case once.
        per_rank = [eval(open(os.path.join(tmp, f"rank{r}")).read()) for r in range(world)]
        for i, (n, *_rest) in enumerate(c for c in CASES for _ in pad.EXCHANGES):
            rows = sorted(m for r in range(world) for m in per_rank[r][i])
            assert rows == list(range(-(-n // BLOCK))), f"case {i}: rows {rows}"


def test_layout_round_trip():
    for n in (0, 1, 63, 64, 65, 700, 1090, 4096 + 1):
        for world in (1, 2, 3, 4, 8):
            x = torch.arange(n)
            shards = [pad.shard(x, r, world, BLOCK) for r in range(world)]
            assert torch.equal(pad.unshard(shards, BLOCK), x)
            layout = pad.ZigzagLayout(n, world, BLOCK)
            for p in range(layout.num_pieces):
                a, e = layout.piece_bounds(p)
                assert e == a or (a % BLOCK == 0 and (e - a >= BLOCK or (a == 0 and e == n))), (n, world, p, a, e)


def test_kept_blocks_are_every_heads_kept_prefix():
    """A piece's kept key blocks (what the fetch exchange moves) are the union over rows and heads
    of each head's kept prefix of its group's order row: whole pieces and chunks, g 1 and 2."""
    n, hq, hkv, d = 2000, 4, 2, 32
    q, k, _ = _inputs(n, hq, hkv, d, seed=7)
    for g in (1, 2):
        config = proxyattn.Settings(**dict(SETTINGS, gamma=0.5), num_proxy_groups=g, anchor_blocks=0).resolve(d)
        for start in (0, 5 * BLOCK, 20 * BLOCK, 30 * BLOCK):
            piece = PiecePlan(q[start:], hkv, start, n, config)
            piece.estimate(q[start:], k)
            expected, sparse = set(), False
            for order, count in piece.rows().values():
                sparse = sparse or bool((count < order.shape[1]).any())
                for h, c in enumerate(count):
                    expected.update(order[h // (hq // g), :c].tolist())
            assert sparse, (g, start)  # some head keeps a strict prefix of its row
            assert piece.kept_blocks().tolist() == sorted(expected), (g, start)


def _check_nccl(rank, world, tmp):
    device = torch.device("cuda", rank)
    n = 5000
    settings = proxyattn.Settings(block_size=128, min_budget_tokens=512, dense_below=1024, gamma=0.9)
    q, k, v = (t.to(device, torch.bfloat16) for t in _inputs(n, 8, 2, 128, seed=3))
    ref_out, ref_lse = proxyattn.attention_varlen(q, k, v, [0, n], return_lse=True, settings=settings)
    ref_rows = pad.plan_rows(proxyattn.estimate(q[None], k[None], settings=settings), 0, -(-n // 128))
    for exchange in pad.EXCHANGES:
        shards = [pad.shard(t, rank, world, 128) for t in (q, k, v)]
        out, lse, plan = pad.attention(*shards, seq_len=n, exchange=exchange, return_lse=True,
                                       return_plan=True, settings=settings)
        for m, (order, count) in plan.rows().items():
            assert np.array_equal(order, ref_rows[m][0]) and np.array_equal(count, ref_rows[m][1]), (exchange, m)
        torch.testing.assert_close(out, pad.shard(ref_out, rank, world, 128), rtol=2e-2, atol=2e-2)
        torch.testing.assert_close(lse, pad.shard(ref_lse.T, rank, world, 128).T, rtol=1e-3, atol=1e-3)


def _check_dense_ring(rank, world, tmp):
    from proxyattn.bench.ring import BACKENDS, DenseRing
    device = torch.device("cuda", rank)
    n, hq, hkv, d = 4096, 8, 2, 128  # 4096 / (2 * 8) tokens a piece: whole 128-token blocks up to 8 ranks
    q, k, v = (t.to(device, torch.bfloat16) for t in _inputs(n, hq, hkv, d, seed=5))
    bhsd = [t.float().repeat_interleave(hq // t.shape[1], 1).transpose(0, 1)[None] for t in (q, k, v)]
    ref = torch.nn.functional.scaled_dot_product_attention(*bhsd, is_causal=True)[0].transpose(0, 1)
    for backend in BACKENDS:
        with DenseRing(q, k, v, world, backend) as ring:
            out = ring()
        torch.testing.assert_close(out.float(), pad.shard(ref, rank, world, 128), rtol=2e-2, atol=2e-2)


@pytest.mark.gpu
@pytest.mark.parametrize("world", [1, 2, 4, 8])
def test_dense_ring_baseline_nccl(world):
    """bench cp's dense peer (PyTorch's context_parallel ring over cuDNN and FlashAttention-2):
    each rank's output is its ZigzagLayout shard of dense causal attention in float32."""
    if torch.cuda.device_count() < world:
        pytest.skip(f"{world} GPUs needed, {torch.cuda.device_count()} here")
    with tempfile.TemporaryDirectory() as tmp:
        spawn(world, "nccl", _check_dense_ring, tmp)


@pytest.mark.gpu
@pytest.mark.parametrize("world", [1, 2, 4, 8])
def test_distributed_nccl(world):
    """One process per GPU through NCCL (the world sizes this machine's GPUs allow): each rank's
    pieces (a whole prefix and chunks) against the single-process GPU call, rows identical."""
    if torch.cuda.device_count() < world:
        pytest.skip(f"{world} GPUs needed, {torch.cuda.device_count()} here")
    with tempfile.TemporaryDirectory() as tmp:
        spawn(world, "nccl", _check_nccl, tmp)
