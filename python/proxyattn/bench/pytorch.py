"""ProxyAttn against PyTorch, the suite's two parts in one results file: `compare`
(compare.py: dense cuDNN / FlashAttention-2 / FlexAttention / ours, and per gamma ProxyAttn's
estimation, attention and total against FlexAttention on the same mask and the plain PyTorch
estimation, on the structured input and on captured activations) and `model` (model.py: time
to first token of a Llama-3.1-8B-shaped model). `model` needs transformers."""
import time

from . import arguments
from .config import BLOCK_SIZE, GAMMAS, MODEL_SIZES, MODELS, SHAPES, SIZES

PARTS = ("compare", "model")


def add_arguments(ap):
    ap.add_argument("--parts", "--suite", dest="parts", default=list(PARTS), type=arguments.names,
                    help="compare, model or both (default)")
    ap.add_argument("--sizes", default=list(SIZES), type=arguments.ints)
    ap.add_argument("--shapes", default=list(SHAPES), type=arguments.names)
    ap.add_argument("--gammas", default=list(GAMMAS), type=arguments.floats)
    ap.add_argument("--activations", nargs="*", default=[],
                    help="captured q/k/v files (torch.save of {q, k, v: [N, H, d], scale, source})")
    ap.add_argument("--activation-groups", default=[1], type=arguments.ints,
                    help="proxy group counts g to run on each captured input (each must divide its KV heads)")
    ap.add_argument("--no-flex", action="store_true")
    ap.add_argument("--no-torch-estimate", action="store_true")
    ap.add_argument("--anchor-blocks", default="auto", type=lambda s: s if s == "auto" else int(s),
                    help="config.anchor_blocks of ProxyAttn: 0-8 or auto (the library default)")
    ap.add_argument("--model-sizes", default=list(MODEL_SIZES), type=arguments.ints)
    ap.add_argument("--model", default="llama3.1-8b", help=f"the model part's shape: one of {sorted(MODELS)}")
    ap.add_argument("--model-layers", type=int, help="layers of the model part's model (default: all of its shape)")


def run(args):
    arguments.known("--parts", args.parts, PARTS)
    arguments.known("--shapes", args.shapes, SHAPES)
    arguments.known("--model", [args.model], MODELS)
    from . import compare, model
    from .timing import machine, spin_up

    t0 = time.time()
    doc = {"benchmark": "proxyattn.bench", "suites": args.parts, "machine": machine()}
    print("machine:", doc["machine"], flush=True)
    spin_up()
    if "compare" in args.parts:
        doc["compare"] = {"shapes": {s: SHAPES[s] for s in args.shapes}, "gammas": args.gammas,
                          "block_size": BLOCK_SIZE,
                          "config": "library defaults (b=128, s=4, 2048-token floor, absolute budgets, "
                                    "sink and diagonal forced) except gamma, g and anchor_blocks",
                          "anchor_blocks": args.anchor_blocks,
                          "cases": compare.run(args.sizes, args.shapes, args.gammas, args.activations,
                                               not args.no_flex, not args.no_torch_estimate,
                                               args.anchor_blocks, args.activation_groups)}
    if "model" in args.parts:
        doc["model"] = model.run(args.model_sizes, args.model_layers, args.model)
    doc["wall_s"] = time.time() - t0
    return doc, ""
