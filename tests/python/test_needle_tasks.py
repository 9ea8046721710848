"""eval/needle.py's tasks: the random draws of each task, what is asked and expected, the
scoring; and that the single/multikey draws are still those of the earlier result files."""
import os
import random
import sys
import types

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "eval"))
import needle  # noqa: E402

KEYS = [f"word{i:03d}" for i in range(200)]


def draws(tasks, seed=0):
    args = types.SimpleNamespace(seed=seed, tasks=tasks, haystacks=["pg_essays", "emma"], lengths=[8192, 16384],
                                 depths=[0.1, 0.9])
    return list(needle.draw_cases(args, KEYS))


def test_single_and_multikey_draws_unchanged():
    # The draw sequence before the other tasks existed (the result files' seeds depend on it).
    rng = random.Random(0)
    expected = []
    for task in ("single", "multikey"):
        for _ in range(2 * 2 * 2):  # haystacks x lengths x depths
            n = 1 if task == "single" else needle.MULTIKEY_NEEDLES
            chosen = rng.sample(KEYS, n)
            values = [needle.random_value(rng) for _ in chosen]
            target = rng.randrange(n)
            order = [target] + [i for i in range(n) if i != target]
            expected.append([(chosen[i], values[i]) for i in order])
    assert [case[4] for case in draws(["single", "multikey"])] == expected


def test_each_task_asks_what_it_hid():
    for task, name, length, depth, needles in draws(["multivalue", "multiquery", "vt"]):
        sentences = needle.sentences(task, needles)
        instruction, question, prefix, expected = needle.asked(task, needles)
        assert needle.max_new_tokens(task) == needle.LIST_NEW_TOKENS
        if task == "multivalue":
            assert len({key for key, _ in needles}) == 1 and len(expected) == needle.MULTIVALUE_NEEDLES
            assert question.count(needles[0][0]) == 1
        elif task == "multiquery":
            assert len({key for key, _ in needles}) == needle.MULTIQUERY_NEEDLES
            assert expected == [value for _, value in needles[:needle.MULTIQUERY_ASKED]]
            assert all(key in question for key, _ in needles[:needle.MULTIQUERY_ASKED])
            assert not any(key in question for key, _ in needles[needle.MULTIQUERY_ASKED:])
        else:
            names = [key for key, _ in needles]
            assert expected == names and len(set(names)) == needle.VT_CHAIN
            assert sentences[0] == f"VAR {names[0]} = {needles[0][1]}." and needles[0][1] in question
            assert all(sentences[i] == f"VAR {names[i]} = VAR {names[i - 1]}." for i in range(1, needle.VT_CHAIN))
        # every expected string is in the hidden sentences, so a perfect reader can answer
        assert all(any(x in s for s in sentences) for x in expected)


def test_score_all_found_and_share():
    case = {"expected": ["1234567", "7654321"]}
    assert needle.score(case, "1. 1234567\n2. 7654321") == (1, 1.0)
    assert needle.score(case, "1. 1234567: a number") == (0, 0.5)
    assert needle.score(case, "nothing") == (0, 0.0)


def aggregation_cases(tasks, lengths=(8192, 16384)):
    args = types.SimpleNamespace(seed=0, tasks=tasks, haystacks=["pg_essays", "emma"], lengths=list(lengths),
                                 depths=[0.1, 0.9])
    return list(needle.draw_cases(args, KEYS))


def test_aggregation_tasks_one_case_per_length():
    cases = aggregation_cases(["single", "cwe", "fwe"])
    assert [(c[0], c[2], c[3]) for c in cases if c[0] != "single"] == [
        ("cwe", 8192, None), ("cwe", 16384, None), ("fwe", 8192, None), ("fwe", 16384, None)]
    assert len([c for c in cases if c[0] == "single"]) == 2 * 2 * 2  # needles keep their grid
    assert all(needle.max_new_tokens(t) == needle.aggregation.NEW_TOKENS[t] for t in ("cwe", "fwe"))


def test_cwe_counts_and_answer():
    agg = needle.aggregation
    spec = agg.draw("cwe", random.Random(1), KEYS)
    words = agg.entries("cwe", spec, 40)
    counts = {w: words.count(w) for w in set(words)}
    assert all(counts[w] == agg.CWE_COMMON_COUNT for w in spec["common"])
    assert sorted(counts[w] for w in spec["rare"][:40]) == [agg.CWE_RARE_COUNT] * 40
    assert len(counts) == agg.CWE_COMMON + 40
    _, _, _, expected = needle.asked("cwe", spec)
    assert expected == spec["common"] and len(set(expected)) == agg.CWE_COMMON
    assert agg.context("cwe", ["a", "b"]) == "1. a 2. b"


def test_fwe_ranking_is_exact():
    agg = needle.aggregation
    spec = agg.draw("fwe", random.Random(2), KEYS)
    assert len(set(spec["vocab"])) == agg.FWE_VOCAB
    for total in (200, 1000, 30000):
        counts = agg.fwe_counts(total)
        assert counts[0] > counts[1] > counts[2] > counts[3] >= max(counts[4:])
        assert abs(sum(counts) - total) <= agg.FWE_VOCAB // 2 + 1
    words = agg.entries("fwe", spec, 1000)
    top = sorted(set(words), key=words.count, reverse=True)[:agg.FWE_ASKED]
    assert top == needle.asked("fwe", spec)[3] == spec["vocab"][:agg.FWE_ASKED]


def test_aggregation_prompt_fills_the_budget():
    agg = needle.aggregation
    keys = [f"w{i:04d}" for i in range(2000)]  # enough rare words for the budget

    def chat_prompt(tokenizer, context, instruction, question, prefix):  # one token per word
        return " ".join([instruction, context, question, prefix]).split()

    budget = 3000
    for task in agg.TASKS:
        spec = agg.draw(task, random.Random(3), keys)
        instruction, question, prefix, _ = agg.asked(task, spec)

        def tokens(n):
            return len(chat_prompt(None, agg.context(task, agg.entries(task, spec, n)), instruction, question, prefix))

        n = agg.fit(task, spec, budget, tokens)
        assert 0 < n < agg.size_limit(task, spec)
        assert tokens(n) <= budget < tokens(n + 1)  # the largest that fits
        assert len(agg.build(None, task, spec, budget, chat_prompt)) == tokens(n)
