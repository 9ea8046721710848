"""transformers' serving app (the OpenAI-compatible server of `transformers serve`) with
continuous batching and an attention implementation, started from Python; then one chat
completion of a --tokens-token needle prompt over HTTP (streamed), its answer checked and its
first streamed token timed.

`transformers serve --attn-implementation` takes only eager, sdpa, flash_attention_2/3,
flex_attention or a hub kernel `org/repo` (cli/serving/model_manager.py), so
"paged|proxyattn" cannot go through the command line: this script builds the same app from
transformers' own pieces (ModelManager with the model preloaded, GenerationState with
continuous batching, the handlers, build_server, uvicorn), loads the model with the default
attention and sets `implementation` on it before the first request.

    PYTHONPATH=python python eval/serve_http.py --corpus .corpus --model ~/.cache/proxyattn/qwen2.5-coder-0.5b-hf \
        --implementation paged|proxyattn --out serve-http-proxy.json
"""
import argparse
import json
import pathlib
import random
import threading
import time
import urllib.request

import common
import needle

HEALTH_TIMEOUT_S = 600  # model loading
POLL_S = 0.5
ANSWER_TOKENS = 48  # a chat answer restates the question before the value's 7 digits (a token each)


def start_server(args):
    """The serving app on args.port with the model preloaded and its attention set; returns
    (uvicorn server, its thread, the generation state whose continuous-batching worker must be
    stopped after the server)."""
    import transformers
    import uvicorn
    from transformers.cli.serving.chat_completion import ChatCompletionHandler
    from transformers.cli.serving.completion import CompletionHandler
    from transformers.cli.serving.model_manager import ModelManager
    from transformers.cli.serving.response import ResponseHandler
    from transformers.cli.serving.server import build_server
    from transformers.cli.serving.transcription import TranscriptionHandler
    from transformers.cli.serving.utils import GenerationState

    import proxyattn.hf

    proxyattn.hf.enable(**needle.proxy(args.gamma, args.groups, args.floor, "auto"))
    manager = ModelManager(device=args.device, dtype=args.dtype, force_model=str(args.model))
    for timed in manager.loaded_models.values():
        timed.model.set_attn_implementation(args.implementation)
    cb_config = transformers.ContinuousBatchingConfig(max_memory_percent=args.memory_percent)
    state = GenerationState(continuous_batching=True, cb_config=cb_config)
    app = build_server(manager, ChatCompletionHandler(model_manager=manager, generation_state=state),
                       completion_handler=CompletionHandler(model_manager=manager, generation_state=state),
                       response_handler=ResponseHandler(model_manager=manager, generation_state=state),
                       transcription_handler=TranscriptionHandler(manager, state), generation_state=state)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=args.port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="uvicorn")
    thread.start()
    deadline = time.monotonic() + HEALTH_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{args.port}/health") as reply:
                if reply.status == 200:
                    return server, thread, state
        except OSError:
            time.sleep(POLL_S)
    raise SystemExit(f"the server on port {args.port} did not answer /health within {HEALTH_TIMEOUT_S} s")


def needle_messages(args, tokenizer):
    """A chat of about args.tokens tokens: eval/needle.py's single-needle prompt (haystack,
    needle at args.depth, question), as messages; and the expected value."""
    keys = needle.load_keys(args.corpus)
    rng = random.Random(args.seed)
    key, value = rng.choice(keys), needle.random_value(rng)
    text = common.read_text(args.corpus, args.haystack)
    instruction, question, _, expected = needle.asked("single", [(key, value)])
    haystack = tokenizer.decode(common.token_prefix(tokenizer, text, args.tokens - ANSWER_TOKENS))
    context = needle.insert_needles(haystack, needle.sentences("single", [(key, value)]), args.depth)
    return [{"role": "user", "content": f"{instruction}\n\n{context}\n\n{question}"}], expected


def tagged(messages, tag):
    """messages with a first line naming the request: distinct requests keep the engine from
    reusing an earlier request's cache blocks (its prefix sharing), so each one is prefilled."""
    return [{**m, "content": f"Request {tag}.\n{m['content']}"} for m in messages]


def chat(args, messages):
    """One streamed chat completion: (answer text, seconds to the first content token, total)."""
    body = json.dumps({"model": str(args.model), "messages": messages, "stream": True, "temperature": 0,
                       "max_tokens": ANSWER_TOKENS}).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{args.port}/v1/chat/completions", data=body,
                                     headers={"Content-Type": "application/json"})
    start = time.perf_counter()
    first, pieces = None, []
    with urllib.request.urlopen(request) as reply:
        for line in reply:
            line = line.decode().strip()
            if not line.startswith("data:") or line == "data: [DONE]":
                continue
            delta = json.loads(line[len("data:"):])["choices"][0].get("delta", {}).get("content")
            if delta:
                first = time.perf_counter() - start if first is None else first
                pieces.append(delta)
    return "".join(pieces), first, time.perf_counter() - start


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", type=pathlib.Path, required=True)
    ap.add_argument("--model", type=pathlib.Path, required=True, help="the model folder acquire.py wrote")
    ap.add_argument("--implementation", required=True, choices=["paged|sdpa", "paged|proxyattn"])
    ap.add_argument("--out", type=pathlib.Path, required=True)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--dtype", default="bfloat16", help="the served weights' dtype (acquire.py saves float32)")
    ap.add_argument("--tokens", type=int, default=30720, help="prompt tokens (the model's trained context: 32K)")
    ap.add_argument("--depth", type=float, default=0.5)
    ap.add_argument("--haystack", default="pg_essays", choices=list(common.TEXTS))
    ap.add_argument("--requests", type=int, default=3,
                    help="requests of the same prompt, each tagged, one after the other")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--memory-percent", type=float, default=0.5)
    ap.add_argument("--gamma", type=float, default=0.95)
    ap.add_argument("--groups", type=int, default=2)
    ap.add_argument("--floor", type=int, default=2048)
    args = ap.parse_args()

    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(args.model)
    messages, expected = needle_messages(args, tokenizer)
    server, thread, state = start_server(args)
    try:
        runs = []
        for _ in range(args.requests):
            text, first, total = chat(args, tagged(messages, len(runs)))
            runs.append({"answer": text, "first_token_s": first, "total_s": total,
                         "correct": all(e in text for e in expected)})
            print(f"{args.implementation}: first token {first:.3f} s, total {total:.3f} s, "
                  f"correct {runs[-1]['correct']}: {text!r}", flush=True)
    finally:
        server.should_exit = True
        thread.join()
        state.shutdown()  # the app's own shutdown stops only the model manager, not this worker
    sent = tagged(messages, 0)  # every request's length: the tags differ only in their number
    prompt_tokens = len(tokenizer.apply_chat_template(sent, add_generation_prompt=True, tokenize=True,
                                                      return_dict=True)["input_ids"])
    common.write_json(args.out, {"implementation": args.implementation, "prompt_tokens": prompt_tokens,
                                 "expected": expected, "runs": runs, "environment": common.environment()})


if __name__ == "__main__":
    main()
