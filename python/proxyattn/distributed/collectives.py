"""The collectives of a call on a torch.distributed process group (NCCL or gloo), with tensors
on the group's device: shards of unequal length gathered through padded buffers."""
import torch
import torch.distributed as dist


def global_rank(group, rank):
    """The default group's number of a rank of group (the src / dst of collectives)."""
    return rank if group is None else dist.get_global_rank(group, rank)


def gather_shards(x, lengths, group, async_op=False):
    """Every rank's shard of x [n_r, ...] (lengths[r] = n_r): a list of per-rank tensors, or
    (work, finish) with async_op, finish() returning the list once work is done."""
    width = max(lengths)
    padded = x.new_zeros((width,) + tuple(x.shape[1:]))
    padded[:x.shape[0]] = x
    out = [torch.empty_like(padded) for _ in lengths]
    work = dist.all_gather(out, padded, group=group, async_op=async_op)

    def finish():
        if work is not None and async_op:
            work.wait()
        return [o[:n] for o, n in zip(out, lengths)]

    return (work, finish) if async_op else finish()


def exchange(send, send_counts, recv_counts, group):
    """all_to_all of rows: send [sum(send_counts), ...] split by destination rank -> the rows
    each rank sent here, [sum(recv_counts), ...] in rank order."""
    recv = send.new_empty((sum(recv_counts),) + tuple(send.shape[1:]))
    dist.all_to_all_single(recv, send, recv_counts, send_counts, group=group)
    return recv


def exchange_counts(counts, group, device):
    """all_to_all of one int per rank pair: counts[r] = rows this rank sends to r -> the rows
    each rank sends here."""
    send = torch.tensor(counts, dtype=torch.int64, device=device)
    recv = torch.empty_like(send)
    dist.all_to_all_single(recv, send, group=group)
    return recv.tolist()
