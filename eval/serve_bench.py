"""transformers' continuous-batching engine (model.generate_batch) with ProxyAttn
(attn_implementation="paged|proxyattn") against its stock paged SDPA ("paged|sdpa"), in the
same process on the same prompts:

  speed    time to first token (TTFT: the first generated token's timestamp less the request's
           creation) and prefill throughput (prompt tokens / TTFT; for the mixed batch all its
           prompt tokens over the last TTFT) of single prompts of --lengths tokens and of a
           mixed batch (--mixed: long prompts with short ones), for each engine chunk size
           (--chunks: max_batch_tokens, "default" for the engine's own), median of --repeats;
  answers  eval/needle.py's prompts (--needle-lengths, --tasks, --depths) through
           generate_batch with both implementations: scores and the share of same answers.

    PYTHONPATH=python python eval/serve_bench.py --corpus .corpus --model ~/.cache/proxyattn/qwen2.5-coder-0.5b-hf \
        --device cuda --out eval/results/serve-qwen05.json

Lengths past the model's trained context need YaRN (--rope-factor 4 for Qwen2.5's 32K: 128K).
"""
import argparse
import dataclasses
import logging
import pathlib
import statistics
import sys
import time

import common
import needle

STOCK = "paged|sdpa"
PROXY = "paged|proxyattn"
DEFAULT_LENGTHS = [32768, 65536, 131072]
DEFAULT_CHUNKS = ["default", "2048", "16384"]
SHORT_PROMPT = 512  # the short prompts of the mixed batch
SPEED_NEW_TOKENS = 1
WARMUP_TOKENS = 4096


def settings(args):
    return needle.proxy(args.gamma, args.groups, args.floor, args.anchors)


def cb_config(chunk, memory_percent, block_size):
    """The engine's configuration: max_batch_tokens `chunk` ("default": the engine's) and the
    cache sized from memory_percent of the free memory (the estimation states take up to a
    quarter of the cache more)."""
    import transformers

    fields = dict(max_memory_percent=memory_percent, block_size=block_size)
    if chunk != "default":
        fields["max_batch_tokens"] = int(chunk)
    return transformers.ContinuousBatchingConfig(**fields)


class EngineLog(logging.Handler):
    """The engine's resolved max_batch_tokens, from its "Paged cache initialized" message."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.max_batch_tokens = None

    def emit(self, record):
        message = record.getMessage()
        if "max_batch_tokens = " in message:
            self.max_batch_tokens = int(message.split("max_batch_tokens = ")[1].split(",")[0])


def run(model, implementation, inputs, new_tokens, config, stop=False):
    """generate_batch with `implementation`: (outputs in input order, seconds of the call);
    stop: at the model's end-of-sequence tokens (else exactly new_tokens)."""
    import torch
    import transformers

    model.set_attn_implementation(implementation)
    eos = model.generation_config.eos_token_id if stop else -1
    generation = transformers.GenerationConfig(max_new_tokens=new_tokens, do_sample=False, eos_token_id=eos,
                                               pad_token_id=0)
    torch.cuda.synchronize() if torch.cuda.is_available() else None
    start = time.perf_counter()
    with torch.no_grad():
        out = model.generate_batch(inputs, generation_config=generation, continuous_batching_config=config,
                                   record_timestamps=True)
    seconds = time.perf_counter() - start
    results = list(out.values())
    failed = [r.request_id for r in results if r.error is not None or not r.timestamps]
    if failed:
        raise SystemExit(f"{implementation}: requests {failed} failed: {[r.error for r in results if r.error]}")
    return results, seconds


def timing(results):
    ttfts = [r.timestamps[0] - r.created_time for r in results]
    tokens = sum(len(r.prompt_ids) for r in results)
    return {"ttft_s": ttfts, "last_ttft_s": max(ttfts), "prefill_tokens_per_s": tokens / max(ttfts)}


def prompt(tokenizer, text, tokens, tag):
    """`tokens` token ids: a tag line, then the text. Distinct tags keep the engine from sharing
    the prompts' cache blocks (its prefix sharing hashes blocks from the first token on)."""
    head = tokenizer(f"Request {tag}.\n", add_special_tokens=False)["input_ids"]
    return head + common.token_prefix(tokenizer, text, tokens - len(head))


def speed(args, model, tokenizer, log):
    text = common.read_text(args.corpus, args.haystack)
    workloads = {f"single-{n}": [prompt(tokenizer, text, n, 0)] for n in args.lengths}
    if args.mixed:
        sizes = args.mixed + [SHORT_PROMPT] * args.mixed_short
        workloads["mixed"] = [prompt(tokenizer, text, n, i) for i, n in enumerate(sizes)]
    rows = []
    for chunk in args.chunks:
        for implementation in (STOCK, PROXY):  # warm-up: CUDA context, kernels, the library's first plans
            run(model, implementation, [prompt(tokenizer, text, WARMUP_TOKENS, "warm-up")], SPEED_NEW_TOKENS,
                cb_config(chunk, args.memory_percent, args.block_size))
        for name, inputs in workloads.items():
            row = {"workload": name, "chunk": chunk, "prompt_tokens": [len(i) for i in inputs]}
            for implementation in (STOCK, PROXY):
                runs = [timing(run(model, implementation, inputs, SPEED_NEW_TOKENS,
                                   cb_config(chunk, args.memory_percent, args.block_size))[0])
                        for _ in range(args.repeats)]
                row[implementation] = {"runs": runs,
                                       "ttft_s": statistics.median(r["last_ttft_s"] for r in runs),
                                       "prefill_tokens_per_s": statistics.median(r["prefill_tokens_per_s"] for r in runs)}
            row["max_batch_tokens"] = log.max_batch_tokens
            row["ttft_speedup"] = row[STOCK]["ttft_s"] / row[PROXY]["ttft_s"]
            rows.append(row)
            print(f"{name:>14} chunk {chunk:>7} ({log.max_batch_tokens}): TTFT stock {row[STOCK]['ttft_s']:.3f} s, "
                  f"proxyattn {row[PROXY]['ttft_s']:.3f} s ({row['ttft_speedup']:.2f}x); prefill "
                  f"{row[STOCK]['prefill_tokens_per_s']:.0f} / {row[PROXY]['prefill_tokens_per_s']:.0f} tokens/s",
                  flush=True)
    return rows


