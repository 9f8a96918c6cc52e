"""Power-law fits of loss against compute, L(C) = E + A * C^-alpha, and compute multipliers.

- `fit_power_law`: one variant's E, A, alpha.
- `fit_joint`: every variant at once with E and alpha shared, one A per variant, so that a variant's
  effective compute multiplier against the baseline is one number,
  m = (A_baseline / A_variant)^(1 / alpha): the variant reaches any loss with 1/m of the compute.
- `bootstrap`: intervals by resampling seeds within each rung (the same draw for every variant, since
  runs of one seed see the same data), refitting each time; estimate +- t x the replicates' spread.

How the fits are done (Hoffmann et al. 2022, approach 3, and OLMo-core's scaling ladder): residuals
in log space, log(prediction) - log(loss), under a Huber loss (delta 1e-3) so that one bad point
cannot pull the curve; scipy.optimize.least_squares from a grid of initial values, keeping the best.
Compute is rescaled by its geometric mean inside the fit (A is reported in FLOPs units).
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import numpy as np
from scipy import optimize, stats

HUBER_DELTA = 1e-3        # Hoffmann et al. 2022 (Chinchilla), on log-loss residuals
ALPHA_BOUNDS = (1e-3, 3.0)
INITIAL_E = (0.0, 0.5, 0.8, 0.95)  # fractions of the smallest loss
INITIAL_ALPHA = (0.05, 0.15, 0.3, 0.6, 1.2)


@dataclass
class PowerLaw:
    """L(C) = E + A * C^-alpha, and how well it fits the runs it came from."""

    E: float
    A: float
    alpha: float
    r2: float = math.nan
    n_points: int = 0
    n_rungs: int = 0

    def __call__(self, compute: np.ndarray | float) -> np.ndarray:
        return self.E + self.A * np.asarray(compute, dtype=float) ** -self.alpha

    def compute_for(self, loss: np.ndarray | float) -> np.ndarray:
        """The compute at which this curve reaches `loss` (inf at or below E)."""
        gap = np.asarray(loss, dtype=float) - self.E
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(gap > 0, (gap / self.A) ** (-1.0 / self.alpha), np.inf)


@dataclass
class JointFit:
    """Variants sharing E and alpha; `A[v]` per variant; `r2` per variant on its own runs."""

    E: float
    alpha: float
    A: dict[str, float]
    r2: dict[str, float] = field(default_factory=dict)
    n_points: dict[str, int] = field(default_factory=dict)
    n_rungs: dict[str, int] = field(default_factory=dict)

    def curve(self, variant: str) -> PowerLaw:
        return PowerLaw(self.E, self.A[variant], self.alpha, self.r2.get(variant, math.nan),
                        self.n_points.get(variant, 0), self.n_rungs.get(variant, 0))

    def multiplier(self, variant: str, baseline: str) -> float:
        """Compute the baseline needs for the variant's loss, over the variant's: (A_b / A_v)^(1/alpha)."""
        return float(math.exp((math.log(self.A[baseline]) - math.log(self.A[variant])) / self.alpha))


def r_squared(observed: np.ndarray, predicted: np.ndarray) -> float:
    observed, predicted = np.asarray(observed, float), np.asarray(predicted, float)
    total = float(np.sum((observed - observed.mean()) ** 2))
    return 1.0 - float(np.sum((observed - predicted) ** 2)) / total if total > 0 else math.nan


def _solve(residuals, jacobian, starts: list[np.ndarray], lower: np.ndarray, upper: np.ndarray,
           delta: float) -> np.ndarray:
    """The least Huber cost over `starts` (scipy.optimize.least_squares, trust region with bounds)."""
    best, best_cost = None, math.inf
    for start in starts:
        start = np.clip(start, lower + 1e-12, upper - 1e-12)
        try:
            result = optimize.least_squares(residuals, start, jac=jacobian, bounds=(lower, upper), loss="huber",
                                            f_scale=delta, x_scale="jac", max_nfev=500)
        except (ValueError, FloatingPointError):
            continue
        if np.isfinite(result.cost) and result.cost < best_cost:
            best, best_cost = result.x, result.cost
    if best is None:
        raise FloatingPointError("no initial value gave a finite fit")
    return best


def _starts(loss_min: float, losses: list[np.ndarray], xs: list[np.ndarray]) -> list[np.ndarray]:
    """Initial (E, alpha, log_a per variant) from the grid INITIAL_E x INITIAL_ALPHA; each log_a is
    the least-squares intercept of log(L - E) + alpha x for that start."""
    starts = []
    for e_fraction, alpha in itertools.product(INITIAL_E, INITIAL_ALPHA):
        E = e_fraction * loss_min
        log_as = [float(np.mean(np.log(np.maximum(l - E, 1e-9)) + alpha * xv)) for l, xv in zip(losses, xs)]
        starts.append(np.array([E, alpha, *log_as]))
    return starts


def _fit(computes: list[np.ndarray], losses: list[np.ndarray], scale: float, delta: float,
         start: np.ndarray | None = None) -> np.ndarray:
    """(E, alpha, log_a per group) minimizing the Huber cost of log residuals; x = ln(C / scale)."""
    x = np.concatenate([np.log(np.asarray(c, float) / scale) for c in computes])
    log_loss = np.log(np.concatenate([np.asarray(l, float) for l in losses]))
    group = np.concatenate([np.full(len(c), i) for i, c in enumerate(computes)])
    n, rows = len(computes), np.arange(len(x))
    loss_min = float(np.exp(log_loss.min()))

    def terms(p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        power = np.exp(np.clip(p[2 + group] - p[1] * x, -700, 700))  # A C^-alpha, in the rescaled units
        return power, p[0] + power

    def residuals(p: np.ndarray) -> np.ndarray:
        return np.log(terms(p)[1]) - log_loss

    def jacobian(p: np.ndarray) -> np.ndarray:
        power, prediction = terms(p)
        jac = np.zeros((len(x), 2 + n))
        jac[:, 0] = 1.0 / prediction
        jac[:, 1] = -x * power / prediction
        jac[rows, 2 + group] = power / prediction
        return jac

    lower = np.array([0.0, ALPHA_BOUNDS[0], *[-50.0] * n])
    upper = np.array([loss_min, ALPHA_BOUNDS[1], *[50.0] * n])
    xs = [x[group == i] for i in range(n)]
    starts = [start] if start is not None else _starts(loss_min, losses, xs)
    return _solve(residuals, jacobian, starts, lower, upper, delta)


def _scale(computes: list[np.ndarray]) -> float:
    return float(np.exp(np.mean(np.log(np.concatenate([np.asarray(c, float) for c in computes])))))


def fit_power_law(compute: np.ndarray, loss: np.ndarray, points: tuple[np.ndarray, np.ndarray] | None = None,
                  start: PowerLaw | None = None, delta: float = HUBER_DELTA) -> PowerLaw:
    """E, A, alpha of `loss` against `compute` (the values fitted: one per rung, seeds averaged).
    `points` (compute, loss of every run) gives R^2 and n_points; default: the fitted values."""
    compute, loss = np.asarray(compute, float), np.asarray(loss, float)
    scale = _scale([compute])
    guess = None if start is None else np.array([start.E, start.alpha, math.log(start.A) - start.alpha * math.log(scale)])
    E, alpha, log_a = _fit([compute], [loss], scale, delta, guess)
    law = PowerLaw(float(E), float(math.exp(log_a + alpha * math.log(scale))), float(alpha))
    run_c, run_l = points if points is not None else (compute, loss)
    law.r2, law.n_points, law.n_rungs = r_squared(run_l, law(run_c)), len(run_l), len(np.unique(compute))
    return law


def fit_joint(cells: dict[str, tuple[np.ndarray, np.ndarray]],
              points: dict[str, tuple[np.ndarray, np.ndarray]] | None = None,
              start: JointFit | None = None, delta: float = HUBER_DELTA) -> JointFit:
    """E and alpha shared by every variant of `cells` ({variant: (compute, loss) per rung}), one A each."""
    names = list(cells)
    computes, losses = [cells[v][0] for v in names], [cells[v][1] for v in names]
    scale = _scale(computes)
    guess = None
    if start is not None:
        guess = np.array([start.E, start.alpha, *[math.log(start.A[v]) - start.alpha * math.log(scale) for v in names]])
    p = _fit(computes, losses, scale, delta, guess)
    E, alpha = float(p[0]), float(p[1])
    fit = JointFit(E, alpha, {v: float(math.exp(p[2 + i] + alpha * math.log(scale))) for i, v in enumerate(names)})
    for v in names:
        run_c, run_l = (points or cells)[v]
        fit.r2[v] = r_squared(run_l, fit.curve(v)(run_c))
        fit.n_points[v], fit.n_rungs[v] = len(run_l), len(np.unique(cells[v][0]))
    return fit


# -- bootstrap over seeds ------------------------------------------------------------------------
@dataclass
class Cell:
    """The runs of one variant at one rung: compute and loss per seed."""

    variant: str
    rung: str
    compute: float
    losses: dict[str, float]   # seed -> loss

    @property
    def mean(self) -> float:
        return float(np.mean(list(self.losses.values())))


def huber_scale(cells: list[Cell]) -> float:
    """The Huber loss's scale for fits to cell means: 1.345 x the noise of a cell's mean in log loss
    (pooled seed spread / sqrt(seeds)), the usual 95 %-efficiency tuning (Huber 1964), never below
    HUBER_DELTA: points within it count quadratically, farther ones linearly."""
    spread = [np.log(list(c.losses.values())) for c in cells if len(c.losses) > 1]
    if not spread:
        return HUBER_DELTA
    dof = sum(len(s) - 1 for s in spread)
    sd = math.sqrt(sum(float(np.var(s, ddof=1)) * (len(s) - 1) for s in spread) / dof)
    n = float(np.mean([len(c.losses) for c in cells]))
    return max(HUBER_DELTA, 1.345 * sd / math.sqrt(n))


def cell_arrays(cells: list[Cell], variant: str) -> tuple[np.ndarray, np.ndarray]:
    mine = sorted((c for c in cells if c.variant == variant), key=lambda c: c.compute)
    return np.array([c.compute for c in mine]), np.array([c.mean for c in mine])


def run_arrays(cells: list[Cell], variant: str) -> tuple[np.ndarray, np.ndarray]:
    mine = [c for c in cells if c.variant == variant]
    return (np.array([c.compute for c in mine for _ in c.losses]),
            np.array([v for c in mine for v in c.losses.values()]))


def _seeds_by_rung(cells: list[Cell]) -> dict[str, list[str]]:
    by_rung: dict[str, set[str]] = {}
    for c in cells:
        by_rung.setdefault(c.rung, set()).update(c.losses)
    return {rung: sorted(seeds) for rung, seeds in by_rung.items()}


def resample(cells: list[Cell], rng: np.random.Generator) -> list[Cell]:
    """One bootstrap replicate: at each rung the seeds are drawn with replacement, the same draw for
    every variant (a seed fixes the data order, so its runs are paired); a cell's mean then moves by
    sqrt(n / (n - 1)) times the raw draw's deviation, the small-sample correction that makes the
    replicate's variance that of the mean (Davison & Hinkley 1997, sec. 3.3), which matters with 3 seeds."""
    seeds_of = _seeds_by_rung(cells)
    out = []
    for rung, seeds in seeds_of.items():
        rung_cells = [c for c in cells if c.rung == rung]
        draw = [seeds[i] for i in rng.integers(0, len(seeds), len(seeds))]
        for c in rung_cells:
            values = np.array([c.losses[s] for s in draw if s in c.losses])
            if values.size == 0:  # none of the drawn seeds ran for this variant: draw its own
                own = np.array(list(c.losses.values()))
                values = own[rng.integers(0, own.size, own.size)]
            n = len(c.losses)
            inflate = math.sqrt(n / (n - 1)) if n > 1 else 0.0
            mean = c.mean + inflate * (float(values.mean()) - c.mean)
            out.append(Cell(c.variant, c.rung, c.compute, {"mean": mean}))
    return out


