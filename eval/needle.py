"""Needle in a haystack, in the style of RULER's NIAH tasks (written anew): dense attention
against ProxyAttn prefill on the same prompts, greedy answers, exact match.

    PYTHONPATH=python python eval/needle.py --corpus ../shared/corpus \
        --model ~/.cache/proxyattn/smollm2-hf --out eval/results/needle.json

A needle is the sentence "One of the special magic numbers for {key} is: {value}." placed at
a sentence boundary at a given depth of a haystack (an essay collection or a novel, cut so
that the whole chat prompt has the target length in the model's own tokens). Keys are words
from words.txt, values random 7-digit numbers. Tasks:
A length counts the prompt and the answer tokens together (as RULER does): the prompt has
length - max_new_tokens(task) tokens (16; 64 for the tasks that answer with a list), so that a
case at the trained context (8K for SmolLM2, 32K for Qwen2.5-Coder) stays inside the model's
positions.
  single      one needle; the question asks for its key.
  multikey    four needles with different keys; the question asks for one of them.
  multivalue  four needles with the same key and different values; all four are asked for.
  multiquery  four needles with different keys; the question asks for two of them.
  vt          variable tracking: a chain "VAR A = 12345. VAR B = VAR A. ..." of five
              variables; the question asks for every variable that holds the value.
  cwe, fwe    RULER's aggregation tasks (common and frequent words extraction,
              eval/aggregation.py): no haystack and no depth, the answer spread over the whole
              prompt; one case per length (the first --haystacks and --depths entry stands for
              all).
The question follows the text, and the answer is primed with RULER's answer prefix. A case
scores 1 when every asked value (vt: every variable name) appears in the greedy answer; the
share of them found is recorded too (RULER's string-match-all score, case-insensitive). Every
mode sees the same prompts: "dense" runs transformers' SDPA attention, the others proxyattn.hf with their settings
(prefill only; decoding is dense in every mode).
"""
import argparse
import itertools
import json
import pathlib
import random
import re
import string
import time

import aggregation
import common

DEFAULT_LENGTHS = [2048, 4096, 8192]
DEFAULT_DEPTHS = [0.1, 0.3, 0.5, 0.7, 0.9]
DEFAULT_TASKS = ["single", "multikey"]
TASKS = ["single", "multikey", "multivalue", "multiquery", "vt", *aggregation.TASKS]
MULTIKEY_NEEDLES = 4
MULTIVALUE_NEEDLES = 4
MULTIQUERY_NEEDLES, MULTIQUERY_ASKED = 4, 2
VT_CHAIN = 5            # variables of the variable-tracking chain
VT_NAME_LETTERS = 5     # variable names: random upper-case letters (RULER's recipe)
VT_DIGITS = 5
VALUE_DIGITS = 7
MAX_NEW_TOKENS = 16     # single and multikey: one 7-digit value
LIST_NEW_TOKENS = 64    # the tasks that answer with a list (Qwen spells digits one token each)
PREFILL_REPEATS = 3  # timed prefills per case and mode (--time-prefill, GPU)
KEY_PATTERN = re.compile(r"^[a-z]{5,10}$")  # plain lower-case words make unambiguous keys
SENTENCE_END = re.compile(r"(?<=[.!?])\s+")

NEEDLE = "One of the special magic numbers for {key} is: {value}."
INSTRUCTION = ("Some special magic numbers are hidden within the following text. Make sure to memorize it. "
               "I will quiz you about the numbers afterwards.")
QUESTION = "What is the special magic number for {key} mentioned in the provided text?"
ANSWER_PREFIX = "The special magic number for {key} mentioned in the provided text is"
LIST_QUESTION = "What are all the special magic numbers for {keys} mentioned in the provided text?"
LIST_ANSWER_PREFIX = "The special magic numbers for {keys} mentioned in the provided text are"
VT_SENTENCE = "VAR {key} = {value}."
VT_INSTRUCTION = "Memorize and track the chain(s) of variable assignment hidden in the following text."
VT_QUESTION = "Question: Find all variables that are assigned the value {value} in the text above."
VT_ANSWER_PREFIX = ("Answer: According to the chain(s) of variable assignment in the text above, {count} variables "
                    "are assigned the value {value}, they are:")

