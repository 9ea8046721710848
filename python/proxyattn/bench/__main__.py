"""Command line of the benchmark suite (see __init__.py)."""
import argparse
import sys
import time

from .config import BLOCK_SIZE, GAMMAS, MODEL_SIZES, MODELS, SHAPES, SIZES, SUITES


def _ints(text):
    return [int(x) for x in text.split(",") if x]


def _floats(text):
    return [float(x) for x in text.split(",") if x]


def measure(args):
    for name, given, known in (("--suite", args.suite, SUITES), ("--shapes", args.shapes, SHAPES),
                               ("--model", [args.model], MODELS)):
        unknown = [x for x in given if x not in known]
        if unknown:
            sys.exit(f"{name}: {unknown} not among {sorted(known)}")
    import torch

    from . import compare, model
    from .timing import machine, spin_up, write_result

    if not torch.cuda.is_available():
        sys.exit("python -m proxyattn.bench: needs a CUDA device (torch.cuda.is_available() is False)")
    t0 = time.time()
    doc = {"benchmark": "proxyattn.bench", "suites": args.suite, "machine": machine(),
           # the command line with the output folder named OUT (a machine's own path stays out)
           "command": " ".join(["python -m proxyattn.bench"] +
                               ["OUT" if a == args.out else a for a in sys.argv[1:]])}
    print("machine:", doc["machine"], flush=True)
    spin_up()
    if "compare" in args.suite:
        doc["compare"] = {"shapes": {s: SHAPES[s] for s in args.shapes}, "gammas": args.gammas,
                          "block_size": BLOCK_SIZE,
                          "config": "library defaults (b=128, s=4, 2048-token floor, absolute budgets, "
                                    "sink and diagonal forced) except gamma, g and anchor_blocks",
                          "anchor_blocks": args.anchor_blocks,
                          "cases": compare.run(args.sizes, args.shapes, args.gammas, args.activations,
                                               not args.no_flex, not args.no_torch_estimate,
                                               args.anchor_blocks, args.activation_groups)}
    if "model" in args.suite:
        doc["model"] = model.run(args.model_sizes, args.model_layers, args.model)
    doc["wall_s"] = time.time() - t0
    print("wrote", write_result(args.out, doc, args.prefix), "in %.0f s" % doc["wall_s"])


def main():
    ap = argparse.ArgumentParser(prog="python -m proxyattn.bench",
                                 description="ProxyAttn against dense attention and peers on the GPU")
    sub = ap.add_subparsers(dest="command")
    plot = sub.add_parser("plot", help="pictures for docs/benchmarks.md from a results file")
    plot.add_argument("results", nargs="+", help="results files (e.g. the compare and the model run)")
    plot.add_argument("--img", default="docs/img")
    table = sub.add_parser("table", help="markdown tables for docs/benchmarks.md from results files")
    table.add_argument("results", nargs="+")
    ap.add_argument("--suite", default="compare,model", type=lambda s: s.split(","),
                    help="compare, model or both (default)")
    ap.add_argument("--out", default="bench/results", help="folder of the results file")
    ap.add_argument("--prefix", default="", help="results file name prefix")
    ap.add_argument("--sizes", default=",".join(map(str, SIZES)), type=_ints)
    ap.add_argument("--shapes", default=",".join(SHAPES), type=lambda s: s.split(","))
    ap.add_argument("--gammas", default=",".join(map(str, GAMMAS)), type=_floats)
    ap.add_argument("--activations", nargs="*", default=[],
                    help="captured q/k/v files (torch.save of {q, k, v: [N, H, d], scale, source})")
    ap.add_argument("--activation-groups", default="1", type=_ints,
                    help="proxy group counts g to run on each captured input (each must divide its KV heads)")
    ap.add_argument("--no-flex", action="store_true")
    ap.add_argument("--no-torch-estimate", action="store_true")
    ap.add_argument("--anchor-blocks", default="auto", type=lambda s: s if s == "auto" else int(s),
                    help="config.anchor_blocks of ProxyAttn: 0-8 or auto (the library default)")
    ap.add_argument("--model-sizes", default=",".join(map(str, MODEL_SIZES)), type=_ints)
    ap.add_argument("--model", default="llama3.1-8b", help=f"the model suite's shape: one of {sorted(MODELS)}")
    ap.add_argument("--model-layers", type=int, help="layers of the model suite's model (default: all of its shape)")
    args = ap.parse_args()
    if args.command == "plot":
        from . import plots

        plots.main(args.results, args.img)
    elif args.command == "table":
        from . import tables

        tables.main(args.results)
    else:
        measure(args)


if __name__ == "__main__":
    main()
