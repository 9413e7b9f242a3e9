"""Builders of sufficient statistics for the experiments tests."""

from __future__ import annotations

import numpy as np

from experiments.analysis import Look
from experiments.stats import ArmStats, PhasedSums, RatioSums


def bernoulli(successes: int, trials: int) -> RatioSums:
    """One observation per unit: ``trials`` units, ``successes`` of them with x_u = 1."""
    return RatioSums(trials, successes, trials, successes, trials, successes)


def per_unit(x: list[int] | np.ndarray, y: list[int] | np.ndarray) -> RatioSums:
    """Sums from per-unit successes ``x`` and trials ``y`` (units with y == 0 dropped)."""
    xs, ys = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    keep = ys > 0
    xs, ys = xs[keep], ys[keep]
    return RatioSums(
        int(keep.sum()),
        float(xs.sum()),
        float(ys.sum()),
        float((xs * xs).sum()),
        float((ys * ys).sum()),
        float((xs * ys).sum()),
    )


def arm(
    *,
    units: int = 2000,
    thumbs_up: float = 0.6,
    error_rate: float = 0.01,
    latency_median: float = 400.0,
    ttft_median: float = 100.0,
    seed: int = 0,
    samples: int = 2000,
) -> ArmStats:
    """An arm with one request per unit, every request rated, and log-normal latencies."""
    rng = np.random.default_rng(seed)
    ups = round(thumbs_up * units)
    errors = round(error_rate * units)
    return ArmStats(
        requests=units,
        units=units,
        errors=PhasedSums.single(bernoulli(errors, units)),
        thumbs=PhasedSums.single(bernoulli(ups, units)),
        latency_ms=tuple(rng.lognormal(np.log(latency_median), 0.4, samples)),
        ttft_ms=tuple(rng.lognormal(np.log(ttft_median), 0.4, samples)),
    )


def look(
    champion: ArmStats,
    challenger: ArmStats,
    *,
    stage: int = 0,
    weights: dict[str, float] | None = None,
    elapsed_days: float = 1.0,
) -> Look:
    """A look whose stage and SRM window hold every unit of both arms."""
    units = {"champion": champion.units, "challenger": challenger.units}
    return Look(
        stage_index=stage,
        weights=weights or {"champion": 50.0, "challenger": 50.0},
        stage_units=units,
        srm_units=units,
        srm_window=f"stage {stage}",
        elapsed_days=elapsed_days,
    )
