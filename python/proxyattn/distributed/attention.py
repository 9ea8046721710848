"""proxyattn.distributed.attention: ProxyAttn over one sequence sharded over a process group in
the zigzag layout (layout.py). Per call:
  1. agreement: a fingerprint of every rank's call all-gathered (agreement.py);
  2. keys: all-gathered ("gather"), or each rank's own blocks plus the proxies of every
     position all-gathered ("fetch", fetch.py);
  3. budgets: the rank holding the last query block estimates that piece (step 5 on the
     sequence's last query block, and on those of budget_rows' blocks the piece holds) and
     broadcasts needed counts and anchors; with budget_rows > 1 it also receives the Q of
     the measured blocks before its piece (all-gathered) and estimates each as a one-block
     chunk, the counts their largest;
  4. estimation of the rank's other piece with those budgets (pa_estimate_kv_given): every row
     is the row a single process computes on the whole sequence;
  5. attention of each piece at its offset against keys [0, end): V all-gathered while 3-4 run
     ("gather"), or the kept key blocks of other ranks fetched ("fetch")."""
import fractions
import time

import torch
import torch.distributed as dist

from .. import _C
from .._settings import settings_of
from . import collectives, fetch
from .agreement import agree
from .layout import ZigzagLayout
from .pieces import PiecePlan

EXCHANGES = ("gather", "fetch")
_DTYPES = {"torch.float32": 0, "torch.float16": 1, "torch.bfloat16": 2}


class ShardPlan:
    """The rank's pieces: their plans (PiecePlan), token ranges in the shard, and the time of
    each step (seconds) when the call was timed."""

    def __init__(self, layout, rank, pieces, offsets):
        self.layout, self.rank, self.pieces, self.offsets = layout, rank, pieces, offsets
        self.timings = {}
        self.bytes_received = 0  # K, V and proxy bytes this rank received from others

    def rows(self):
        """{m: (order [g, m + 1], count [Hq])} of every query-block row the rank holds."""
        out = {}
        for piece in self.pieces:
            out.update(piece.rows())
        return out


class _Clock:
    """Step times (synchronising the device between steps) when timing, else nothing."""

    def __init__(self, enabled, device):
        self.enabled, self.device, self.times = enabled, device, {}
        self._last = time.perf_counter() if enabled else None

    def step(self, name):
        if not self.enabled:
            return
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        now = time.perf_counter()
        self.times[name] = self.times.get(name, 0.0) + now - self._last
        self._last = now


