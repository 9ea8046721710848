"""proxyattn.distributed: ProxyAttn context parallelism on torch.distributed (NCCL on GPUs,
gloo on CPUs). One sequence is sharded over the ranks of a process group in the zigzag layout
(rank r holds pieces r and 2W - 1 - r of 2W); every rank gets the rows, outputs and LSE a single
process computes on the whole sequence::

    q_shard = proxyattn.distributed.shard(q, rank, world_size, block_size=128)   # and k, v
    out, lse = proxyattn.distributed.attention(q_shard, k_shard, v_shard, seq_len=q.shape[0],
                                               return_lse=True)
    out = proxyattn.distributed.unshard(all_out_shards, block_size=128)

A whole transformers causal LM's prefill over the group (model.py)::

    ids = proxyattn.distributed.shard(prompt_ids, rank, world_size, block_size=128)
    logits = proxyattn.distributed.prefill(model, ids, seq_len=len(prompt_ids))   # next token's
"""
from .agreement import DistributedInputError
from .attention import EXCHANGES, ShardPlan, attention
from .layout import ZigzagLayout, shard, unshard
from .model import prefill
from .pieces import plan_rows

__all__ = ["DistributedInputError", "EXCHANGES", "ShardPlan", "ZigzagLayout", "attention", "plan_rows", "prefill",
           "shard", "unshard"]
