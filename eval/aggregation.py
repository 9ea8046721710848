"""RULER's aggregation tasks, written anew from the paper's description, for eval/needle.py:
the answer is spread over the whole context instead of sitting in one place, which is where
a sparse attention that keeps a few blocks per row could lose it.

  cwe  common words extraction: a numbered list of words in which 10 words appear 30 times
       each and the others 3 times each (as many as fill the prompt), shuffled; the question
       asks for the 10 most common words.
  fwe  frequent words extraction: a text of coded words (random 6-letter strings) whose counts
       follow Zipf's law with exponent 2 (count of the word of rank r proportional to r^-2,
       the expected counts rounded, so the ranking is exact); the question asks for the 3
       most frequent.

A case's draw (draw()) fixes the words; build() then fits as many entries as the prompt's
token budget allows (a bisection over the entry count, tokenised with the model's own chat
template), so every length uses the same words. Scored like the needle tasks: every expected
word in the greedy answer, and the share of them found (RULER's string-match-all).
"""
import random
import string

TASKS = ("cwe", "fwe")
SOURCE = {"cwe": "word list", "fwe": "coded words"}  # recorded as the case's "haystack"

CWE_COMMON, CWE_COMMON_COUNT, CWE_RARE_COUNT = 10, 30, 3
CWE_INSTRUCTION = ("Below is a numbered list of words. In these words, some appear more often than others. "
                   "Memorize the ones that appear most often.")
CWE_QUESTION = "Question: What are the 10 most common words in the above list?"
CWE_ANSWER_PREFIX = "Answer: The top 10 words that appear most often in the list are:"

FWE_ASKED, FWE_EXPONENT, FWE_VOCAB, FWE_LETTERS = 3, 2.0, 1000, 6
NEW_TOKENS = {"cwe": 120, "fwe": 50}  # answer room, RULER's numbers (a numbered list of 10, of 3)
FWE_INSTRUCTION = ("Read the following coded text and track the frequency of each coded word. "
                   "Find the three most frequently appeared coded words.")
FWE_QUESTION = ("Question: Do not provide any explanation. What are the three most frequently appeared "
                "words in the above coded text?")
FWE_ANSWER_PREFIX = "Answer: According to the coded text above, the three most frequently appeared words are:"


def draw(task, rng, keys):
    """The words of one case, from the case sequence's rng: cwe {"common", "rare", "seed"}
    (every key in a random order: the first 10 common, the rest rare, as many as fit);
    fwe {"vocab", "seed"} (FWE_VOCAB distinct coded words, by rank). seed orders the entries."""
    if task == "cwe":
        words = rng.sample(keys, len(keys))
        return {"common": words[:CWE_COMMON], "rare": words[CWE_COMMON:], "seed": rng.randrange(2 ** 32)}
    vocab = []
    while len(vocab) < FWE_VOCAB:
        word = "".join(rng.choice(string.ascii_lowercase) for _ in range(FWE_LETTERS))
        if word not in vocab:
            vocab.append(word)
    return {"vocab": vocab, "seed": rng.randrange(2 ** 32)}


def asked(task, spec):
    """(instruction, question, answer prefix, expected words) of a case."""
    if task == "cwe":
        return CWE_INSTRUCTION, CWE_QUESTION, CWE_ANSWER_PREFIX, list(spec["common"])
    return FWE_INSTRUCTION, FWE_QUESTION, FWE_ANSWER_PREFIX, list(spec["vocab"][:FWE_ASKED])


def fwe_counts(total, vocab_size=FWE_VOCAB):
    """Rounded Zipf counts of ranks 1..vocab_size for about `total` words (rank r gets
    total * r^-s / H, H the sum of r^-s)."""
    weights = [r ** -FWE_EXPONENT for r in range(1, vocab_size + 1)]
    norm = sum(weights)
    return [round(total * w / norm) for w in weights]


def entries(task, spec, n):
    """The context's entries for size n (cwe: n rare words; fwe: about n coded words), in
    the case's order."""
    if task == "cwe":
        words = spec["common"] * CWE_COMMON_COUNT + spec["rare"][:n] * CWE_RARE_COUNT
    else:
        words = [w for w, c in zip(spec["vocab"], fwe_counts(n)) for _ in range(c)]
    random.Random(spec["seed"]).shuffle(words)
    return words


def context(task, words):
    if task == "cwe":
        return " ".join(f"{i}. {w}" for i, w in enumerate(words, 1))
    return " ".join(words)


def size_limit(task, spec):
    """The largest n entries() can take."""
    return len(spec["rare"]) if task == "cwe" else 10 ** 7


def fit(task, spec, budget, prompt_tokens):
    """The largest entry count n (<= size_limit) with prompt_tokens(n) <= budget, by
    bisection (prompt_tokens grows with n)."""
    lo, hi = 0, min(size_limit(task, spec), budget)  # every entry takes at least one token
    if prompt_tokens(lo) > budget:
        raise RuntimeError(f"{task}: even the smallest context exceeds {budget} tokens")
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if prompt_tokens(mid) <= budget:
            lo = mid
        else:
            hi = mid - 1
    return lo


def build(tokenizer, task, spec, budget, chat_prompt):
    """Token ids of the largest prompt of this case within `budget` tokens.
    chat_prompt(tokenizer, context, instruction, question, prefix) -> ids."""
    instruction, question, prefix, _ = asked(task, spec)

    def ids_for(n):
        return chat_prompt(tokenizer, context(task, entries(task, spec, n)), instruction, question, prefix)

    return ids_for(fit(task, spec, budget, lambda n: len(ids_for(n))))
