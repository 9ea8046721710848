"""The zigzag (head-tail) layout of one sequence over the W ranks of a process group.

The sequence's N tokens are cut into 2W pieces of whole blocks; rank r holds piece r and piece
2W - 1 - r (in that order, concatenated), so that every rank's causal work is about even. Pieces
hold P = ceil(ceil(N / b) / 2W) blocks; the last non-empty piece ends at N, and when it would
hold less than a block (N % b tokens) it joins the piece before it, so that every chunk call of
a sparse sequence holds at least a block of queries (shorter ones run dense). Pieces past N are
empty: a rank's shard is its pieces' real tokens, never padding."""
import dataclasses


@dataclasses.dataclass(frozen=True)
class ZigzagLayout:
    seq_len: int      # N
    world_size: int   # W
    block_size: int   # b (pieces start on block boundaries)

    def __post_init__(self):
        for name in ("seq_len", "world_size", "block_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise TypeError(f"{name} = {value!r}: expected an int")
        if self.seq_len < 0 or self.world_size < 1 or self.block_size < 1:
            raise ValueError(f"ZigzagLayout(seq_len={self.seq_len}, world_size={self.world_size}, "
                             f"block_size={self.block_size}): needs seq_len >= 0, world_size >= 1, block_size >= 1")

    @property
    def num_pieces(self):
        return 2 * self.world_size

    @property
    def piece_blocks(self):
        """P: blocks of every full piece."""
        blocks = -(-self.seq_len // self.block_size)
        return max(1, -(-blocks // self.num_pieces))

    def piece_bounds(self, piece):
        """(start, end) token positions of a piece, end == start when it is empty."""
        if not 0 <= piece < self.num_pieces:
            raise ValueError(f"piece {piece}: outside [0, {self.num_pieces})")
        width = self.piece_blocks * self.block_size
        bounds = [(min(p * width, self.seq_len), min((p + 1) * width, self.seq_len)) for p in range(self.num_pieces)]
        last = max((p for p, (a, e) in enumerate(bounds) if e > a), default=0)
        if last > 0 and bounds[last][1] - bounds[last][0] < self.block_size:
            bounds[last - 1] = (bounds[last - 1][0], self.seq_len)
            bounds[last] = (self.seq_len, self.seq_len)
        return bounds[piece]

    def pieces_of(self, rank):
        """The two pieces rank holds, in its shard's order."""
        if not 0 <= rank < self.world_size:
            raise ValueError(f"rank {rank}: outside [0, {self.world_size})")
        return (rank, self.num_pieces - 1 - rank)

    def shard_len(self, rank):
        return sum(e - a for a, e in (self.piece_bounds(p) for p in self.pieces_of(rank)))

    def last_piece(self):
        """The piece holding the sequence's last query block (the budgets' source)."""
        return max((p for p in range(self.num_pieces) if self.piece_bounds(p)[1] > self.piece_bounds(p)[0]),
                   default=0)

    def owner(self, piece):
        """The rank holding a piece."""
        return piece if piece < self.world_size else self.num_pieces - 1 - piece


def shard(x, rank, world_size, block_size, dim=0):
    """Rank's shard of the whole sequence x (its tokens along dim): its two pieces concatenated."""
    layout = ZigzagLayout(int(x.shape[dim]), world_size, block_size)
    parts = [x.narrow(dim, a, e - a) for a, e in (layout.piece_bounds(p) for p in layout.pieces_of(rank))]
    import torch

    return torch.cat(parts, dim)


def unshard(shards, block_size, dim=0):
    """The whole sequence from every rank's shard (shards[r]: rank r's), inverse of shard()."""
    import torch

    world_size = len(shards)
    seq_len = sum(int(s.shape[dim]) for s in shards)
    layout = ZigzagLayout(seq_len, world_size, block_size)
    pieces = [None] * layout.num_pieces
    for rank, s in enumerate(shards):
        if int(s.shape[dim]) != layout.shard_len(rank):
            raise ValueError(f"shards[{rank}]: {int(s.shape[dim])} tokens along dim {dim}, but the layout of "
                             f"{seq_len} tokens over {world_size} ranks gives it {layout.shard_len(rank)}")
        offset = 0
        for p in layout.pieces_of(rank):
            a, e = layout.piece_bounds(p)
            pieces[p] = s.narrow(dim, offset, e - a)
            offset += e - a
    return torch.cat(pieces, dim)
