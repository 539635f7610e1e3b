"""Is one method's lead over another beyond seed noise? A paired t-test over seeds.

Each seed is one K-shot split (train and dev examples drawn with that seed), the same split for every method,
so two methods' scores are paired by seed: the test looks at the per-seed differences, which removes the
split-to-split variation both methods share. With the protocol's 5 seeds the test has little power: p >= 0.05
says the lead is *within seed noise*, not that the two methods are equal.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

TEST = "paired t-test over seeds; each seed is one K-shot split shared by all methods"
ALPHA = 0.05  # a gap with p >= ALPHA is reported as within seed noise
# Scores are fractions (accuracy, F1, correlations): differences below this are float rounding, not a gap
# (0.7 - 0.5 and 0.8 - 0.6 differ in the 17th digit, which would make scipy's t huge or NaN).
_EXACT = 1e-12


@dataclass(frozen=True)
class Paired:
    """A against B over the seeds both have, each with a finite score."""

    mean_diff: float | None  # mean of A - B over the used seeds (None: no seed usable)
    wins: int  # seeds where A > B
    ties: int
    losses: int  # seeds where A < B
    n: int  # seed pairs used
    excluded: int  # seeds both ran but where either score is NaN (or infinite): left out
    p_value: float | None  # two-sided; None: fewer than 2 pairs, no test possible

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def within_noise(self) -> bool | None:
        """Whether the gap is not significant at ``ALPHA`` (None when no test was possible)."""
        return None if self.p_value is None else self.p_value >= ALPHA


def paired_test(a: Sequence[float], a_seeds: Sequence[int], b: Sequence[float], b_seeds: Sequence[int]) -> Paired:
    """Compare A's per-seed scores with B's, matched by seed value (not by position).

    Seeds only one side has are ignored; a pair with a NaN or infinite score (a diverged run) is excluded and
    counted in ``excluded``. The p-value is scipy's ``ttest_rel`` (two-sided) on the remaining pairs, except
    where the differences have no variance and the t statistic is undefined (scipy gives NaN or ±inf there):
    all differences 0 (identical scores) gives p = 1.0; a constant nonzero difference gives p = 0.0 (every
    seed moves by exactly the same amount: the limit of t -> infinity). Fewer than 2 pairs: p is None.

    Raises ValueError when a score list and its seed list differ in length or a seed is listed twice.
    """
    a_by, b_by = _by_seed(a, a_seeds, "A"), _by_seed(b, b_seeds, "B")
    shared = [s for s in a_by if s in b_by]
    pairs = [(a_by[s], b_by[s]) for s in shared if math.isfinite(a_by[s]) and math.isfinite(b_by[s])]
    diffs = [x - y for x, y in pairs]
    wins = sum(d > _EXACT for d in diffs)
    losses = sum(d < -_EXACT for d in diffs)
    mean = sum(diffs) / len(diffs) if diffs else None
    return Paired(mean_diff=mean, wins=wins, ties=len(diffs) - wins - losses, losses=losses, n=len(diffs),
                  excluded=len(shared) - len(pairs), p_value=_p_value(pairs, diffs))


def _by_seed(scores: Sequence[float], seeds: Sequence[int], side: str) -> dict[int, float]:
    if len(scores) != len(seeds):
        raise ValueError(f"{side}: {len(scores)} scores for {len(seeds)} seeds")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"{side}: a seed is listed twice in {list(seeds)}")
    return {int(s): float(x) for s, x in zip(seeds, scores, strict=True)}


def _p_value(pairs: list[tuple[float, float]], diffs: list[float]) -> float | None:
    if len(diffs) < 2:
        return None
    if max(diffs) - min(diffs) <= _EXACT:  # no variance: t is undefined, decide as documented above
        return 1.0 if all(abs(d) <= _EXACT for d in diffs) else 0.0
    from scipy.stats import ttest_rel  # imported here: scipy at module level costs every process memory

    a, b = zip(*pairs, strict=True)
    return float(ttest_rel(a, b).pvalue)


def best_by_mean(items: Sequence[Any], mean: Any) -> Any:
    """The item with the highest finite ``mean(item)`` (higher is better; the first of equal means), or None.

    One rule for compare's ``vs_best`` and the report's marks, so both name the same best."""
    finite = [x for x in items if isinstance(m := mean(x), int | float) and math.isfinite(m)]
    return max(finite, key=mean) if finite else None  # max keeps the first of equal means


def vs_best(rows: Sequence[dict[str, Any]], seeds: Sequence[int] | None = None) -> dict[str, Any] | None:
    """Compare's ``vs_best`` section: the method with the best mean (higher is better; the first on a tie; a
    NaN mean never wins) and every other method's paired test against it (difference = method - best).

    ``rows`` carry ``method``, ``mean``, ``per_seed`` and ``seeds`` (``seeds`` falls back to the argument, for
    rows written before they carried their own). None when no row has a finite mean.
    """
    best = best_by_mean(rows, lambda r: r.get("mean"))
    if best is None:
        return None

    def seeds_of(r: dict[str, Any]) -> list[int]:
        return list(r.get("seeds") or seeds or [])

    comparisons = []
    for r in rows:
        if r is best:
            continue
        test = paired_test(r["per_seed"], seeds_of(r), best["per_seed"], seeds_of(best))
        comparisons.append({"method": r["method"], **test.to_dict(), "within_noise": test.within_noise})
    return {"best": best["method"], "test": TEST, "alpha": ALPHA, "comparisons": comparisons}
