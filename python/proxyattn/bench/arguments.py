"""Command-line argument types and groups the suites share."""
import argparse
import collections

# A model shape of the kernel suites: Q heads, KV heads, head_dim.
Shape = collections.namedtuple("Shape", "hq hkv d")
HEAD_DIMS = (64, 128)  # the GPU kernels' head dimensions


def ints(text):
    return [int(x) for x in text.split(",") if x]


def floats(text):
    return [float(x) for x in text.split(",") if x]


def names(text):
    return [x for x in text.split(",") if x]


def shape(text):
    """HQ,HKV,D: Q heads a multiple of KV heads, a head_dim of the GPU kernels."""
    try:
        hq, hkv, d = (int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected HQ,HKV,D (e.g. 32,8,128)") from None
    if hkv < 1 or hq % hkv or d not in HEAD_DIMS:
        raise argparse.ArgumentTypeError(f"{text}: Q heads a multiple of KV heads, head_dim one of {HEAD_DIMS}")
    return Shape(hq, hkv, d)


def known(option, given, table):
    """Checks that every name of `given` is a key of `table` (argparse's error otherwise)."""
    unknown = [x for x in given if x not in table]
    if unknown:
        raise SystemExit(f"{option}: {unknown} not among {sorted(table)}")


def add_baseline(ap):
    """--baseline DIR, --baseline-label TEXT: a second build of the library (its shared
    libproxyattn, e.g. scripts/gpu-check's `baseline` step) timed in the same rounds as ours."""
    ap.add_argument("--baseline", default="", help="build folder of a second library (libproxyattn.so) to time "
                                                   "next to ours")
    ap.add_argument("--baseline-label", default="", help="what the baseline build is (recorded)")


def baseline_label(args):
    """The results file's "baseline" field: the label, else the folder, else None."""
    return args.baseline_label or args.baseline or None
