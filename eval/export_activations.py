#!/usr/bin/env python3
"""Exports the post-RoPE q, k, v of chosen layers of a model on a corpus text, one file per
layer (torch.save of {"q", "k", "v": [N, H, d] bf16, "scale", "source"}), for the speed
benchmark on real activations (python -m proxyattn.bench --activations FILE ...).
The files stay outside the repository (a cache folder); each is
N * (Hq + 2 Hkv) * d * 2 bytes; --kv-heads keeps some KV heads and their Q heads (a whole
GQA group each), so that a 32K layer fits the GPU machine's 64 MiB carry.

  python eval/export_activations.py --model-dir ~/.cache/proxyattn/smollm2-hf \
      --text pg_essays --tokens 8192 --layers 3,20 --out ~/.cache/proxyattn/activations
  python eval/export_activations.py --model-dir ~/.cache/proxyattn/qwen2.5-coder-0.5b-hf \
      --tokens 32768 --layers 12 --kv-heads 0 --out .activations
"""
import argparse
import os
import pathlib
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from attention_accuracy import capture_qkv  # noqa: E402
from common import TEXTS, load_model, model_label, read_text, token_prefix  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model-dir", required=True)
    ap.add_argument("--corpus", default=str(pathlib.Path(__file__).resolve().parents[2] / "shared" / "corpus"))
    ap.add_argument("--text", default="pg_essays", choices=sorted(TEXTS))
    ap.add_argument("--tokens", type=int, default=8192)
    ap.add_argument("--layers", default="0", help="comma-separated layer numbers")
    ap.add_argument("--out", required=True, help="folder for the files (outside the repository)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                    help="cpu: float32 model; cuda: bfloat16 model (the files are bf16 either way)")
    ap.add_argument("--rope-factor", type=float,
                    help="YaRN RoPE scaling by this factor, for inputs past the trained context (out of distribution)")
    ap.add_argument("--kv-heads", default="", help="comma-separated KV heads to keep (default all)")
    args = ap.parse_args()
    layers = [int(x) for x in args.layers.split(",")]
    model, tokenizer = load_model(args.model_dir, device=args.device, rope_factor=args.rope_factor)
    ids = token_prefix(tokenizer, read_text(args.corpus, args.text), args.tokens)
    cap = capture_qkv(model, ids, keep=set(layers))
    label = model_label(args.model_dir)
    rope = f"-yarn{args.rope_factor:g}" if args.rope_factor else ""
    rope_note = f" (YaRN RoPE x{args.rope_factor:g})" if args.rope_factor else ""
    os.makedirs(os.path.expanduser(args.out), exist_ok=True)
    for layer in layers:
        q, k, v = (t.to(torch.bfloat16) for t in cap.layers[layer])
        heads = ""
        if args.kv_heads:
            kv = [int(x) for x in args.kv_heads.split(",")]
            group = q.shape[1] // k.shape[1]  # Q heads per KV head
            if any(h < 0 or h >= k.shape[1] for h in kv):
                sys.exit(f"--kv-heads: {kv} outside the layer's {k.shape[1]} KV heads")
            q = q[:, [h * group + i for h in kv for i in range(group)]].contiguous()
            k, v = k[:, kv].contiguous(), v[:, kv].contiguous()
            heads = f", KV heads {args.kv_heads} and their Q heads"
        path = os.path.join(os.path.expanduser(args.out), f"{args.model_dir.rstrip('/').split('/')[-1]}-"
                                                          f"{args.text}-{args.tokens}{rope}-layer{layer}"
                                                          f"{'-kv' + args.kv_heads.replace(',', '_') if args.kv_heads else ''}.pt")
        torch.save({"q": q, "k": k, "v": v, "scale": float(cap.scaling[layer]),
                    "source": f"{label}, {args.text} first {args.tokens} tokens{rope_note}, layer {layer}{heads}"}, path)
        print(path, tuple(q.shape), tuple(k.shape), f"{os.path.getsize(path) / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