def answers(args, model, tokenizer):
    cases_args = argparse.Namespace(seed=args.seed, tasks=args.tasks, haystacks=[args.haystack],
                                    lengths=args.needle_lengths, depths=args.depths, corpus=args.corpus)
    cases = needle.make_cases(cases_args, tokenizer, needle.load_keys(args.corpus))
    config = cb_config(args.chunks[0], args.memory_percent, args.block_size)
    by_implementation = {}
    new_tokens = max(needle.max_new_tokens(task) for task in args.tasks)
    for implementation in (STOCK, PROXY):
        results, seconds = run(model, implementation, [c["ids"] for c in cases], new_tokens, config, stop=True)
        texts = [tokenizer.decode(r.generated_tokens, skip_special_tokens=True) for r in results]
        by_implementation[implementation] = {"texts": texts, "seconds": seconds,
                                             "scores": [needle.score(c, t)[0] for c, t in zip(cases, texts)]}
    same = sum(a == b for a, b in zip(by_implementation[STOCK]["texts"], by_implementation[PROXY]["texts"]))
    summary = {name: 100.0 * sum(r["scores"]) / len(cases) for name, r in by_implementation.items()}
    print(f"answers: {len(cases)} prompts, score stock {summary[STOCK]:.1f}, proxyattn {summary[PROXY]:.1f}, "
          f"same answer {same}/{len(cases)}", flush=True)
    return {"cases": [{k: v for k, v in c.items() if k != "ids"} for c in cases], "results": by_implementation,
            "score": summary, "same_answers": same}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", type=pathlib.Path, required=True, help="the shared corpus folder")
    ap.add_argument("--model", type=pathlib.Path, default=common.default_model_dir(common.DEFAULT_CACHE))
    ap.add_argument("--out", type=pathlib.Path, required=True, help="result JSON file")
    ap.add_argument("--device", default="cuda", choices=["cpu", "cuda"])
    ap.add_argument("--rope-factor", type=float, help="YaRN scaling (4: Qwen2.5 to 128K)")
    ap.add_argument("--lengths", nargs="*", type=int, default=DEFAULT_LENGTHS, help="single-prompt lengths")
    ap.add_argument("--mixed", nargs="*", type=int, default=[32768, 16384],
                    help="long prompts of the mixed batch (none: no mixed batch)")
    ap.add_argument("--mixed-short", type=int, default=8, help=f"{SHORT_PROMPT}-token prompts beside them")
    ap.add_argument("--chunks", nargs="+", default=DEFAULT_CHUNKS, help="max_batch_tokens values, or default")
    ap.add_argument("--block-size", type=int, default=256, help="the engine's page size")
    ap.add_argument("--memory-percent", type=float, default=0.5, help="free memory the engine's cache takes")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--haystack", default="pg_essays", choices=list(common.TEXTS))
    ap.add_argument("--needle-lengths", nargs="*", type=int, default=[16384, 32768],
                    help="lengths of the answer prompts (none: no answers)")
    ap.add_argument("--tasks", nargs="+", default=["single", "multikey"], choices=needle.TASKS)
    ap.add_argument("--depths", nargs="+", type=float, default=[0.1, 0.3, 0.5, 0.7, 0.9])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--gamma", type=float, default=0.95)
    ap.add_argument("--groups", type=int, default=2, help="num_proxy_groups")
    ap.add_argument("--floor", type=int, default=2048, help="min_budget_tokens")
    ap.add_argument("--anchors", default="auto", help="anchor_blocks")
    args = ap.parse_args()
    args.anchors = args.anchors if args.anchors == "auto" else int(args.anchors)

    import proxyattn.hf

    proxyattn.hf.enable(**settings(args))
    model, tokenizer = common.load_model(args.model, device=args.device, rope_factor=args.rope_factor)
    log = EngineLog()
    logging.getLogger("ContinuousBatchingLogger").addHandler(log)
    logging.getLogger("ContinuousBatchingLogger").setLevel(logging.INFO)
    arguments = {k: v.name if isinstance(v, pathlib.Path) else str(v) for k, v in vars(args).items()}
    given = proxyattn.Settings(**settings(args))
    report = {"model": common.model_label(args.model), "rope_factor": args.rope_factor, "settings": settings(args),
              "library_settings": {f.name: getattr(given, f.name) for f in dataclasses.fields(given)},
              "environment": common.environment(), "arguments": arguments}
    if args.lengths or args.mixed:
        report["speed"] = speed(args, model, tokenizer, log)
    if args.needle_lengths:
        report["answers"] = answers(args, model, tokenizer)
    common.write_json(args.out, report)


if __name__ == "__main__":
    sys.exit(main())