@dataclass
class Bootstrap:
    """Intervals at `confidence` of each variant's joint-fit multiplier and of the difference of its
    separate-fit exponent and the baseline's."""

    confidence: float
    n: int
    multiplier: dict[str, tuple[float, float]]
    alpha_difference: dict[str, tuple[float, float]]
    n_failed: int = 0


def bootstrap(cells: list[Cell], baseline: str, joint: JointFit, separate: dict[str, PowerLaw],
              n: int = 400, confidence: float = 0.90, seed: int = 0, delta: float = HUBER_DELTA,
              exponents: bool = True) -> Bootstrap:
    """Refit the joint model (and, with `exponents`, the separate fits) on `n` seed resamples, each fit
    started from the fit to the data; intervals from the replicates' spread."""
    rng = np.random.default_rng(seed)
    variants = [v for v in joint.A if v != baseline]
    ms: dict[str, list[float]] = {v: [] for v in variants}
    dalpha: dict[str, list[float]] = {v: [] for v in variants if exponents and v in separate and baseline in separate}
    failed = 0
    for _ in range(n):
        sample = resample(cells, rng)
        try:
            refit = fit_joint({v: cell_arrays(sample, v) for v in joint.A}, start=joint, delta=delta)
            laws = {v: fit_power_law(*cell_arrays(sample, v), start=separate[v], delta=delta)
                    for v in separate if dalpha}
        except FloatingPointError:
            failed += 1
            continue
        for v in variants:
            ms[v].append(refit.multiplier(v, baseline))
        for v in dalpha:
            dalpha[v].append(laws[v].alpha - laws[baseline].alpha)
    # The bootstrap's standard error with Student's t (Efron & Tibshirani 1993, sec. 12.2 and 13.3): with 3
    # seeds per rung a percentile interval is too short (the spread is estimated from few degrees of freedom,
    # and its tails from few draws), so the interval is estimate +- t(dof) x the replicates' standard
    # deviation, dof = sum over rungs of (seeds - 1); for the multiplier on the log scale, where a ratio is
    # symmetric. Synthetic ladders with 3 seeds: 92 % coverage at 90 % (tests/test_ladder.py).
    dof = max(1, sum(len(seeds) - 1 for seeds in _seeds_by_rung(cells).values()))
    t = float(stats.t.ppf(1 - (1 - confidence) / 2, dof))

    def log_interval(values: list[float], centre: float) -> tuple[float, float]:
        values = [v for v in values if 0 < v < math.inf]  # a degenerate refit (alpha at its bound) says nothing
        if len(values) < 2:
            return math.nan, math.nan
        half = t * float(np.std(np.log(values), ddof=1))
        return float(centre * math.exp(-half)), float(centre * math.exp(half))

    def interval(values: list[float], centre: float) -> tuple[float, float]:
        if len(values) < 2:
            return math.nan, math.nan
        half = t * float(np.std(values, ddof=1))
        return centre - half, centre + half

    return Bootstrap(confidence, n - failed, {v: log_interval(ms[v], joint.multiplier(v, baseline)) for v in variants},
                     {v: interval(dalpha[v], separate[v].alpha - separate[baseline].alpha) for v in dalpha}, failed)
