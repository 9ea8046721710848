"""Command line of the benchmarks (see __init__.py): `python -m proxyattn.bench SUITE [options]`,
and the reports `table` and `plot` of results files."""
import argparse
import collections
import importlib
import sys
import time

from .results import ENTRY_POINT, command_line, write_result

# A suite: its module in this package (add_arguments(parser); run(args) -> (results doc, file
# name prefix), or None where it writes no file), whether it needs a CUDA device, its help.
Suite = collections.namedtuple("Suite", "module gpu help")
# The suites, one line each: a new suite is its module and its line here.
SUITES = {
    "pytorch": Suite("pytorch", True, "ProxyAttn against cuDNN, FlashAttention-2, FlexAttention and PyTorch; "
                                      "whole-model time to first token"),
    "attention": Suite("attention", True, "the attention kernel at controlled densities against cuDNN, Flex on the "
                                          "same mask and our sm80 kernel (--baseline: A/B of two builds)"),
    "estimate": Suite("estimate", True, "pa_estimate per stage against cuDNN dense (--baseline: A/B of two builds)"),
    "call": Suite("call", True, "one call's device and host time at 4K-32K, as a transformers model makes it"),
    "energy": Suite("energy", True, "joules per call (NVML board energy) and SM clock of each kernel at long N"),
    "chunked": Suite("chunked", True, "chunked prefill and paged K/V on the attention kernels against dense"),
    "cp": Suite("cp", False, "context parallelism (proxyattn.distributed): each step's time, memory and bytes "
                             "against one process; world size 1 on a GPU (NCCL) or several CPU processes (gloo)"),
    "profile": Suite("profile", True, "one attention point a few times, for Nsight Compute (no results file)"),
    "cpu-dispatch": Suite("cpu_dispatch", False, "the CPU forward of several builds of the module (make's, pip's)"),
}
DEFAULT_SUITE = "pytorch"  # `python -m proxyattn.bench [options]`
REPORTS = {"table": "markdown tables for docs/benchmarks.md from results files",
           "plot": "pictures for docs/benchmarks.md from results files"}
DEFAULT_OUT = "bench/results"
DEFAULT_IMG = "docs/img"


def suite_module(name):
    return importlib.import_module(f"{__package__}.{SUITES[name].module}")


def parser(chosen):
    """The command line, with the options of the chosen suite (only its module is imported:
    `table` and `plot` run without torch)."""
    ap = argparse.ArgumentParser(prog=ENTRY_POINT, description="ProxyAttn's benchmarks: one suite per command "
                                 f"(without one: {DEFAULT_SUITE}), and reports of results files")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")
    for name, suite in SUITES.items():
        p = sub.add_parser(name, help=suite.help, description=suite.help)
        if name == chosen:
            p.add_argument("--out", default=DEFAULT_OUT, help="folder of the results file")
            p.add_argument("--prefix", help="results file name prefix (default: the suite's)")
            suite_module(name).add_arguments(p)
    for name, text in REPORTS.items():
        p = sub.add_parser(name, help=text, description=text)
        p.add_argument("results", nargs="+", help="results files")
        if name == "plot":
            p.add_argument("--img", default=DEFAULT_IMG, help="folder of the pictures")
    return ap


def parse(argv):
    """(arguments, the argument list as run): a command line without a command runs DEFAULT_SUITE."""
    if not argv or (argv[0] not in SUITES and argv[0] not in REPORTS and argv[0] not in ("-h", "--help")):
        argv = [DEFAULT_SUITE] + list(argv)
    return parser(argv[0]).parse_args(argv), argv


def main(argv=None):
    args, argv = parse(sys.argv[1:] if argv is None else argv)
    if args.command == "table":
        from . import tables

        return tables.main(args.results)
    if args.command == "plot":
        from . import plots

        return plots.main(args.results, args.img)
    if SUITES[args.command].gpu:
        import torch

        if not torch.cuda.is_available():
            sys.exit(f"{ENTRY_POINT} {args.command}: needs a CUDA device (torch.cuda.is_available() is False)")
    t0 = time.time()
    result = suite_module(args.command).run(args)
    if result is None:
        return
    doc, prefix = result
    doc["command"] = command_line(argv, args.out)
    path = write_result(args.out, doc, prefix if args.prefix is None else args.prefix)
    print("wrote", path, "in %.0f s" % (time.time() - t0))


if __name__ == "__main__":
    main()
