"""One piece of a rank's shard as a library call: the plan of its queries [start, end) at the end
of keys [0, end) (a whole prompt when start == 0, else a chunk), its estimation (step 5 measured
or given) and its attention. K and V are [>= end, Hkv, d] packed, or a paged cache of pages of
one block (page p holds keys [p b, (p + 1) b)) with its block table and estimation state."""
import numpy as np

from .. import _api


class PiecePlan:
    """num_pages > 0: the calls read a paged cache of that many pages of one block each."""

    def __init__(self, q, num_kv_heads, start, end, config, num_pages=0):
        self.start, self.end, self.config = start, end, config
        hq, d = int(q.shape[1]), int(q.shape[2])
        self.kv_calls = start > 0 or num_pages > 0  # the _kv calls (a chunk, or paged keys)
        self.paged = num_pages > 0
        paged = (config.block_size, num_pages, num_pages) if self.paged else (0, 0, 0)
        self.plan = _api.Plan([0, end - start], hq, num_kv_heads, d, q, config,
                              [0, end] if self.kv_calls else None, *paged)

    @property
    def first_qblock(self):
        return self.start // self.config.block_size

    @property
    def num_kblocks(self):
        return -(-self.end // self.config.block_size)

    def _keys(self, k):
        return k if self.paged else k[:self.end]

    def estimate(self, q, k, table=None, state=None):
        """Steps 2-6 with step 5 on the piece's own last query block."""
        p = self.plan
        with _api._on_device(q):
            if self.kv_calls:
                p._plan.estimate_kv(_api._dl(q), _api._dl(self._keys(k)), _api._dl(table),
                                    None if state is None else state._handle, _api._dl(p._workspace),
                                    _api._stream(q))
            else:
                p._plan.estimate(_api._dl(q), _api._dl(k[:self.end]), _api._dl(p._workspace), _api._stream(q))

    def estimate_given(self, q, k, needed, anchors, num_kblocks, table=None, state=None):
        """Steps 2-4 and 6 with step 5's results given (the whole sequence's, num_kblocks blocks)."""
        p = self.plan
        with _api._on_device(q):
            p._plan.estimate_kv_given(_api._dl(q), _api._dl(self._keys(k)), _api._dl(table),
                                      None if state is None else state._handle, list(needed), list(anchors),
                                      [num_kblocks], _api._dl(p._workspace), _api._stream(q))

    def heads(self):
        """(needed [Hq], anchors [Hq * T]) of step 5, host lists."""
        h = self.plan.heads()
        return h["needed_blocks"].reshape(-1).tolist(), h["anchors"].reshape(-1).tolist()

    def attend(self, q, k, v, out, lse, table=None):
        p = self.plan
        with _api._on_device(q):
            if self.kv_calls:
                p._plan.attend_kv(_api._dl(q), _api._dl(self._keys(k)), _api._dl(self._keys(v)), _api._dl(table),
                                  None, _api._dl(out), _api._dl(lse), _api._stream(q))
            else:
                p._plan.attend(_api._dl(q), _api._dl(k[:self.end]), _api._dl(v[:self.end]), _api._dl(out),
                               _api._dl(lse), _api._stream(q))

    def rows(self):
        """{m: (order [g, m + 1], count [Hq])} of the piece's query-block rows (host arrays)."""
        return plan_rows(self.plan, self.first_qblock, self.num_kblocks)

    def kept_blocks(self):
        """Key blocks some head of some row keeps (sorted numpy int array)."""
        return kept_key_blocks(self.plan, self.first_qblock, self.num_kblocks)


def plan_rows(plan, first_qblock, num_kblocks):
    """{m: (order [g, m + 1], count [Hq])} of a one-sequence plan whose rows are first_qblock ..
    num_kblocks - 1 (docs/index_format.md: per group, rows of m + 1 entries; counts by row)."""
    order, count = plan.index()
    g = plan.config.num_proxy_groups
    tri = lambda m: m * (m + 1) // 2  # noqa: E731 (entries of rows 0 .. m - 1)
    per_group = tri(num_kblocks) - tri(first_qblock)
    rows = {}
    for i, m in enumerate(range(first_qblock, num_kblocks)):
        at = tri(m) - tri(first_qblock)
        groups = np.stack([order[j * per_group + at: j * per_group + at + m + 1] for j in range(g)])
        rows[m] = (groups, count[i].copy())
    return rows


def kept_key_blocks(plan, first_qblock, num_kblocks):
    """The key blocks some head of some row of a one-sequence plan keeps (rows first_qblock ..
    num_kblocks - 1; sorted numpy int64), from the index in whole arrays: a group's entry at
    position p of row m is kept by some head iff p < the largest count of the group's heads."""
    order, count = plan.index()
    g = plan.config.num_proxy_groups
    rows = num_kblocks - first_qblock
    if rows <= 0:
        return np.zeros(0, np.int64)
    lengths = np.arange(first_qblock, num_kblocks, dtype=np.int64) + 1  # row m holds m + 1 entries
    starts = np.cumsum(lengths) - lengths
    per_group = int(lengths.sum())
    widest = count.reshape(rows, g, -1).max(axis=2)  # [rows, g]: the group's largest count
    position = np.arange(per_group, dtype=np.int64) - np.repeat(starts, lengths)
    keep = position[None, :] < np.repeat(widest, lengths, axis=0).T  # [g, per_group]
    return np.unique(order[:g * per_group].reshape(g, per_group)[keep]).astype(np.int64)
