"""Process groups for the distributed tests: world processes of this machine, each joined to
one group (NCCL with one GPU per rank, else gloo), running a check; a failure fails the test
with the ranks' tracebacks."""
import datetime
import os
import traceback

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

TIMEOUT = datetime.timedelta(seconds=60)


def _rank(rank, world, tmp, backend, check, *args):
    """One process of a test: joins the group, runs check(rank, world, tmp, *args) and leaves
    it; a failure writes its traceback to tmp/error<rank>."""
    device = torch.device("cuda", rank) if backend == "nccl" else None
    if device is not None:
        torch.cuda.set_device(device)
    dist.init_process_group(backend, init_method=f"file://{os.path.join(tmp, 'init')}", rank=rank,
                            world_size=world, timeout=TIMEOUT, **({"device_id": device} if device else {}))
    try:
        check(rank, world, tmp, *args)
    except BaseException:
        with open(os.path.join(tmp, f"error{rank}"), "w") as f:
            f.write(traceback.format_exc())
        raise
    finally:
        dist.destroy_process_group()


def spawn(world, backend, check, tmp, *args):
    """world processes running check (a module-level function) in a group of `backend`."""
    try:
        mp.spawn(_rank, args=(world, tmp, backend, check) + args, nprocs=world, join=True)
    except Exception:
        errors = [open(os.path.join(tmp, f)).read() for f in sorted(os.listdir(tmp)) if f.startswith("error")]
        pytest.fail("\n".join(errors) or "a worker failed")
