"""GPU timing shared by the benchmark scripts: CUDA events around each call on the current
stream, after warm-up calls (module load, allocator, compilation stay out of the numbers)."""
import statistics

import torch


def times_ms(fn, repeats, warmup):
    """Milliseconds of `repeats` timed calls of fn() after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return times


def median_ms(fn, repeats, warmup):
    return statistics.median(times_ms(fn, repeats, warmup))
