"""The length-controlled win rate of AlpacaEval 2.0 (Dubois et al. 2024, "Length-Controlled
AlpacaEval: A Simple Way to Debias Automatic Evaluators", arXiv:2404.04475), our own code.

The definition is alpaca_eval's ``src/alpaca_eval/metrics/glm_winrate.py`` (read at 0.6.6). Per
model, a logistic GLM of the judge's preference for the model over the baseline,

    logit P(model ≻ baseline) = φ·tanh(Δ / sd(Δ)) + θ,   Δ = len(model) − len(baseline) in characters,

sd with ddof=1, and the length-controlled (LC) win rate is the prediction at Δ = 0, σ(θ), in percent.
This is their ``length_controlled_minimal`` formula. Their default ``length_controlled_v1`` adds
ψ·γ_x, an instruction difficulty precomputed on AlpacaEval's own 805 instructions and leaderboard
models (``df_gamed.csv`` on the hub), and regularises towards two "gamed" baselines fitted there;
neither exists for our prompts, so the minimal form is the one we can compute. In it every
instruction gets the same prediction, so the mean over instructions is σ(θ) itself.

The fit is theirs (``fit_LogisticRegressionCV``): the soft label p = preference − 1 enters as two
rows, a win weighted p and a loss weighted 1 − p; θ is a column of ones (their
``not_gamed_baseline``), not a free intercept, so the L1 penalty shrinks it too; liblinear, L1,
``random_state=123``; C from 10 values logspaced over [1e-4, 1e4], chosen by 5-fold GroupKFold
(grouped by annotation row, one per instruction, so both rows of an instruction share a fold) on
the summed per-fold mean of the continuous log loss, then refit on all rows. We run that loop
ourselves, not through LogisticRegressionCV and metadata routing, whose arguments are in flux
(``penalty`` deprecated in 1.8), and deal the folds as GroupKFold does from scikit-learn 1.6 on;
before 1.6 it sorted with an unstable argsort, so alpaca_eval's folds, and its answer, depend there
on numpy's sort of ties. Against alpaca-eval 0.6.6 on scikit-learn 1.9.1 we agree to the last digit.
``regularised=False`` instead finds the unpenalised maximum-likelihood fit (Newton's method).

Where we differ, on purpose: Δ is model − baseline (theirs is ``output_1 − output_2``, baseline −
model, so their saved weight is −φ; σ(θ) is the same). A preference must be in [1, 2] (2: model
wins, 1: baseline wins, 1.5: tie); alpaca_eval also reads 0 as a tie and drops NaN preferences, we
refuse both. We return no ``lc_standard_error``: theirs is the standard error over instructions of
the per-instruction predictions, which in the minimal form are all equal, so it is exactly 0 (in v1
it measures the spread of instruction difficulty, not the uncertainty of the LC rate).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

N_SPLITS = 5  # GroupKFold's folds: the fewest instructions we take
CS = np.logspace(-4, 4, 10)  # LogisticRegressionCV(Cs=10)'s grid
RANDOM_STATE = 123
_EPS = 1e-15  # their log loss clips predictions to [eps, 1 − eps]


@dataclass(frozen=True)
class LengthControlledWinRate:
    """Win rates in percent, as AlpacaEval reports them."""

    lc_win_rate: float  # σ(θ) · 100: the predicted win rate with no length difference
    win_rate: float  # mean(preference − 1) · 100
    standard_error: float  # of win_rate: sd(preference − 1, ddof=1) / √n · 100
    length_coef: float  # φ, on tanh(Δ / sd(Δ)) with Δ = model − baseline; > 0: longer wins
    intercept: float  # θ
    C: float | None  # the chosen inverse L1 strength; None when unregularised
    n: int


def length_controlled_win_rate(model_lengths, baseline_lengths, preferences, *,
                               regularised: bool = True) -> LengthControlledWinRate:
    """AlpacaEval 2.0's LC win rate (minimal form) of one model against one baseline.

    One entry per instruction: the lengths in characters of the model's and the baseline's
    outputs (``len(text)``) and the judge's preference in [1, 2], 2 meaning the model wins.
    """
    model, base, pref = _checked(model_lengths, baseline_lengths, preferences)
    p = pref - 1.0
    delta = model - base
    scale = delta.std(ddof=1)
    if not scale > 0:
        raise ValueError("every length difference is the same: the length term cannot be fitted")
    X = np.column_stack([np.tanh(delta / scale), np.ones_like(delta)])
    if regularised:
        coef, C = _fit_l1_cv(X, p)
    else:
        coef, C = _fit_unpenalised(X, p), None
    n = len(p)
    return LengthControlledWinRate(
        lc_win_rate=100.0 * float(_sigmoid(coef[1])),
        win_rate=100.0 * float(p.mean()),
        standard_error=100.0 * float(p.std(ddof=1) / np.sqrt(n)),
        length_coef=float(coef[0]), intercept=float(coef[1]), C=C, n=n)


def _checked(model_lengths, baseline_lengths, preferences) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    arrays = []
    for name, values in (("model_lengths", model_lengths), ("baseline_lengths", baseline_lengths),
                         ("preferences", preferences)):
        a = np.asarray(values, dtype=np.float64)
        if a.ndim != 1:
            raise ValueError(f"{name} must be one-dimensional, one entry per instruction; got shape {a.shape}")
        if not np.isfinite(a).all():
            raise ValueError(f"{name} has {int((~np.isfinite(a)).sum())} NaN or infinite entries")
        arrays.append(a)
    model, base, pref = arrays
    if not len(model) == len(base) == len(pref):
        raise ValueError(f"one entry per instruction in each: got {len(model)} model lengths, "
                         f"{len(base)} baseline lengths and {len(pref)} preferences")
    if len(pref) < N_SPLITS:
        raise ValueError(f"{len(pref)} instructions: at least {N_SPLITS} are needed (the fit's {N_SPLITS} folds)")
    if (model < 0).any() or (base < 0).any():
        raise ValueError("a length is negative: lengths are counts of characters")
    bad = (pref < 1) | (pref > 2)
    if bad.any():
        hint = "; these look like probabilities in [0, 1]: pass 1 + p" if ((pref >= 0) & (pref <= 1)).all() else ""
        raise ValueError(f"{int(bad.sum())} preferences outside [1, 2] (AlpacaEval's convention: 2 model wins, "
                         f"1 baseline wins, 1.5 tie), e.g. {float(pref[bad][0])}{hint}")
    return model, base, pref


def _sigmoid(z):
    return np.exp(-np.logaddexp(0.0, -z))


def _log_loss(p: np.ndarray, q: np.ndarray) -> float:
    """The mean log loss of predictions q against soft labels p (alpaca_eval's ``logloss_continuous``)."""
    q = np.clip(q, _EPS, 1 - _EPS)
    return float(-np.mean(p * np.log(q) + (1 - p) * np.log(1 - q)))


def _fit_l1_cv(X: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, float]:
    """alpaca_eval's fit: L1 logistic regression on the duplicated rows, C by grouped 5-fold CV."""
    try:
        import sklearn
        from sklearn.linear_model import LogisticRegression
    except ImportError as e:
        raise ImportError("the length-controlled win rate needs scikit-learn: pip install -e '.[evals]'") from e
    n = len(p)
    # rows 0..n-1 the wins (weight p), n..2n-1 the losses (weight 1 − p), in alpaca_eval's order
    X2, y2 = np.vstack([X, X]), np.r_[np.ones(n), np.zeros(n)]
    weight, label = np.r_[p, 1 - p], np.r_[p, p]
    new_api = tuple(int(v) for v in sklearn.__version__.split(".")[:2]) >= (1, 8)
    l1 = {"l1_ratio": 1.0} if new_api else {"penalty": "l1"}

    def fit(C: float, rows):
        model = LogisticRegression(C=C, solver="liblinear", fit_intercept=False, random_state=RANDOM_STATE, **l1)
        return model.fit(X2[rows], y2[rows], sample_weight=weight[rows])

    # GroupKFold(5)'s folds as scikit-learn >= 1.6 deals groups of equal size: last instruction first,
    # each to the emptiest fold, so instruction i goes to fold (n - 1 - i) mod 5
    fold = np.tile((n - 1 - np.arange(n)) % N_SPLITS, 2)
    folds = [(np.flatnonzero(fold != f), np.flatnonzero(fold == f)) for f in range(N_SPLITS)]
    scores = [sum(-_log_loss(label[test], fit(C, train).predict_proba(X2[test])[:, 1]) for train, test in folds)
              for C in CS]
    best = float(CS[int(np.argmax(scores))])  # the first of equal scores, as LogisticRegressionCV
    return fit(best, slice(None)).coef_[0].astype(np.float64), best


def _fit_unpenalised(X: np.ndarray, p: np.ndarray, max_iter: int = 100) -> np.ndarray:
    """The maximum-likelihood fit to soft labels by Newton's method (the log likelihood is concave)."""
    coef = np.zeros(X.shape[1])
    for _ in range(max_iter):
        q = _sigmoid(X @ coef)
        hessian = X.T @ (X * (q * (1 - q))[:, None])
        try:
            step = np.linalg.solve(hessian, X.T @ (p - q))
        except np.linalg.LinAlgError:
            break
        coef = coef + step
        if not np.isfinite(coef).all():
            break
        if np.abs(step).max() < 1e-12 * max(1.0, np.abs(coef).max()):
            return coef
    raise ValueError("no finite unregularised fit (the preferences are separated by length, e.g. all wins): "
                     "use regularised=True")