def _local_error(q, k, v, exchange, seq_len):
    """This rank's verdict on its own arguments: a message, or None."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            return f"{name}: expected a torch tensor, got {type(t).__name__}"
        if t.ndim != 3:
            return f"{name}: expected [shard_tokens, heads, head_dim], got shape {tuple(t.shape)}"
    if k.shape != v.shape:
        return f"k {tuple(k.shape)} and v {tuple(v.shape)}: shapes differ"
    if q.shape[0] != k.shape[0] or q.shape[2] != k.shape[2]:
        return f"q {tuple(q.shape)} and k {tuple(k.shape)}: shard tokens and head_dim must match"
    if q.shape[1] % k.shape[1] != 0:
        return f"q heads ({q.shape[1]}) must be a multiple of k heads ({k.shape[1]})"
    if not (q.dtype == k.dtype == v.dtype) or str(q.dtype) not in _DTYPES:
        return f"q, k, v: dtypes {q.dtype}, {k.dtype}, {v.dtype} (one of float32, float16, bfloat16)"
    if exchange not in EXCHANGES:
        return f"exchange = {exchange!r}: one of {EXCHANGES}"
    if not isinstance(seq_len, int) or isinstance(seq_len, bool) or seq_len < 0:
        return f"seq_len = {seq_len!r}: expected an int >= 0"
    return None


def _dim(t, i):
    return int(t.shape[i]) if isinstance(t, torch.Tensor) and t.ndim == 3 else -1


def attention(q, k, v, seq_len, *, group=None, exchange="gather", return_lse=False, return_plan=False,
              timed=False, settings=None, **changes):
    """ProxyAttn on this rank's shard of one sequence of seq_len tokens sharded over group
    (torch.distributed; None: the default group) in the zigzag layout (shard()): q
    [shard_tokens, Hq, d], k and v [shard_tokens, Hkv, d] on the group's device (CUDA for NCCL,
    the CPU for gloo). Returns out [shard_tokens, Hq, d] (and lse [Hq, shard_tokens] float32,
    and the ShardPlan), the rows of the single-process call on the whole sequence. Every rank
    calls it with the same seq_len, shapes but the tokens, dtype, settings and exchange
    ("gather": all-gather K and V; "fetch": only the key blocks the rank's rows keep); a
    difference raises DistributedInputError on every rank. timed: the ShardPlan's timings hold
    each step's time (synchronising the device between steps). Settings as in
    proxyattn.attention()."""
    settings = settings_of(settings, **changes)
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    local_error = _local_error(q, k, v, exchange, seq_len)
    config, layout = None, None
    if local_error is None:
        try:
            config = settings.resolve(int(q.shape[-1]))
            layout = ZigzagLayout(seq_len, world, config.block_size)
        except (ValueError, TypeError, _C.ProxyAttnError) as e:
            local_error = str(e)
    if config is None:
        config = settings.resolve(max(_dim(q, 2), 1))
    device = q.device if isinstance(q, torch.Tensor) else torch.device("cpu")
    fields = {"seq_len": seq_len if isinstance(seq_len, int) else -1, "world_size": world,
              "shard_len": _dim(q, 0), "num_q_heads": _dim(q, 1), "num_kv_heads": _dim(k, 1),
              "head_dim": _dim(q, 2), "dtype": _DTYPES.get(str(getattr(q, "dtype", "")), -1),
              "exchange": EXCHANGES.index(exchange) if exchange in EXCHANGES else -1}

    def describe_shard(r, n):
        if layout is None or n == layout.shard_len(r):
            return None
        return (f"rank {r} holds {n} tokens, but the zigzag layout of seq_len = {seq_len} over {world} ranks "
                f"(block_size = {layout.block_size}) gives it {layout.shard_len(r)} (proxyattn.distributed.shard)")

    agree(fields, config, group, device, local_error, describe_shard)
    clock = _Clock(timed, device)
    clock.step("agreement")
    out, lse, plan = _run(q, k, v, layout, rank, group, config, exchange, clock)
    plan.timings = clock.times
    result = (out,) + ((lse,) if return_lse else ()) + ((plan,) if return_plan else ())
    return result if len(result) > 1 else out


def _run(q, k, v, layout, rank, group, config, exchange, clock):
    world = layout.world_size
    lengths = [layout.shard_len(r) for r in range(world)]
    spans, offset = [], 0
    for p in layout.pieces_of(rank):
        a, e = layout.piece_bounds(p)
        if e > a:
            spans.append((p, a, e, offset))
        offset += e - a
    if exchange == "gather":
        keys = _gather_keys(k, v, layout, rank, lengths, group, clock)
        num_pages = 0
    else:
        keys = fetch.PagedKeys(q, k, v, layout, rank, group, config, clock)
        num_pages = keys.num_pages
    hkv = int(k.shape[1])
    pieces = [PiecePlan(q[o:o + e - a], hkv, a, e, config, num_pages) for p, a, e, o in spans]
    plan = ShardPlan(layout, rank, pieces, [o for *_, o in spans])
    plan.bytes_received = keys.bytes_received
    _estimate(q, keys, plan, spans, layout, rank, group, config, clock)
    out = torch.empty_like(q)
    lses = [torch.empty((q.shape[1], e - a), dtype=torch.float32, device=q.device) for p, a, e, o in spans]
    keys.prepare_values(plan, clock)
    for piece, lse, (p, a, e, o) in zip(pieces, lses, spans):
        piece.attend(q[o:o + e - a], keys.k, keys.v, out[o:o + e - a], lse, keys.table)
    lse = torch.cat(lses, 1) if lses else torch.empty((q.shape[1], 0), dtype=torch.float32, device=q.device)
    clock.step("attention")
    return out, lse, plan


class _GatheredKeys:
    """All of K [N, Hkv, d]; V's all-gather runs while the estimation does."""

    table = None
    state = None

    def __init__(self, k, finish_v, layout, rank):
        self.k, self._finish_v, self._layout, self.v = k, finish_v, layout, None
        others = layout.seq_len - layout.shard_len(rank)
        self.bytes_received = 2 * others * k[0].numel() * k.element_size()  # K and V of the others

    def prepare_values(self, plan, clock):
        self.v = _unshard_list(self._finish_v(), self._layout)
        clock.step("communication_v")


def _unshard_list(shards, layout):
    pieces = [None] * layout.num_pieces
    for rank, s in enumerate(shards):
        offset = 0
        for p in layout.pieces_of(rank):
            a, e = layout.piece_bounds(p)
            pieces[p] = s[offset:offset + e - a]
            offset += e - a
    return torch.cat(pieces, 0)


def _gather_keys(k, v, layout, rank, lengths, group, clock):
    k_all = _unshard_list(collectives.gather_shards(k, lengths, group), layout)
    clock.step("communication_k")
    _, finish_v = collectives.gather_shards(v, lengths, group, async_op=True)
    return _GatheredKeys(k_all, finish_v, layout, rank)


def _budget_rows(layout, config):
    """Step 5's query blocks with budget_rows = R (core/budget.hpp): round(Nqb j / R) - 1, j =
    1..R, halves to even, at least 0, ascending and unique."""
    nkb = -(-layout.seq_len // config.block_size)
    rows = config.budget_rows
    return sorted({max(0, round(fractions.Fraction(nkb * j, rows)) - 1) for j in range(1, rows + 1)})


def _earlier_rows_q(q, spans, layout, group, config, before):
    """Q [len(rows) b, Hq, d] of step 5's blocks before token `before` (full blocks, each held
    by one rank), all-gathered in block order, and the blocks."""
    b, world = config.block_size, layout.world_size
    rows = [m for m in _budget_rows(layout, config) if (m + 1) * b <= before]
    if not rows:
        return q[:0], rows
    owner_of = {}
    for r in range(world):
        for p in layout.pieces_of(r):
            a, e = layout.piece_bounds(p)
            owner_of.update({m: r for m in rows if a <= m * b < e})
    rank = dist.get_rank(group)
    mine = [q[o + m * b - a:o + (m + 1) * b - a] for m in rows if owner_of[m] == rank
            for p, a, e, o in spans if a <= m * b < e]
    lengths = [b * sum(owner_of[m] == r for m in rows) for r in range(world)]
    shards = collectives.gather_shards(torch.cat(mine, 0) if mine else q[:0], lengths, group)
    blocks = {}
    for r, shard in enumerate(shards):
        for i, m in enumerate(m for m in rows if owner_of[m] == r):
            blocks[m] = shard[i * b:(i + 1) * b]
    return torch.cat([blocks[m] for m in rows], 0), rows


def _estimate(q, keys, plan, spans, layout, rank, group, config, clock):
    """Steps 2-6 of the rank's pieces; step 5 from the rank holding the last query block."""
    n = layout.seq_len
    sparse = n > 0 and n >= config.dense_below
    last = layout.last_piece()
    owner = layout.owner(last)
    hq = int(q.shape[1])
    if not sparse:  # the whole sequence runs dense: so does every piece (kv_len <= N)
        for piece, (p, a, e, o) in zip(plan.pieces, spans):
            piece.estimate(q[o:o + e - a], keys.k, keys.table, keys.state)
        clock.step("estimation")
        return
    if config.budget_rows > 1:
        rows_q, rows = _earlier_rows_q(q, spans, layout, group, config, layout.piece_bounds(last)[0])
        clock.step("communication_budget_rows")
    width = hq * (1 + _C.MAX_ANCHOR_BLOCKS)
    budgets = torch.full((width,), -1, dtype=torch.int32, device=q.device)
    own_given = False  # the last piece's rows need step 5 given (a count from an earlier block)
    for piece, (p, a, e, o) in zip(plan.pieces, spans):
        if p == last:
            piece.estimate(q[o:o + e - a], keys.k, keys.table, keys.state)
            needed, anchors = piece.heads()
            if config.budget_rows > 1 and rows:
                # Each earlier block as a one-block chunk (its own count, R = 1, never dense; the
                # paper's count, as a single process measures the earlier blocks).
                row_config = config._replace(budget_rows=1, dense_below=0, budget_rule=_C.BUDGET_RULES["paper"])
                b = config.block_size
                for i, m in enumerate(rows):
                    row_q = rows_q[i * b:(i + 1) * b]
                    row = PiecePlan(row_q, int(keys.k.shape[-2]), m * b, (m + 1) * b, row_config,
                                    getattr(keys, "num_pages", 0))
                    row.estimate(row_q, keys.k, keys.table, keys.state)
                    counts = row.heads()[0]
                    own_given = own_given or any(c > x for c, x in zip(counts, needed))
                    needed = [max(c, x) for c, x in zip(counts, needed)]
            budgets[:hq] = torch.tensor(needed, dtype=torch.int32)
            budgets[hq:hq + len(anchors)] = torch.tensor(anchors, dtype=torch.int32)
    clock.step("budgets")
    dist.broadcast(budgets, src=collectives.global_rank(group, owner), group=group)
    clock.step("communication_budgets")
    given = budgets.tolist()
    nkb = -(-n // config.block_size)
    for piece, (p, a, e, o) in zip(plan.pieces, spans):
        if p != last or own_given:
            t = piece.plan._plan.anchor_blocks
            piece.estimate_given(q[o:o + e - a], keys.k, given[:hq], given[hq:hq + hq * t], nkb, keys.table,
                                 keys.state)
    clock.step("estimation")
