"""The policy's decision rules, re-implemented with numpy and vectorised over replications.

Each function here mirrors a function of :mod:`experiments` (named in its docstring) and
gives its numbers for many replications at once, one look at a time, so that
``benchmarks/sequential.py`` can apply the rules at every look of thousands of simulated
canaries; ``tests/experiments/test_sequential_benchmark.py`` checks on random looks that each
replica agrees with the real function. Change a rule in :mod:`experiments` and its replica
here together. Besides the rules: the per-arm sums they read (:class:`ArmSums`), the order
statistics of the latency samples (:func:`quantile_index`, :class:`RowFenwick`) and the
thumbs test's burn-in and running minima (:class:`ThumbsTest`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy import special, stats

from experiments.policy import Policy
from experiments.srm import CONCENTRATION, log_bayes_factor

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]
BoolArray = NDArray[np.bool_]

LOG_2 = float(np.log(2.0))
#: Tail quantile of the latency guardrail and the most requests per arm in its sample.
TAIL_QUANTILE = 0.95
SAMPLE_CAP = 20_000
#: ``experiments.latency.tail_test``'s own minimum sample per arm.
TAIL_MIN_SAMPLES = 20
#: The old SRM rule's threshold (chi-square p < 0.001), beside the anytime-valid test.
OLD_SRM_THRESHOLD = 0.001


# -- thumbs: the mSPRT, the stratified difference, the test's running minima ------------------


def msprt_looks(
    difference: FloatArray, std_error: FloatArray, *, tau2: float, null: float = 0.0
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """This look's ``1/Lambda`` (two-sided, greater, less) of :func:`experiments.sequential.msprt`.

    Where the standard error is zero or undefined the real function returns the previous
    look's p-values; here 1.0, which leaves a running minimum as it is.
    """
    d = np.asarray(difference, dtype=np.float64)
    se = np.asarray(std_error, dtype=np.float64)
    ok = np.isfinite(d) & np.isfinite(se) & (se > 0)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        v = se * se
        r = tau2 / v
        shift = d - null
        log_lam = -0.5 * np.log1p(r) + 0.5 * (shift * shift / v) * r / (1.0 + r)
        signed = shift * np.sqrt(tau2) / np.sqrt(v * (v + tau2))
        log_greater = LOG_2 + log_lam + special.log_ndtr(signed)
        log_less = LOG_2 + log_lam + special.log_ndtr(-signed)
        p = [
            np.where(ok & (x > 0.0), np.exp(-np.maximum(x, 0.0)), 1.0)
            for x in (log_lam, log_greater, log_less)
        ]
    return p[0], p[1], p[2]


@dataclass(frozen=True, slots=True)
class UnitBatch:
    """Per-replication sums of one arm's new units at one look (x: thumbs up, y: ratings)."""

    n: IntArray
    x: FloatArray
    y: FloatArray
    xx: FloatArray
    xy: FloatArray
    yy: FloatArray


@dataclass(slots=True)
class ArmSums:
    """Per-replication :class:`experiments.stats.PhasedSums` of one arm, arrays over (R, K).

    The cross-phase products are (R, K, K) matrices, or only their diagonals (R, K) when no
    unit spans two phases, as in this benchmark's traffic (a unit arrives once); the
    matrices cost a third of a look.
    """

    units: IntArray  # (R, K) units with data per phase
    x: FloatArray  # (R, K)
    y: FloatArray
    xx: FloatArray  # (R, K, K) or its diagonal (R, K)
    xy: FloatArray
    yy: FloatArray

    @classmethod
    def zeros(cls, reps: int, phases: int) -> ArmSums:
        """Empty sums of units that never span phases (diagonals only)."""
        units = np.zeros((reps, phases), dtype=np.int64)
        return cls(units, *(np.zeros((reps, phases)) for _ in range(5)))

    @property
    def distinct(self) -> IntArray:
        """Distinct units (a unit in two phases would count twice; none is, here)."""
        return self.units.sum(axis=1)

    def add(self, phase: IntArray, batch: UnitBatch) -> None:
        """Add each replication's new units to its phase ``phase[r]`` (diagonal sums)."""
        at = (np.arange(self.units.shape[0]), phase)
        self.units[at] += batch.n
        for name in ("x", "y", "xx", "xy", "yy"):
            getattr(self, name)[at] += getattr(batch, name)