# Attention modes: name -> proxyattn.hf settings (None: transformers' SDPA, the dense reference).
BLOCK = 128


def proxy(gamma, groups, floor, anchors=0, **extra):
    """proxyattn.hf settings; anchors="auto" is the library's default (PA_ANCHOR_BLOCKS_AUTO)."""
    return dict(gamma=gamma, num_proxy_groups=groups, block_size=BLOCK, min_budget_tokens=floor,
                anchor_blocks=anchors, **extra)


MODES = {
    "dense": None,
    "proxy_g0.95_mb2048_p1": proxy(0.95, 1, 2048),
    "proxy_g0.95_mb512_p1": proxy(0.95, 1, 512),
    "proxy_g0.90_mb512_p1": proxy(0.90, 1, 512),
    "proxy_g0.95_mb512_p3": proxy(0.95, 3, 512),
    # Qwen2.5-Coder (2 KV heads): one proxy per KV head
    "proxy_g0.95_mb2048_p2": proxy(0.95, 2, 2048),
    "proxy_g0.90_mb2048_p2": proxy(0.90, 2, 2048),
    "proxy_g0.95_mb512_p2": proxy(0.95, 2, 512),
    # the sparse setting with the first layer dense (proxyattn.hf's dense_layers)
    "proxy_g0.90_mb512_p1_dense0": proxy(0.90, 1, 512, dense_layers=[0]),
    # every block kept (the floor covers the whole row): our kernels and integration without sparsity
    "proxy_all_blocks": proxy(1.0, 2, 1 << 20),
    "proxy_g0.98_mb2048_p2": proxy(0.98, 2, 2048),
    "proxy_g0.95_mb4096_p2": proxy(0.95, 2, 4096),
    "proxy_g0.95_mb2048_p2_dense0": proxy(0.95, 2, 2048, dense_layers=[0]),
    # anchors: each head's T blocks of largest last-block mass forced for its group
    "proxy_g0.95_mb2048_p2_a1": proxy(0.95, 2, 2048, 1),
    "proxy_g0.95_mb2048_p2_a2": proxy(0.95, 2, 2048, 2),
    "proxy_g0.95_mb2048_p2_a4": proxy(0.95, 2, 2048, 4),
    "proxy_g0.95_mb2048_p2_a8": proxy(0.95, 2, 2048, 8),
    "proxy_g0.98_mb2048_p2_a4": proxy(0.98, 2, 2048, 4),
    "proxy_g0.90_mb2048_p2_a2": proxy(0.90, 2, 2048, 2),
    # the library's default anchors (32 per group: T = 4 for g = 2, 2 for g = 1 on 14 Q heads)
    "proxy_g0.95_mb2048_p2_auto": proxy(0.95, 2, 2048, "auto"),
    "proxy_g0.95_mb2048_p1_auto": proxy(0.95, 1, 2048, "auto"),
    "proxy_g0.90_mb512_p1_auto": proxy(0.90, 1, 512, "auto"),
    "proxy_g0.90_mb2048_p2_auto": proxy(0.90, 2, 2048, "auto"),
    "proxy_g0.95_mb2048_p2_auto_dense0": proxy(0.95, 2, 2048, "auto", dense_layers=[0]),
    "proxy_g0.98_mb2048_p2_auto": proxy(0.98, 2, 2048, "auto"),
    # the anchor rule before 2026-12-07 (anchors counted in the head's budget), beside today's on-top default
    "proxy_g0.95_mb2048_p2_auto_inbudget": proxy(0.95, 2, 2048, "auto", anchor_mode="in_budget"),
    "proxy_g0.95_mb2048_p1_auto_inbudget": proxy(0.95, 1, 2048, "auto", anchor_mode="in_budget"),
    # the paper's budget rule beside today's ranked default (issue #28)
    "proxy_g0.95_mb2048_p2_auto_paper": proxy(0.95, 2, 2048, "auto", budget_rule="paper"),
    "proxy_g0.95_mb2048_p1_auto_paper": proxy(0.95, 1, 2048, "auto", budget_rule="paper"),
}
DEFAULT_MODES = ["dense", "proxy_g0.95_mb2048_p1", "proxy_g0.95_mb512_p1", "proxy_g0.90_mb512_p1"]


