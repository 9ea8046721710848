"""The "fetch" exchange: a rank keeps a paged cache of the whole sequence's length (pages of
one block, block table the identity) holding its own blocks, and an estimation state holding
every position's pooled proxy key and query, all-gathered (g heads at stride s: 2 g d / (s Hkv
d) of K's bytes). The rank holding the last query block also receives every K block (step 5
reads all keys). After the estimation each rank receives only the K and V blocks its rows keep
(all_to_all of block ids, then of the blocks)."""
import numpy as np
import torch

from .. import _api
from . import collectives


def pool_proxies(x, groups):
    """Steps 2-3's proxy of each row: x [n, H, d] -> [n, groups, d], the mean of each group's
    heads summed in head order in float32 and rounded to x's dtype, as the library pools."""
    n, h, d = x.shape
    per = h // groups
    heads = x.reshape(n, groups, per, d).float()
    acc = heads[:, :, 0].clone()
    for i in range(1, per):
        acc += heads[:, :, i]
    return (acc / float(per)).to(x.dtype)


class PagedKeys:
    def __init__(self, q, k, v, layout, rank, group, config, clock):
        self.layout, self.rank, self.group, self.config = layout, rank, group, config
        b, s, g = config.block_size, config.stride, config.num_proxy_groups
        n, hkv, d = layout.seq_len, int(k.shape[1]), int(k.shape[2])
        self.num_pages = max(1, -(-n // b))
        self.bytes_received = 0
        self.k = k.new_zeros((self.num_pages, b, hkv, d))
        self.v = torch.zeros_like(self.k)
        self.table = torch.arange(self.num_pages, dtype=torch.int32, device=k.device).reshape(1, -1)
        self.block_owner = np.full(self.num_pages, -1, np.int64)
        for p in range(layout.num_pieces):
            a, e = layout.piece_bounds(p)
            if e > a:
                self.block_owner[a // b:-(-e // b)] = layout.owner(p)
        self.present = self.block_owner == rank  # blocks whose K (and V) this rank holds
        flat_k, flat_v = self.k.view(-1, hkv, d), self.v.view(-1, hkv, d)
        offset = 0
        for p in layout.pieces_of(rank):
            a, e = layout.piece_bounds(p)
            flat_k[a:e] = k[offset:offset + e - a]
            flat_v[a:e] = v[offset:offset + e - a]
            offset += e - a
        self._dtype = q.dtype
        self.state = self._gather_state(q, k, clock)
        self._fetch_budget_keys(clock)

    # -- proxies ---------------------------------------------------------------------------
    def _sampled(self, a, e):
        s = self.config.stride
        return -(-a // s), -(-e // s)

    def _gather_state(self, q, k, clock):
        layout, s, g = self.layout, self.config.stride, self.config.num_proxy_groups
        d = int(k.shape[2])
        own, offset = [], 0
        for p in layout.pieces_of(self.rank):
            a, e = layout.piece_bounds(p)
            rows = slice(offset + (-(-a // s) * s - a), offset + e - a, s)
            own.append(torch.stack([pool_proxies(k[rows], g), pool_proxies(q[rows], g)], 1))
            offset += e - a
        mine = torch.cat(own, 0)  # [sampled positions of the shard, 2, g, d]
        counts = []
        for r in range(layout.world_size):
            counts.append(sum(hi - lo for lo, hi in (self._sampled(*layout.piece_bounds(p))
                                                     for p in layout.pieces_of(r))))
        shards = collectives.gather_shards(mine, counts, self.group)
        self.bytes_received += sum(x.numel() * x.element_size() for r, x in enumerate(shards) if r != self.rank)
        state = _api.ProxyState(self.k, num_proxy_groups=g, stride=s)
        per_page = self.config.block_size // s
        rows = state.tensor.view(self._dtype).view(self.num_pages * per_page, 2, g, d)
        for r, shard in enumerate(shards):
            offset = 0
            for p in layout.pieces_of(r):
                lo, hi = self._sampled(*layout.piece_bounds(p))
                rows[lo:hi] = shard[offset:offset + hi - lo]
                offset += hi - lo
        clock.step("communication_proxies")
        return state

    # -- blocks ----------------------------------------------------------------------------
    def _fetch(self, blocks, with_keys):
        """Receives K and V (or V only) of blocks from their owners into the pages."""
        world, device = self.layout.world_size, self.k.device
        blocks = np.asarray(blocks, np.int64)
        owners = self.block_owner[blocks]
        order = np.argsort(owners, kind="stable")
        blocks, owners = blocks[order], owners[order]
        want = [int((owners == r).sum()) for r in range(world)]
        serve = collectives.exchange_counts(want, self.group, device)
        ids = torch.from_numpy(blocks).to(device)
        asked = collectives.exchange(ids, want, serve, self.group).long()
        planes = [self.k, self.v] if with_keys else [self.v]
        send = torch.stack([t[asked] for t in planes], 1)  # [served blocks, planes, b, Hkv, d]
        recv = collectives.exchange(send, serve, want, self.group)
        for i, t in enumerate(planes):
            t[ids] = recv[:, i]
        self.bytes_received += recv.numel() * recv.element_size()

    def _fetch_budget_keys(self, clock):
        """The rank holding the last query block receives every K block (step 5 reads them)."""
        layout = self.layout
        owner = layout.owner(layout.last_piece())
        budget_rank = self.rank == owner and layout.seq_len >= self.config.dense_below
        blocks = np.flatnonzero(~self.present) if budget_rank else np.zeros(0, np.int64)
        self._fetch_keys_only(blocks)
        clock.step("communication_k")

    def _fetch_keys_only(self, blocks):
        world, device = self.layout.world_size, self.k.device
        blocks = np.asarray(blocks, np.int64)
        owners = self.block_owner[blocks]
        want = [int((owners == r).sum()) for r in range(world)]
        serve = collectives.exchange_counts(want, self.group, device)
        order = np.argsort(owners, kind="stable")
        ids = torch.from_numpy(blocks[order]).to(device)
        asked = collectives.exchange(ids, want, serve, self.group).long()
        recv = collectives.exchange(self.k[asked], serve, want, self.group)
        self.k[ids] = recv
        self.bytes_received += recv.numel() * recv.element_size()
        self.keys_present = self.present.copy()
        self.keys_present[blocks] = True

    def prepare_values(self, plan, clock):
        """Receives the blocks the rank's rows keep: K and V, or V where K is here already."""
        kept = np.zeros(self.num_pages, bool)
        for piece in plan.pieces:
            kept[piece.kept_blocks()] = True
        missing = kept & ~self.present
        self._fetch(np.flatnonzero(missing & ~self.keys_present), True)
        self._fetch(np.flatnonzero(missing & self.keys_present), False)
        clock.step("communication_kv")