def _arm_variance(sums: ArmSums, coef: FloatArray, rates: FloatArray) -> FloatArray:
    """``a' M a`` of :mod:`experiments.rates`, one per replication."""
    if sums.xx.ndim == 2:  # M is diagonal
        m_diag = sums.xx - 2.0 * rates * sums.xy + rates * rates * sums.yy
        return np.maximum((coef * coef * m_diag).sum(axis=1), 0.0)
    m = (
        sums.xx
        - sums.xy * rates[:, np.newaxis, :]
        - sums.xy.transpose(0, 2, 1) * rates[:, :, np.newaxis]
        + rates[:, :, np.newaxis] * rates[:, np.newaxis, :] * sums.yy
    )
    return np.maximum(np.einsum("rk,rkl,rl->r", coef, m, coef), 0.0)


def stratified_difference(
    champion: ArmSums, challenger: ArmSums, *, rho: float = 1.0
) -> tuple[FloatArray, FloatArray]:
    """(difference, standard error) of :func:`experiments.rates.compare_rates`, per replication.

    NaN where the real function is not "ok" (fewer than 2 units in an arm, no phase with
    both arms); the caller's burn-in (``min_rated_units``) comes long after.
    """
    y_a, y_b = champion.y, challenger.y
    both = (y_a > 0) & (y_b > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        r_a = np.where(y_a > 0, champion.x / y_a, 0.0)
        r_b = np.where(y_b > 0, challenger.x / y_b, 0.0)
        raw = np.where(both, y_a * y_b / (y_a + y_b), 0.0)
        w = raw / raw.sum(axis=1, keepdims=True)
        d = (w * (r_b - rho * r_a)).sum(axis=1)
        coef_b = np.where(both, w / np.where(both, y_b, 1.0), 0.0)
        coef_a = np.where(both, rho * w / np.where(both, y_a, 1.0), 0.0)
    var = _arm_variance(champion, coef_a, r_a) + _arm_variance(challenger, coef_b, r_b)
    valid = (champion.distinct >= 2) & (challenger.distinct >= 2) & both.any(axis=1)
    return np.where(valid, d, np.nan), np.where(valid, np.sqrt(var), np.nan)


def pooled(sums: ArmSums) -> ArmSums:
    """The phases merged into one (``PhasedSums.pooled``), in the same layout."""
    axes = tuple(range(1, sums.xx.ndim))
    shape = (-1,) + (1,) * len(axes)
    return ArmSums(
        sums.units.sum(axis=1, keepdims=True),
        sums.x.sum(axis=1, keepdims=True),
        sums.y.sum(axis=1, keepdims=True),
        *(m.sum(axis=axes).reshape(shape) for m in (sums.xx, sums.xy, sums.yy)),
    )


@dataclass(slots=True)
class ThumbsTest:
    """The policy's thumbs test for R replications: burn-in, then running minima."""

    tau2: float
    min_rated_units: int
    greater: FloatArray  # running minimum of the one-sided p (better)
    less: FloatArray  # running minimum of the one-sided p (worse)

    @classmethod
    def start(cls, reps: int, policy: Policy) -> ThumbsTest:
        return cls(policy.mixing_sd**2, policy.min_rated_units, np.ones(reps), np.ones(reps))

    def look(self, champion: ArmSums, challenger: ArmSums) -> FloatArray:
        """Take this look; returns its ``p_greater_look`` (1.0 in the burn-in)."""
        d, se = stratified_difference(champion, challenger)
        _, p_greater, p_less = msprt_looks(d, se, tau2=self.tau2)
        ready = np.minimum(champion.distinct, challenger.distinct) >= self.min_rated_units
        p_greater = np.where(ready, p_greater, 1.0)
        self.greater = np.minimum(self.greater, p_greater)
        self.less = np.minimum(self.less, np.where(ready, p_less, 1.0))
        return p_greater


# -- sample ratio mismatch --------------------------------------------------------------------


def srm_p_look(
    counts: IntArray, share: float, *, concentration: float = CONCENTRATION
) -> FloatArray:
    """This look's ``1/BF`` of :func:`experiments.srm.check_srm`; ``counts`` (..., 2) =
    (champion, challenger) units, ``share`` the challenger's weight."""
    log_bf = log_bayes_factor(counts, [1.0 - share, share], concentration=concentration)
    return np.where(log_bf > 0, np.exp(-np.maximum(log_bf, 0.0)), 1.0)


def chi2_stat(counts: IntArray, share: float) -> FloatArray:
    """``scipy.stats.chisquare`` statistic of (champion, challenger) units against the
    weights (the old SRM rule); 0 without units."""
    n = counts.sum(axis=-1)
    expected = n[..., None] * np.array([1.0 - share, share])
    with np.errstate(divide="ignore", invalid="ignore"):
        stat = (((counts - expected) ** 2) / expected).sum(axis=-1)
    return np.where(n > 0, stat, 0.0)


def chi2_p(counts: IntArray, share: float) -> FloatArray:
    """Its p-value (1 degree of freedom); 1.0 without units."""
    return special.chdtrc(1, chi2_stat(counts, share))


#: The old SRM rule, p < 0.001, as a critical value: the p-value costs more than the rest
#: of the SRM scenario together.
OLD_SRM_CRITICAL = float(stats.chi2.isf(OLD_SRM_THRESHOLD, 1))


# -- latency: tail test and the old p95 ratio / Mann-Whitney ----------------------------------


def quantile_index(n: IntArray, q: float, method: str) -> tuple[IntArray, FloatArray]:
    """``numpy.quantile``'s order statistic (0-based) in a sample of ``n``, and for "linear"
    the interpolation weight towards the next one; numpy's own floating-point steps
    (``(n - 1) * q``), so ``ceil`` lands where numpy's does."""
    n = np.asarray(n, dtype=np.int64)
    virtual = (n - 1) * q
    top = np.maximum(n - 1, 0)
    if method == "higher":
        return np.clip(np.ceil(virtual), 0, top).astype(np.int64), np.zeros(n.shape)
    if method == "linear":
        lower = np.floor(virtual)
        return np.clip(lower, 0, top).astype(np.int64), virtual - lower
    raise ValueError(method)


def lerp(a: FloatArray, b: FloatArray, t: FloatArray) -> FloatArray:
    """numpy's ``_lerp`` (monotone near both ends)."""
    diff = b - a
    return np.where(t >= 0.5, b - diff * (1 - t), a + diff * t)


def mann_whitney_p(u: FloatArray, n_challenger: IntArray, n_champion: IntArray) -> FloatArray:
    """Two-sided ``scipy.stats.mannwhitneyu(challenger, champion)`` p-value from the
    challenger's U, normal approximation with continuity correction, no ties."""
    n1 = n_challenger.astype(np.float64)
    n2 = n_champion.astype(np.float64)
    big = np.maximum(u, n1 * n2 - u)
    mu = n1 * n2 / 2
    with np.errstate(divide="ignore", invalid="ignore"):
        s = np.sqrt(n1 * n2 / 12 * (n1 + n2 + 1))
        z = (big - mu - 0.5) / s
    return np.clip(2 * special.ndtr(-z), 0.0, 1.0)


class RowFenwick:
    """One Fenwick tree per row over positions 1..size (Fenwick, "A new data structure for
    cumulative frequency tables", Software: Practice and Experience 24(3), 1994), every
    operation vectorised over rows: O(log size) numpy calls per batch of inserts or queries.
    """

    def __init__(self, rows: int, size: int) -> None:
        self.size = size
        self.stride = size + 1
        self.tree = np.zeros(rows * self.stride, dtype=np.int32)  # slot 0 of a row stays 0
        self.top = 1 << (size.bit_length() - 1) if size else 0

    def add(self, rows: IntArray, positions: IntArray) -> None:
        """Count one more item at each ``positions[i]`` (1-based) of row ``rows[i]``."""
        base = rows.astype(np.int64) * self.stride
        pos = positions.astype(np.int64)
        while pos.size:
            # Values of the tree's dtype: with a Python int, add.at is ~50x slower.
            np.add.at(self.tree, base + pos, np.ones(pos.size, dtype=self.tree.dtype))
            pos = pos + (pos & -pos)
            keep = pos <= self.size
            base, pos = base[keep], pos[keep]

    def prefix(self, rows: IntArray, positions: IntArray) -> IntArray:
        """Items at positions <= ``positions[i]`` of row ``rows[i]``."""
        base = rows.astype(np.int64) * self.stride
        pos = positions.astype(np.int64)
        total = np.zeros(pos.shape, dtype=np.int64)
        while pos.any():
            total += self.tree[base + pos]
            pos = pos - (pos & -pos)
        return total

    def kth(self, rows: IntArray, k: IntArray, plus: RowFenwick | None = None) -> IntArray:
        """Position of the ``k[i]``-th smallest item (1-based) of row ``rows[i]``; ``size``
        where the row holds fewer than ``k[i]`` items (a value the caller masks out).
        With ``plus`` (a tree of the same shape), of the two trees' items together."""
        base = rows.astype(np.int64) * self.stride
        pos = np.zeros(k.shape, dtype=np.int64)
        rem = k.astype(np.int64)
        step = self.top
        while step:
            nxt = pos + step
            inside = nxt <= self.size
            at = base + np.where(inside, nxt, 0)
            value = self.tree[at] if plus is None else self.tree[at] + plus.tree[at]
            go = inside & (value < rem)
            pos = np.where(go, nxt, pos)
            rem = rem - np.where(go, value, 0)
            step >>= 1
        return np.minimum(pos + 1, self.size)


def _ranks(values: FloatArray) -> tuple[IntArray, IntArray, FloatArray]:
    """Each row's 1-based ranks, its sorting order and its sorted values."""
    order = np.argsort(values, axis=1, kind="stable")
    ranks = np.empty(values.shape, dtype=np.int64)
    np.put_along_axis(ranks, order, np.arange(1, values.shape[1] + 1)[None, :], axis=1)
    return ranks, order, np.take_along_axis(values, order, axis=1)


def _new_items(before: IntArray, after: IntArray) -> tuple[IntArray, IntArray]:
    """(row, index) of the items each row gained between two sample sizes."""
    counts = after - before
    rows = np.repeat(np.arange(before.size), counts)
    offsets = np.arange(rows.size) - np.repeat(np.cumsum(counts) - counts, counts)
    return rows, np.repeat(before, counts) + offsets


@dataclass(frozen=True, slots=True)
class LatencyDraws:
    """One batch of replications: each arm's latencies in arrival order; per look, the
    cumulative units and requests (uncapped)."""

    champion: FloatArray  # (R, Ma) ms
    challenger: FloatArray  # (R, Mb)
    champion_units: IntArray  # (R, L)
    challenger_units: IntArray
    champion_requests: IntArray  # (R, L)
    challenger_requests: IntArray


@dataclass(frozen=True, slots=True)
class LatencyLooks:
    """Per replication and look (R, L): the new rule's and the old rule's inputs."""

    champion_n: IntArray  # sample sizes (capped)
    challenger_n: IntArray
    difference: FloatArray  # tail_test: challenger - champion exceedance of the pooled p95
    std_error: FloatArray
    p_greater_look: FloatArray
    p95_ratio: FloatArray  # compare_latency: raw p95 ratio (linear percentiles)
    mann_whitney_p: FloatArray
    shift_positive: BoolArray  # challenger U > n m / 2, i.e. Hodges-Lehmann shift > 0


def latency_looks(
    draws: LatencyDraws, *, bound: float, tau2: float, cap: int = SAMPLE_CAP
) -> LatencyLooks:
    """Every look's :func:`experiments.latency.tail_test` (this look's p) and old-rule inputs.

    The samples are each arm's first ``cap`` requests. Everything lives on one scale per
    replication, the ranks of the pooled values ``champion + challenger / bound``, with three
    Fenwick trees over it: the champion's sample, the scaled challenger's (together: the
    pooled 95% order statistic, method "higher", is the tail test's threshold; apart: each
    arm's p95 for the old ratio), and the raw challenger values placed between the pooled
    ones, which with the champion's tree update the Mann-Whitney U pair by pair as
    requests arrive.
    """
    a, b = draws.champion, draws.challenger
    reps, looks = draws.champion_requests.shape
    size_a, size_b = a.shape[1], b.shape[1]
    n_a = np.minimum(draws.champion_requests, cap)
    n_b = np.minimum(draws.challenger_requests, cap)
    rank, order, pooled_sorted = _ranks(np.concatenate([a, b / bound], axis=1))
    raw = np.concatenate([a, b], axis=1)  # the values behind each pooled rank, unscaled
    size = size_a + size_b
    # Raw challenger value b -> 1 + (pooled values <= b): b < champion value x exactly when
    # this is <= x's rank, and the champion values <= b are those ranked below it.
    raw_slot = (
        1 + np.stack([np.searchsorted(pooled_sorted[r], b[r], side="right") for r in range(reps)])
        if size_b
        else np.zeros((reps, 0), np.int64)
    )
    champion, scaled = RowFenwick(reps, size), RowFenwick(reps, size)
    raw_b = RowFenwick(reps, size + 1)
    rows_all = np.arange(reps)
    u = np.zeros(reps, dtype=np.float64)  # challenger U: pairs with challenger > champion
    prev_a = np.zeros(reps, dtype=np.int64)
    prev_b = np.zeros(reps, dtype=np.int64)
    shape = (reps, looks)
    out = {name: np.full(shape, np.nan) for name in ("d", "se", "ratio", "mw")}
    out["p"] = np.ones(shape)
    positive = np.zeros(shape, dtype=bool)
    for look in range(looks):
        rows, items = _new_items(prev_a, n_a[:, look])
        if rows.size:
            pos = rank[rows, items]
            below = raw_b.prefix(rows, pos)  # earlier challengers below the new value
            u += np.bincount(rows, weights=prev_b[rows] - below, minlength=reps)
            champion.add(rows, pos)
        rows, items = _new_items(prev_b, n_b[:, look])
        if rows.size:
            slot = raw_slot[rows, items]
            u += np.bincount(rows, weights=champion.prefix(rows, slot - 1), minlength=reps)
            raw_b.add(rows, slot)
            scaled.add(rows, rank[rows, size_a + items])
        prev_a, prev_b = n_a[:, look], n_b[:, look]
        ok = (prev_a >= TAIL_MIN_SAMPLES) & (prev_b >= TAIL_MIN_SAMPLES)
        if not ok.any():
            continue
        na, nb = prev_a.astype(np.float64), prev_b.astype(np.float64)
        # tail_test: threshold t = pooled quantile ("higher"), exceedances of each arm.
        k, _ = quantile_index(prev_a + prev_b, TAIL_QUANTILE, "higher")
        pos_t = champion.kth(rows_all, np.where(ok, k + 1, 1), plus=scaled)
        a_below = champion.prefix(rows_all, pos_t)  # champion values <= t
        with np.errstate(divide="ignore", invalid="ignore"):
            ea = (prev_a - a_below) / na
            eb = (prev_b - (k + 1 - a_below)) / nb
            se = np.sqrt(ea * (1 - ea) / na + eb * (1 - eb) / nb)
        d = eb - ea
        _, p_greater, _ = msprt_looks(d, se, tau2=tau2)
        out["d"][:, look] = np.where(ok, d, np.nan)
        out["se"][:, look] = np.where(ok, se, np.nan)
        out["p"][:, look] = np.where(ok, p_greater, 1.0)
        # compare_latency: linear p95 of each arm (raw values); Mann-Whitney from U.
        p95 = []
        for tree, n in ((champion, prev_a), (scaled, prev_b)):
            lo, gamma = quantile_index(n, TAIL_QUANTILE, "linear")
            hi = np.minimum(lo + 1, np.maximum(n - 1, 0))
            ends = [
                raw[rows_all, order[rows_all, tree.kth(rows_all, np.where(ok, j + 1, 1)) - 1]]
                for j in (lo, hi)
            ]
            p95.append(lerp(ends[0], ends[1], gamma))
        out["ratio"][:, look] = np.where(ok, p95[1] / p95[0], np.nan)
        out["mw"][:, look] = np.where(ok, mann_whitney_p(u, prev_b, prev_a), np.nan)
        positive[:, look] = ok & (u > na * nb / 2)
    return LatencyLooks(n_a, n_b, out["d"], out["se"], out["p"], out["ratio"], out["mw"], positive)
