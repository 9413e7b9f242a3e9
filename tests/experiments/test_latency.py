import numpy as np
import pytest
from scipy import stats

from experiments import latency
from experiments.latency import compare_latency, kth_pairwise_difference, tail_test
from experiments.sequential import msprt


def _brute(champion: np.ndarray, challenger: np.ndarray) -> tuple[float, float, float]:
    diffs = np.sort(np.subtract.outer(challenger, champion).ravel())
    n, m = champion.size, challenger.size
    c = round(n * m / 2 - stats.norm.ppf(0.975) * np.sqrt(n * m * (n + m + 1) / 12))
    return float(np.median(diffs)), float(diffs[c - 1]), float(diffs[n * m - c])


@pytest.mark.parametrize(("n", "m", "ties"), [(30, 41, False), (50, 50, True), (7, 300, True)])
def test_hodges_lehmann_and_ci_match_brute_force(n: int, m: int, ties: bool) -> None:
    rng = np.random.default_rng(n * m)
    champion = rng.lognormal(6, 0.5, n)
    challenger = rng.lognormal(6.2, 0.5, m)
    if ties:
        champion, challenger = np.round(champion, -1), np.round(challenger, -1)
    result = compare_latency(champion, challenger, min_samples=5)
    hl, lo, hi = _brute(champion, challenger)
    assert result.hodges_lehmann == pytest.approx(hl, rel=1e-12)
    assert result.hodges_lehmann_ci == pytest.approx((lo, hi), rel=1e-12)
    expected = stats.mannwhitneyu(challenger, champion, alternative="two-sided")
    assert result.mann_whitney_p == pytest.approx(expected.pvalue)


def test_golden_small_sample() -> None:
    # Differences of [3..8] - [1..5]: 30 values, 15th = 2 and 16th = 3, so the median is 2.5.
    result = compare_latency([1, 2, 3, 4, 5], [3, 4, 5, 6, 7, 8], min_samples=5)
    assert result.hodges_lehmann == 2.5
    # scipy 1.17 mannwhitneyu([3..8], [1..5]): ties, so asymptotic with continuity correction
    assert result.mann_whitney_u == 25.5
    assert result.mann_whitney_p == pytest.approx(0.066015431521231)
    assert result.champion_p95 == pytest.approx(4.8) and result.challenger_p95 == pytest.approx(
        7.75
    )
    assert result.p95_ratio == pytest.approx(7.75 / 4.8)


def test_large_samples_are_exact_without_materialising_pairs() -> None:
    rng = np.random.default_rng(1)
    champion = rng.lognormal(6, 0.4, 20_000)
    challenger = champion[:20_000] * 1.1  # every latency 10% slower
    result = compare_latency(champion, challenger)
    assert result.status == "ok"
    assert result.p95_ratio == pytest.approx(1.1)
    hl, ci = result.hodges_lehmann, result.hodges_lehmann_ci
    assert hl is not None and ci is not None
    assert ci[0] < hl < ci[1]
    assert 0.05 * np.median(champion) < hl < 0.2 * np.median(champion)


def test_kth_pairwise_difference_order_statistics() -> None:
    x = np.sort(np.array([1.0, 2.0, 2.0, 10.0]))
    y = np.array([0.5, 3.0, 3.0])
    diffs = np.sort(np.subtract.outer(y, x).ravel())
    for k in range(1, diffs.size + 1):
        assert kth_pairwise_difference(x, y, k) == diffs[k - 1]
    with pytest.raises(ValueError):
        kth_pairwise_difference(x, y, 0)


def test_insufficient_and_invalid_samples() -> None:
    few = compare_latency([100.0] * 5, [120.0] * 50)
    assert few.status == "insufficient" and "5 champion" in few.reason
    assert few.mann_whitney_p is None
    broken = compare_latency([100.0] * 50 + [float("nan")], [120.0] * 50)
    assert broken.status == "invalid"


@pytest.mark.parametrize("enumerate_pairs", [0, 10, 100_000])
def test_selection_paths_agree_with_sorting(
    enumerate_pairs: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 0 forces bisection down to a single float (snapping), 10 a tiny enumeration.
    monkeypatch.setattr(latency, "ENUMERATE_PAIRS", enumerate_pairs)
    rng = np.random.default_rng(enumerate_pairs)
    for _ in range(10):
        x = np.sort(np.round(rng.lognormal(5, 0.5, rng.integers(1, 120)), 0))  # many ties
        y = rng.lognormal(5.1, 0.5, rng.integers(1, 120))
        diffs = np.sort(np.subtract.outer(y, x).ravel())
        for k in rng.integers(1, diffs.size + 1, size=5):
            assert kth_pairwise_difference(x, y, int(k)) == pytest.approx(diffs[k - 1], rel=1e-12)


def test_tail_test_is_a_quantile_test_of_the_bound() -> None:
    """Pooled 95th percentile of the champion and challenger/bound; each arm's share above
    it; the mSPRT on the difference (computed here step by step)."""
    rng = np.random.default_rng(5)
    a = rng.lognormal(np.log(400), 0.5, 3000)
    b = rng.lognormal(np.log(400 * 1.3), 0.5, 2000)  # p95 ratio 1.3, inside a 1.5 bound
    result = tail_test(a, b, bound=1.5)
    t = np.quantile(np.concatenate([a, b / 1.5]), 0.95, method="higher")
    e_a, e_b = (a > t).mean(), (b / 1.5 > t).mean()
    se = np.sqrt(e_a * (1 - e_a) / a.size + e_b * (1 - e_b) / b.size)
    assert result.threshold_ms == pytest.approx(t)
    assert (result.champion_exceed, result.challenger_exceed) == pytest.approx((e_a, e_b))
    assert result.sequential is not None
    assert result.sequential.p_greater == pytest.approx(
        msprt(e_b - e_a, se, tau2=0.05**2).p_greater
    )
    assert result.p95_ratio == pytest.approx(1.3, abs=0.1)
    assert result.sequential.p_greater > 0.5  # inside its bound: no evidence of a breach
    slow = tail_test(a, b * 1.6, bound=1.5)  # ratio ~2.1
    assert slow.sequential is not None and slow.sequential.p_greater < 1e-6


def test_tail_test_counts_failures_as_the_slowest() -> None:
    rng = np.random.default_rng(6)
    a = rng.lognormal(np.log(400), 0.5, 2000)
    b = np.concatenate([rng.lognormal(np.log(400), 0.5, 1800), np.full(200, np.inf)])
    result = tail_test(a, b, bound=1.5)
    assert result.challenger_p95 is None and result.p95_ratio is None  # the p95 is a failure
    assert result.sequential is not None and result.sequential.p_greater < 1e-6
    assert tail_test(a, b[:10], bound=1.5).status == "insufficient"
    assert tail_test(a, np.full(50, np.nan), bound=1.5).status == "invalid"
