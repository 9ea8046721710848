"""GPU timing and the description of the machine, shared by the benchmark suites.

Timing: CUDA events on the current stream around each call (around a batch of calls for
calls under BATCH_MS), after untimed warm-up calls (module load, allocator growth and
compilation stay out of the numbers); the median of the samples is the figure. Methods
compared with each other are sampled in turn (interleaved_median_ms). Callers pass inputs through a Rotation, so that a call never finds
its operands in L2 where the previous call left them.
"""
import itertools
import platform
import random
import statistics
import subprocess
import time

import torch

ROTATION_L2_MULTIPLE = 2  # rotated copies together span at least this many L2 sizes
ROTATION_MAX_COPIES = 8
BATCH_MS, BATCH_MAX_CALLS = 1.0, 64  # timed calls shorter than BATCH_MS run in batches
SPIN_UP_S, SPIN_UP_MATRIX = 3.0, 8192
INTERLEAVE_SEED = 0  # the shuffled orders of interleaved_median_ms's rounds


def _events_ms(fn, calls):
    """Milliseconds per call of `calls` back-to-back calls of fn() between two CUDA events."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(calls):
        fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / calls


def once_ms(fn):
    """Milliseconds of exactly one call of fn() (no probe call, no batching): for calls with
    side effects counted per call, such as the model's attention timers."""
    return _events_ms(fn, 1)


def times_ms(fn, repeats, warmup):
    """Milliseconds per call of fn(): `repeats` samples after `warmup` untimed calls. A call
    shorter than BATCH_MS (timed once first) is sampled in batches of back-to-back calls
    making BATCH_MS (at most BATCH_MAX_CALLS), so that the host's dispatch of each call
    hides behind the previous one instead of counting in its time."""
    if repeats == 0:
        raise ValueError("times_ms: repeats must be >= 1 (warm up with warm_up())")
    warm_up(fn, warmup)
    calls = _calls_per_sample(fn)
    return [_events_ms(fn, calls) for _ in range(repeats)]


def warm_up(fn, calls):
    """`calls` untimed calls of fn(), then a synchronisation."""
    for _ in range(calls):
        fn()
    torch.cuda.synchronize()


def _calls_per_sample(fn):
    """Back-to-back calls of fn() per timed sample: 1, or as many as make BATCH_MS for a call
    shorter than that (timed once here: one extra call)."""
    one = _events_ms(fn, 1)
    return 1 if one >= BATCH_MS else min(BATCH_MAX_CALLS, int(BATCH_MS / max(one, 1e-3)))


def median_ms(fn, repeats, warmup):
    return statistics.median(times_ms(fn, repeats, warmup))


_interleave_order = random.Random(INTERLEAVE_SEED)


def interleaved_median_ms(calls, repeats, warmup):
    """Median milliseconds per call of each callable in `calls` (name -> fn), sampled in
    rounds that take one sample of each, so that slow drifts of the clocks (heat, power
    limits during long runs) fall on all of them alike. Each round runs the callables in a
    new shuffled order (one seeded generator per process, so a run is repeatable): a call that
    follows a long full-power call can find the clocks lowered, and a fixed order would always
    give that place to the same method.
    Warm-up and batching as in times_ms."""
    if repeats == 0:
        raise ValueError("interleaved_median_ms: repeats must be >= 1")
    calls_per_sample = {}
    for name, fn in calls.items():
        warm_up(fn, warmup)
        calls_per_sample[name] = _calls_per_sample(fn)
    samples = {name: [] for name in calls}
    order = list(calls)
    for _ in range(repeats):
        _interleave_order.shuffle(order)
        for name in order:
            samples[name].append(_events_ms(calls[name], calls_per_sample[name]))
    return {name: statistics.median(times) for name, times in samples.items()}


def spin_up(seconds=SPIN_UP_S):
    """Runs bf16 matmuls for a while, so that the first measurements find the GPU at its
    working clocks rather than idle ones."""
    a = torch.randn(SPIN_UP_MATRIX, SPIN_UP_MATRIX, device="cuda", dtype=torch.bfloat16)
    end = time.time() + seconds
    while time.time() < end:
        for _ in range(10):
            a @ a
        torch.cuda.synchronize()


class Rotation:
    """Copies of a set of input tensors, used in turn: next() gives the next set. Enough
    copies that together they exceed ROTATION_L2_MULTIPLE x L2 (one copy when a single set
    already does), so each call reads its inputs from HBM, as in a model's forward pass."""

    def __init__(self, tensors):
        one_set = sum(t.numel() * t.element_size() for t in tensors)
        l2 = torch.cuda.get_device_properties(tensors[0].device).L2_cache_size
        copies = 1 if one_set >= ROTATION_L2_MULTIPLE * l2 else \
            min(ROTATION_MAX_COPIES, -(-ROTATION_L2_MULTIPLE * l2 // one_set))
        self.sets = [tuple(tensors)] + [tuple(t.clone() for t in tensors) for _ in range(copies - 1)]
        self._cycle = itertools.cycle(self.sets)

    def __len__(self):
        return len(self.sets)

    def next(self):
        return next(self._cycle)


def _smi(fields):
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=" + fields, "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30).stdout.strip().splitlines()[0]
        return dict(zip(fields.split(","), (x.strip() for x in out.split(","))))
    except (OSError, IndexError, subprocess.SubprocessError) as e:
        return {"error": str(e)}


def clocks():
    """Current and maximum SM / memory clocks, power and temperature (nvidia-smi)."""
    return _smi("clocks.sm,clocks.max.sm,clocks.mem,clocks.max.mem,power.draw,temperature.gpu")


def _version(module):
    try:
        return __import__(module).__version__
    except ImportError:
        return None


def machine():
    """Device, driver, clocks and software versions, for the results file."""
    import proxyattn

    props = torch.cuda.get_device_properties(0)
    return {
        "device": props.name, "compute_capability": "%d.%d" % (props.major, props.minor),
        "sms": props.multi_processor_count, "l2_bytes": props.L2_cache_size,
        "memory_bytes": props.total_memory, "driver": _smi("driver_version").get("driver_version"),
        "clocks_at_start": clocks(),
        "versions": {"proxyattn": proxyattn.__version__, "torch": torch.__version__, "cuda": torch.version.cuda,
                     "cudnn": torch.backends.cudnn.version(), "triton": _version("triton"),
                     "transformers": _version("transformers"), "python": platform.python_version()},
    }