def load_keys(corpus):
    words = (pathlib.Path(corpus).expanduser() / "words.txt").read_text(encoding="utf-8", errors="replace").split()
    return sorted({w for w in words if KEY_PATTERN.match(w)})


def random_value(rng):
    return str(rng.randrange(10 ** (VALUE_DIGITS - 1), 10 ** VALUE_DIGITS))


def max_new_tokens(task):
    if task in aggregation.TASKS:
        return aggregation.NEW_TOKENS[task]
    return MAX_NEW_TOKENS if task in ("single", "multikey") else LIST_NEW_TOKENS


def sentences(task, needles):
    """The sentences hidden in the haystack: draw_cases' (key, value) pairs, the asked first."""
    template = VT_SENTENCE if task == "vt" else NEEDLE
    return [template.format(key=key, value=value) for key, value in needles]


def asked(task, needles):
    """(instruction, question, answer prefix, expected strings) of a case."""
    if task in ("single", "multikey"):
        key, value = needles[0]
        return INSTRUCTION, QUESTION.format(key=key), ANSWER_PREFIX.format(key=key), [value]
    if task in aggregation.TASKS:
        return aggregation.asked(task, needles)
    if task == "vt":
        value = needles[0][1]
        names = [key for key, _ in needles]
        return (VT_INSTRUCTION, VT_QUESTION.format(value=value),
                VT_ANSWER_PREFIX.format(count=len(names), value=value), names)
    pairs = needles if task == "multivalue" else needles[:MULTIQUERY_ASKED]
    keys = " and ".join(dict.fromkeys(key for key, _ in pairs))
    return INSTRUCTION, LIST_QUESTION.format(keys=keys), LIST_ANSWER_PREFIX.format(keys=keys), [v for _, v in pairs]


def chat_prompt(tokenizer, context, instruction, question, prefix):
    """The token ids of the whole prompt: chat template with the question, then the answer
    prefix as the start of the assistant's turn."""
    user = f"{instruction}\n{context}\n{question}"
    ids = tokenizer.apply_chat_template([{"role": "user", "content": user}], add_generation_prompt=True,
                                        return_dict=True)["input_ids"]
    return list(ids) + tokenizer(prefix, add_special_tokens=False)["input_ids"]


def insert_needles(haystack, needles, depth):
    """Haystack text with the needle sentences inserted at the sentence boundary nearest to
    `depth` (fraction of the text's characters); several needles are spread after it."""
    bounds = [m.end() for m in SENTENCE_END.finditer(haystack)]
    if not bounds:
        bounds = [len(haystack)]
    pieces, last = [], 0
    for i, needle in enumerate(needles):
        frac = depth + (1.0 - depth) * i / len(needles)  # the first at `depth`, others later
        target = frac * len(haystack)
        pos = min((b for b in bounds if b >= last), key=lambda b: abs(b - target), default=len(haystack))
        pieces += [haystack[last:pos], needle + " "]
        last = pos
    pieces.append(haystack[last:])
    return "".join(pieces)


