"""What the benchmark scripts share: GPU timing (CUDA events around each call on the current
stream, after warm-up calls, so module load, allocator and compilation stay out of the
numbers) and the results file naming."""
import datetime
import json
import os
import re
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


def write_result(out_dir, benchmark, device_name, doc):
    """Writes doc as <out_dir>/<benchmark>-<date>-<device>.json (the bench/results naming)
    and returns the path."""
    date = datetime.date.today().isoformat()
    slug = re.sub(r"[^A-Za-z0-9]+", "-", device_name).strip("-").lower()
    path = os.path.join(out_dir, f"{benchmark}-{date}-{slug}.json")
    with open(path, "w") as f:
        json.dump(doc, f, indent=1)
    return path
