"""One point of the attention suite for a profiler: the kernel the dispatcher picks (or the
sm80 kernel, --kernel sm80: the plan's tuning), on the attention suite's masks (masks.py), a
few calls in a row. scripts/gpu-check's `profile` step runs it under Nsight Compute, which
records one of them. Writes no results file."""
import numpy as np
import torch

from . import arguments, kernel_plan, masks
from .attention import DEFAULT_SHAPE
from .config import BLOCK_SIZE

DEFAULT_N, DEFAULT_DENSITY, DEFAULT_CALLS = 32768, 0.1, 3


def add_arguments(ap):
    ap.add_argument("--n", type=int, default=DEFAULT_N)
    ap.add_argument("--density", type=float, default=DEFAULT_DENSITY,
                    help="wanted share of the causal blocks (1 = all)")
    ap.add_argument("--calls", type=int, default=DEFAULT_CALLS)
    ap.add_argument("--shape", type=arguments.shape, default=DEFAULT_SHAPE, help="Q heads, KV heads, head_dim")
    ap.add_argument("--kernel", choices=["auto", "sm80"], default="auto",
                    help="the device's kernel (sm90 on compute capability 9.0) or the sm80 kernel")


def run(args):
    shape, n = args.shape, args.n
    if n % BLOCK_SIZE or not 0.0 < args.density <= 1.0:
        raise SystemExit("--n a multiple of %d, --density in (0, 1]" % BLOCK_SIZE)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    nqb = n // BLOCK_SIZE
    q, k, v, o, *_ = kernel_plan.random_inputs(n, shape)
    plan = kernel_plan.plan(shape, n, q, kernel_plan.index_config(shape.d))
    if args.kernel == "sm80":
        plan.set_tuning(**kernel_plan.SM80)
    plan.set_index(masks.make_order(nqb, rng), masks.make_count(nqb, shape.hq, args.density, rng))
    stats = plan.stats()
    attend = kernel_plan.attend_call(plan, q, k, v, o, torch.cuda.current_stream().cuda_stream)
    for _ in range(args.calls):
        attend()
    torch.cuda.synchronize()
    print("N %d density %.3f kept token pairs %d: %d calls" % (n, stats["density"], stats["kept_token_pairs"],
                                                               args.calls))
    return None
