"""ProxyAttn-shaped block masks written straight into a plan (Plan.set_index), for the kernel
suites: one ranking per query-block row shared by all heads (one proxy group), sink and
diagonal first, the other blocks ranked by a noisy recency score; per-head absolute budgets
spread around a common value found by bisection for the wanted density, assigned to the
heads in a random order. Real layers spread further, most heads at the budget floor and a
few at 2-4x the mean (e.g. Qwen2.5-Coder-0.5B at 32K, eval/results/accuracy-qwen05):
--budget-spread 0.1,4,geometric is like them."""
import argparse
import collections

import numpy as np

# Per-head budget factors from LO to HI, evenly spaced or in geometric progression.
BudgetSpread = collections.namedtuple("BudgetSpread", "lo hi geometric")
DEFAULT_BUDGET_SPREAD = BudgetSpread(0.5, 1.5, False)
FORCED_BLOCKS = 2           # sink and diagonal: the least a head keeps per row
BISECTION_STEPS = 60


def budget_spread(text):
    """LO,HI or LO,HI,geometric with 0 < LO <= HI (an argparse type)."""
    fields = text.split(",")
    try:
        lo, hi = float(fields[0]), float(fields[1])
    except (ValueError, IndexError):
        lo = hi = -1.0
    if not 0.0 < lo <= hi < float("inf") or len(fields) > 3 or (len(fields) == 3 and fields[2] != "geometric"):
        raise argparse.ArgumentTypeError(f"{text}: expected LO,HI or LO,HI,geometric with 0 < LO <= HI")
    return BudgetSpread(lo, hi, len(fields) == 3)


def make_order(nqb, rng):
    """order [T(nqb)] of one proxy group: row m = m, 0, then 1..m-1 by noisy recency."""
    order = np.empty(nqb * (nqb + 1) // 2, np.int32)
    for m in range(nqb):
        row = order[m * (m + 1) // 2:(m + 1) * (m + 2) // 2]
        row[0] = m
        if m == 0:
            continue
        row[1] = 0
        others = np.arange(1, m, dtype=np.int32)
        score = -np.log1p(m - others) + rng.gumbel(size=m - 1)
        row[2:] = others[np.argsort(-score, kind="stable")]
    return order


def make_count(nqb, hq, density, rng, spread=DEFAULT_BUDGET_SPREAD):
    """count [nqb, hq]: head h keeps min(m + 1, K_h) blocks, K_h = x * f_h (absolute budgets),
    x bisected so that the kept share of the causal blocks is `density`."""
    spacing = np.geomspace if spread.geometric else np.linspace
    factors = rng.permutation(spacing(spread.lo, spread.hi, hq))
    rows = np.arange(nqb)[:, None]

    def counts(x):
        budget = np.clip(np.rint(x * factors), FORCED_BLOCKS, nqb)
        return np.minimum(rows + 1, budget[None, :]).astype(np.int32)

    causal = hq * nqb * (nqb + 1) / 2
    lo, hi = 0.0, 2.0 * nqb / spread.lo
    for _ in range(BISECTION_STEPS):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if counts(mid).sum() / causal < density else (lo, mid)
    return counts(hi)


def chunk_index(order, count, m0, m1):
    """Rows m0..m1 - 1 of a one-group triangular index: (order, count) of a chunk's plan."""
    rows = order[m0 * (m0 + 1) // 2:m1 * (m1 + 1) // 2]
    return np.ascontiguousarray(rows), np.ascontiguousarray(count[m0:m1])