def build_case(tokenizer, text, length, depth, needles, question):
    """Prompt ids of exactly about `length` tokens: the haystack is cut so that template,
    needles, question and haystack together fill the length (checked, retried shorter).
    question: (instruction, question, answer prefix) of asked()."""
    overhead = len(chat_prompt(tokenizer, " ".join(needles), *question))
    budget = length - overhead
    for _ in range(8):  # re-tokenising the joined text can differ by a few tokens
        hay_ids = common.token_prefix(tokenizer, text, budget)
        context = insert_needles(tokenizer.decode(hay_ids), needles, depth)
        ids = chat_prompt(tokenizer, context, *question)
        if len(ids) <= length:
            return ids
        budget -= len(ids) - length
    raise RuntimeError(f"could not fit the prompt in {length} tokens")


def draw_cases(args, keys):
    """The cases' random draws, in order (--tasks x --haystacks x --lengths x --depths, seed
    args.seed): per case (task, haystack, length, depth, needles), the needles as (key, value)
    with the asked one first (it is placed at `depth`). Every case's draws depend on the ones
    before it, so a single case is reproduced by walking this sequence."""
    rng = random.Random(args.seed)
    for task, name, length, depth in itertools.product(args.tasks, args.haystacks, args.lengths, args.depths):
        if task in aggregation.TASKS:  # one case per length: words, not a haystack
            if (name, depth) == (args.haystacks[0], args.depths[0]):
                yield task, aggregation.SOURCE[task], length, None, aggregation.draw(task, rng, keys)
            continue
        if task == "multivalue":
            key = rng.choice(keys)
            yield task, name, length, depth, [(key, random_value(rng)) for _ in range(MULTIVALUE_NEEDLES)]
            continue
        if task == "vt":
            names = []
            while len(names) < VT_CHAIN:
                name_ = "".join(rng.choice(string.ascii_uppercase) for _ in range(VT_NAME_LETTERS))
                if name_ not in names:
                    names.append(name_)
            value = str(rng.randrange(10 ** (VT_DIGITS - 1), 10 ** VT_DIGITS))
            yield task, name, length, depth, [(names[0], value)] + [
                (names[i], f"VAR {names[i - 1]}") for i in range(1, VT_CHAIN)]
            continue
        n_needles = {"single": 1, "multikey": MULTIKEY_NEEDLES, "multiquery": MULTIQUERY_NEEDLES}[task]
        chosen = rng.sample(keys, n_needles)
        values = [random_value(rng) for _ in chosen]
        if task == "multiquery":
            targets = rng.sample(range(n_needles), MULTIQUERY_ASKED)  # the needles asked for
        else:
            targets = [rng.randrange(n_needles)]
        order = targets + [i for i in range(n_needles) if i not in targets]
        yield task, name, length, depth, [(chosen[i], values[i]) for i in order]


def build_prompt(tokenizer, text, length, depth, needles, task="single"):
    """Token ids of a case whose needles are draw_cases' (key, value) pairs, the asked first;
    the prompt leaves room for the task's answer inside `length`."""
    if task in aggregation.TASKS:
        return aggregation.build(tokenizer, task, needles, length - max_new_tokens(task), chat_prompt)
    instruction, question, prefix, _ = asked(task, needles)
    return build_case(tokenizer, text, length - max_new_tokens(task), depth, sentences(task, needles),
                      (instruction, question, prefix))


def make_cases(args, tokenizer, keys):
    texts = {name: common.read_text(args.corpus, name) for name in args.haystacks}
    cases = []
    for task, name, length, depth, needles in draw_cases(args, keys):
        ids = build_prompt(tokenizer, texts.get(name), length, depth, needles, task)
        expected = asked(task, needles)[3]
        needle_task = task not in aggregation.TASKS
        cases.append({"task": task, "haystack": name, "length": length, "tokens": len(ids), "depth": depth,
                      "key": needles[0][0] if needle_task else "", "value": ", ".join(expected),
                      "expected": expected,
                      "distractors": len(needles) - len(expected) if needle_task and task != "vt" else 0,
                      "ids": ids})
    return cases


def score(case, text):
    """(1 if every expected string is in the answer else 0, the share of them found): the
    share is RULER's string-match-all score (case-insensitive), the first a stricter one."""
    answer = text.lower()
    found = sum(x.lower() in answer for x in case["expected"])
    return int(found == len(case["expected"])), found / len(case["expected"])


