"""Pairwise (blind side-by-side) votes between the two arms.

Entry point: :func:`compare_votes`.

* Win rate: challenger wins / decisive votes (ties and both-bad excluded), with an exact
  two-sided binomial test against 0.5 (``scipy.stats.binomtest``) and its Clopper-Pearson CI.
* Always-valid sequential p-values (:func:`experiments.sequential.msprt`) on ``win_rate - 0.5``
  (:func:`vote_test`), **clustered by voter**: one reviewer casting many votes is one cluster,
  not many independent votes. With ``x_v`` challenger wins of voter v out of ``y_v`` decisive
  votes, the standard error is the cluster-robust score form centred on the null win rate
  ``q``, ``se**2 = sum_v (x_v - q y_v)**2 / (sum_v y_v)**2`` (the delta method of
  :mod:`experiments.rates` with the ratio fixed at its null value). It equals the binomial
  ``q (1 - q) / n`` when every voter votes once, and stays positive when every vote went one
  way (60 of 60 to the champion is evidence, not "no variance").
* Bradley-Terry ratings as in Chatbot Arena (Chiang et al., "Chatbot Arena: An Open Platform
  for Evaluating LLMs by Human Preference", ICML 2024, arXiv:2403.04132; the notebook
  ``compute_mle_elo``): ``P(i beats j) = 1 / (1 + base**((R_j - R_i) / scale))`` with
  scale 400, base 10, fitted by maximum likelihood; a tie (and here a both-bad vote) counts
  as half a win to each side; ratings are centred on 1000. The fit is Hunter's MM algorithm
  (D. R. Hunter, "MM algorithms for generalized Bradley-Terry models", Ann. Stat. 32, 2004),
  which for two players gives the closed form ``R_b - R_a = 400 log10(w_b / w_a)``.
  When one side has no (half-)wins the MLE is infinite: both sides get +0.5 wins first
  (the Haldane-Anscombe correction) so ratings stay finite.
* Bootstrap 95% CIs of the ratings: votes resampled with replacement (a multinomial draw of
  the four counts), 1,000 replicates, fixed seed, percentile intervals.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy import stats

from experiments.sequential import SequentialTest, msprt
from experiments.stats import VoteCounts

__all__ = ["VoteComparison", "compare_votes", "fit_bradley_terry", "vote_test"]

SCALE = 400.0
BASE = 10.0
CENTRE = 1000.0


@dataclass(frozen=True, slots=True)
class VoteComparison:
    """Challenger vs champion on pairwise votes."""

    status: str  # "ok" | "insufficient" | "invalid"
    reason: str
    counts: VoteCounts
    decisive: int
    win_rate: float | None  # challenger wins / decisive votes
    win_rate_ci: tuple[float, float] | None  # exact Clopper-Pearson 95%
    p_value: float | None  # exact binomial, two-sided, against 0.5 (votes as independent)
    sequential: SequentialTest | None  # mSPRT on win_rate - 0.5, clustered by voter
    bradley_terry: dict[str, float] | None  # {"champion": R_a, "challenger": R_b}
    bradley_terry_ci: dict[str, tuple[float, float]] | None
    voters: int = 0  # distinct voters of the decisive votes


def fit_bradley_terry(
    wins: NDArray[np.float64], *, iterations: int = 10_000, tol: float = 1e-10
) -> NDArray[np.float64]:
    """Bradley-Terry MLE ratings (scale 400, base 10, mean 1000) from a win matrix.

    ``wins[i, j]`` = (possibly fractional) wins of player i over player j. Every player must
    have at least one win and one loss within a connected comparison graph for the MLE to
    exist (Hunter 2004, assumption 1). MM update: ``p_i <- W_i / sum_j n_ij / (p_i + p_j)``.
    """
    w = np.asarray(wins, dtype=np.float64)
    games = w + w.T
    total_wins = w.sum(axis=1)
    strength = np.ones(w.shape[0])
    for _ in range(iterations):
        denom = (games / (strength[:, None] + strength[None, :])).sum(axis=1)
        new = total_wins / denom
        new /= np.exp(np.log(new).mean())  # fix the scale: geometric mean 1
        done = np.abs(np.log(new) - np.log(strength)).max() < tol
        strength = new
        if done:
            break
    ratings = SCALE * np.log(strength) / np.log(BASE)
    return ratings - ratings.mean() + CENTRE


def _two_player_ratings(
    wins_a: NDArray[np.float64], wins_b: NDArray[np.float64]
) -> NDArray[np.float64]:
    """Closed form of :func:`fit_bradley_terry` for two players, vectorised over replicates."""
    zero = (wins_a == 0) | (wins_b == 0)
    wins_a = np.where(zero, wins_a + 0.5, wins_a)
    wins_b = np.where(zero, wins_b + 0.5, wins_b)
    gap = SCALE * np.log(wins_b / wins_a) / np.log(BASE)
    return np.stack([CENTRE - gap / 2.0, CENTRE + gap / 2.0], axis=-1)


def vote_test(
    votes: VoteCounts,
    *,
    null_rate: float = 0.5,
    tau2: float = 0.05**2,
    alpha: float = 0.05,
    previous: Mapping[str, float] | None = None,
) -> SequentialTest | None:
    """mSPRT of ``win_rate - 0.5`` against ``null_rate - 0.5``, clustered by voter (module
    docs); None without decisive votes."""
    voters = votes.voters()
    if voters.sum_y <= 0:
        return None
    q = null_rate
    # sum_v (x_v - q y_v)^2 = sum x^2 - 2 q sum xy + q^2 sum y^2
    spread = voters.sum_x2 - 2.0 * q * voters.sum_xy + q * q * voters.sum_y2
    se = math.sqrt(max(spread, 0.0)) / voters.sum_y
    win_rate = voters.sum_x / voters.sum_y
    return msprt(
        win_rate - 0.5, se, tau2=tau2, alpha=alpha, null=null_rate - 0.5, previous=previous
    )


def _empty(status: str, reason: str, votes: VoteCounts, decisive: int) -> VoteComparison:
    return VoteComparison(
        status=status,
        reason=reason,
        counts=votes,
        decisive=decisive,
        win_rate=None,
        win_rate_ci=None,
        p_value=None,
        sequential=None,
        bradley_terry=None,
        bradley_terry_ci=None,
    )


def compare_votes(
    votes: VoteCounts,
    *,
    min_decisive: int = 1,
    tau2: float = 0.05**2,
    alpha: float = 0.05,
    previous: Mapping[str, float] | None = None,
    bootstrap: int = 1000,
    seed: int = 20240607,
) -> VoteComparison:
    """Win rate with exact binomial test, sequential p-values, Bradley-Terry ratings and CIs."""
    counts = (votes.challenger_wins, votes.champion_wins, votes.ties, votes.both_bad)
    if any(c < 0 for c in counts):
        return _empty("invalid", "negative vote counts", votes, 0)
    decisive = votes.challenger_wins + votes.champion_wins
    if decisive < max(min_decisive, 1):
        reason = f"{decisive} decisive votes, need at least {max(min_decisive, 1)}"
        return _empty("insufficient", reason, votes, decisive)

    win_rate = votes.challenger_wins / decisive
    test = stats.binomtest(votes.challenger_wins, decisive, 0.5)
    ci = test.proportion_ci(confidence_level=0.95, method="exact")
    seq = vote_test(votes, tau2=tau2, alpha=alpha, previous=previous)

    half = 0.5 * (votes.ties + votes.both_bad)
    point = _two_player_ratings(
        np.array(votes.champion_wins + half), np.array(votes.challenger_wins + half)
    )
    total = sum(counts)
    rng = np.random.default_rng(seed)
    draws = rng.multinomial(total, np.array(counts, dtype=np.float64) / total, size=bootstrap)
    boot_half = 0.5 * (draws[:, 2] + draws[:, 3])
    boot = _two_player_ratings(draws[:, 1] + boot_half, draws[:, 0] + boot_half)
    lo, hi = np.percentile(boot, [2.5, 97.5], axis=0)
    return VoteComparison(
        status="ok",
        reason="",
        counts=votes,
        decisive=decisive,
        win_rate=win_rate,
        win_rate_ci=(float(ci.low), float(ci.high)),
        p_value=float(test.pvalue),
        sequential=seq,
        bradley_terry={"champion": float(point[0]), "challenger": float(point[1])},
        bradley_terry_ci={
            "champion": (float(lo[0]), float(hi[0])),
            "challenger": (float(lo[1]), float(hi[1])),
        },
        voters=votes.voters().units,
    )
