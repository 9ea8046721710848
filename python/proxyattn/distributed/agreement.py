"""Agreement of the ranks before any data moves: every rank all-gathers one fixed-size
fingerprint of its call (layout, shapes, dtype, settings, its own verdict on its inputs), so
that a rank with a different config or a shard of the wrong length makes every rank raise the
same error instead of leaving the others waiting in a collective of another size."""

# Fields of the fingerprint, in order; a float64 each (ints exactly, floats by value).
_FIELDS = ("seq_len", "world_size", "shard_len", "num_q_heads", "num_kv_heads", "head_dim", "dtype",
           "exchange", "local_error")


class DistributedInputError(ValueError):
    """Raised on every rank when any rank's call differs from the others' or is invalid."""


def _float_of(value):
    """An int, or a float kept bit for bit in a float64."""
    if isinstance(value, float):
        return value
    return float(int(value))


def fingerprint(fields, config):
    """[len(_FIELDS) + len(config)] float64 values: the call's fields, then the settings."""
    return [_float_of(fields[name]) for name in _FIELDS] + [_float_of(v) for v in config]


def config_names(config):
    return list(getattr(config, "_fields", [f"config[{i}]" for i in range(len(config))]))


def agree(fields, config, group, device, local_error, describe_shard):
    """All-gathers the fingerprints and raises DistributedInputError on every rank when they
    differ or a rank reported a local error. fields: _FIELDS' values but local_error (set here);
    local_error: this rank's message or None; describe_shard(rank, shard_len): the message of a
    rank whose shard does not fit the layout, or None."""
    import torch
    import torch.distributed as dist

    fields = dict(fields, local_error=0 if local_error is None else 1)
    mine = fingerprint(fields, config)
    local = torch.tensor(mine, dtype=torch.float64, device=device)
    world = dist.get_world_size(group)
    gathered = [torch.empty_like(local) for _ in range(world)]
    dist.all_gather(gathered, local, group=group)
    rows = [g.tolist() for g in gathered]
    names = list(_FIELDS) + config_names(config)
    problems = []
    for rank, row in enumerate(rows):
        if row[names.index("local_error")]:
            problems.append(f"rank {rank} refused its inputs" + (f": {local_error}" if row == mine and local_error
                                                                 else ""))
        bad = describe_shard(rank, int(row[names.index("shard_len")]))
        if bad:
            problems.append(bad)
    for i, name in enumerate(names):
        if name in ("shard_len", "local_error"):
            continue
        values = [row[i] for row in rows]
        if len(set(values)) > 1:
            shown = ", ".join(f"rank {r}: {_shown(v)}" for r, v in enumerate(values))
            problems.append(f"{name} differs across ranks ({shown})")
    if problems:
        raise DistributedInputError("proxyattn.distributed: " + "; ".join(problems))


def _shown(value):
    return str(int(value)) if float(value).is_integer() else repr(value)