class CountSparseCalls:
    """Counts the prefill calls that really ran ProxyAttn (proxyattn.hf falls back to SDPA for
    decoding and short prompts), so the results show the sparse path was taken."""

    def __init__(self, hf_module):
        self.hf, self.calls = hf_module, 0

    def __enter__(self):
        self.original = self.hf._api.attention

        def counting(*args, **kwargs):
            self.calls += 1
            return self.original(*args, **kwargs)

        self.hf._api.attention = counting
        return self

    def __exit__(self, *exc):
        self.hf._api.attention = self.original


def answer(model, tokenizer, ids, stop_ids, new_tokens=MAX_NEW_TOKENS):
    import torch  # here, so that the prompt and scoring helpers import without it (tests)

    with torch.no_grad():
        out = model.generate(torch.tensor([ids], device=model.device), max_new_tokens=new_tokens,
                             do_sample=False, eos_token_id=stop_ids, pad_token_id=stop_ids[0])
    return tokenizer.decode(out[0, len(ids):], skip_special_tokens=True)


def prefill_seconds(model, ids):
    """Time of one prefill of the prompt (the decoder only, no logits), on a GPU: the time to
    first token without the one-token head and sampling. Median of PREFILL_REPEATS after a
    warm-up (the first call of a mode builds plans and compiles nothing else)."""
    import torch

    x = torch.tensor([ids], device=model.device)
    times = []
    with torch.no_grad():
        for _ in range(PREFILL_REPEATS + 1):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            model.model(x)
            torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
    return sorted(times[1:])[PREFILL_REPEATS // 2]


def reuse_modes(cases, paths, rope_factor):
    """Copies into `cases` the results of every mode that the earlier result files `paths` (same
    seed, case arguments and RoPE scaling; a later file's mode wins) already have; returns
    {mode: settings} and {mode: seconds} of those."""
    modes, seconds = {}, {}
    for path in paths:
        old = json.loads(pathlib.Path(path).read_text())
        same = old.get("rope_factor") == rope_factor and len(old["cases"]) == len(cases) and all(
            (o["task"], o["haystack"], o["length"], o["depth"], o["key"], o["value"], o["tokens"]) ==
            (c["task"], c["haystack"], c["length"], c["depth"], c["key"], c["value"], len(c["ids"]))
            for o, c in zip(old["cases"], cases))
        if not same:
            raise SystemExit(f"--reuse {path}: its cases are not these (other seed, arguments or --rope-factor?)")
        for o, c in zip(old["cases"], cases):
            for field in ("answers", "correct", "found", "sparse_layer_calls", "prefill_ms"):
                if field in o:
                    c.setdefault(field, {}).update(o[field])
        modes.update(old["modes"])
        seconds.update(old["seconds_per_mode"])
    return modes, seconds


def summary_table(cases, modes):
    """Markdown: exact-match percentage per task and length, one column per mode."""
    lines = ["| task | tokens | cases | " + " | ".join(modes) + " |",
             "|---|---|---|" + "---|" * len(modes)]
    groups = sorted({(c["task"], c["length"]) for c in cases})
    for task, length in groups + [("all", None)]:
        sel = [c for c in cases if task == "all" or (c["task"] == task and c["length"] == length)]
        scores = [100.0 * sum(c["correct"][m] for c in sel) / len(sel) for m in modes]
        lines.append(f"| {task} | {length or 'all'} | {len(sel)} | " + " | ".join(f"{s:.0f}" for s in scores) + " |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", type=pathlib.Path, required=True, help="the shared corpus folder")
    ap.add_argument("--model", type=pathlib.Path, default=common.default_model_dir(common.DEFAULT_CACHE))
    ap.add_argument("--out", type=pathlib.Path, required=True, help="result JSON file")
    ap.add_argument("--lengths", nargs="+", type=int, default=DEFAULT_LENGTHS)
    ap.add_argument("--depths", nargs="+", type=float, default=DEFAULT_DEPTHS)
    ap.add_argument("--tasks", nargs="+", default=DEFAULT_TASKS, choices=TASKS)
    ap.add_argument("--haystacks", nargs="+", default=list(common.TEXTS), choices=list(common.TEXTS))
    ap.add_argument("--modes", nargs="+", default=DEFAULT_MODES, choices=list(MODES))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="CPU threads (0: all cores)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                    help="cpu: float32 model, the library's CPU backend; cuda: bfloat16 model, its GPU kernels")
    ap.add_argument("--time-prefill", action="store_true",
                    help="on a GPU, also time each case's prefill per mode (prefill_seconds)")
    ap.add_argument("--rope-factor", type=float,
                    help="YaRN RoPE scaling by this factor, for prompts past the trained context (out of distribution)")
    ap.add_argument("--reuse", nargs="+", type=pathlib.Path,
                    help="earlier result files of the same cases (e.g. one mode each, run side by side): "
                         "their modes are copied, not run again")
    args = ap.parse_args()

    import proxyattn.hf

    common.set_threads(args.threads)
    if args.time_prefill and args.device != "cuda":
        raise SystemExit("--time-prefill: GPU timings only (--device cuda)")
    model, tokenizer = common.load_model(args.model, device=args.device, rope_factor=args.rope_factor)
    stop_ids = [tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")]
    keys = load_keys(args.corpus)
    cases = make_cases(args, tokenizer, keys)
    print(f"{len(cases)} cases, lengths {sorted({c['tokens'] for c in cases})}")
    modes, seconds = reuse_modes(cases, args.reuse, args.rope_factor) if args.reuse else ({}, {})
    modes.update({m: MODES[m] for m in args.modes if m not in modes})

    def write():
        """The result file with the modes finished so far."""
        done = {m: modes[m] for m in modes if m in seconds}
        common.write_json(args.out, {"model": common.model_label(args.model), "environment": common.environment(),
                                     "device": args.device, "rope_factor": args.rope_factor, "modes": done, "seconds_per_mode": seconds,
                                     "max_new_tokens": {t: max_new_tokens(t) for t in args.tasks}, "seed": args.seed,
                                     "cases": [{k: v for k, v in c.items() if k != "ids"} for c in cases],
                                     "table": summary_table(cases, list(done))})

    for mode in (m for m in args.modes if m not in seconds):
        if MODES[mode] is None:
            model.set_attn_implementation("sdpa")
        else:
            proxyattn.hf.enable(**MODES[mode])
            model.set_attn_implementation(proxyattn.hf.NAME)
        t0 = time.perf_counter()
        for c in cases:
            with CountSparseCalls(proxyattn.hf) as counter:
                text = answer(model, tokenizer, c["ids"], stop_ids, max_new_tokens(c["task"]))
            c.setdefault("sparse_layer_calls", {})[mode] = counter.calls  # layers that ran ProxyAttn
            c.setdefault("answers", {})[mode] = text
            c.setdefault("correct", {})[mode], c.setdefault("found", {})[mode] = score(c, text)
            if args.time_prefill:
                c.setdefault("prefill_ms", {})[mode] = round(1e3 * prefill_seconds(model, c["ids"]), 3)
            depth = "-" if c["depth"] is None else f"{c['depth']:.1f}"
            print(f"{mode:24s} {c['task']:8s} {c['haystack']:11s} {c['tokens']:5d} depth {depth} "
                  f"{'ok ' if c['correct'][mode] else 'MISS'} {c['value']} <- {text.strip()!r}", flush=True)
        seconds[mode] = round(time.perf_counter() - t0, 1)
        write()  # after every mode, so that a run stopped by a time limit keeps the modes it finished
    if args.reuse:
        write()  # the merged file, also when every mode came from the earlier files
    print(summary_table(cases, list(modes)))


if __name__ == "__main__":
    main()
