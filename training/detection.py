"""How good is a list of suspect labels: ranking and flagged-set metrics, and the cleanlab baseline.

Every detector here answers the same question, "is the given label wrong?", in two forms:

* a **score** per sample, higher = more likely wrong (e.g. ``1 - clean_prob``, a cross-entropy loss); it is
  judged as a ranking: AUROC, average precision, precision at k (k = the true number of wrong labels);
* a **flagged set**, the tool's own rule (``clean_prob <= p_threshold``, cleanlab's ``find_label_issues``);
  it is judged by precision, recall and F1 against the truth.

Pure functions on numpy arrays; cleanlab is imported only by :func:`cleanlab_issues` (a benchmark
dependency, not needed to train).
"""

from __future__ import annotations

import numpy as np


def _check(scores: np.ndarray, wrong: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scores, wrong = np.asarray(scores, dtype=np.float64), np.asarray(wrong, dtype=bool)
    if scores.shape != wrong.shape or scores.ndim != 1:
        raise ValueError(f"scores {scores.shape} and truth {wrong.shape} must be 1-D arrays of the same length")
    return scores, wrong


def auroc(scores: np.ndarray, wrong: np.ndarray) -> float:
    """Probability that a random wrong label scores higher than a random right one (ties count one half).

    Mann-Whitney U from average ranks; NaN when the truth has only one class.
    """
    scores, wrong = _check(scores, wrong)
    n_pos, n_neg = int(wrong.sum()), int((~wrong).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    # average rank (1-based) of each group of tied scores
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    ends = np.r_[starts[1:], len(scores)]
    for s, e in zip(starts, ends):
        ranks[order[s:e]] = (s + 1 + e) / 2.0
    u = ranks[wrong].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def average_precision(scores: np.ndarray, wrong: np.ndarray) -> float:
    """Area under the precision-recall step curve: sum over thresholds of (R_n - R_{n-1}) * P_n.

    Thresholds are the distinct scores (a group of ties enters at once), as scikit-learn's
    ``average_precision_score``; NaN without any wrong label.
    """
    precision, recall, _ = pr_curve(scores, wrong)
    if len(recall) == 0:
        return float("nan")
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def pr_curve(scores: np.ndarray, wrong: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(precision, recall, threshold) of "flag every sample scoring >= threshold", thresholds descending."""
    scores, wrong = _check(scores, wrong)
    if not wrong.any():
        return np.array([]), np.array([]), np.array([])
    order = np.argsort(-scores, kind="mergesort")
    s, w = scores[order], wrong[order]
    last_of_group = np.r_[s[1:] != s[:-1], True]
    tp = np.cumsum(w)[last_of_group]
    flagged = (np.arange(len(s)) + 1)[last_of_group]
    return tp / flagged, tp / w.sum(), s[last_of_group]


def precision_at_k(scores: np.ndarray, wrong: np.ndarray, k: int | None = None) -> float:
    """Share of truly wrong labels among the k highest scores (k = the number of wrong labels by default).

    Ties at the cut are broken by sample index (stable order), so the value is reproducible.
    """
    scores, wrong = _check(scores, wrong)
    k = int(wrong.sum()) if k is None else int(k)
    if k <= 0:
        return float("nan")
    top = np.argsort(-scores, kind="mergesort")[:k]
    return float(wrong[top].mean())


def flagged_quality(flagged: np.ndarray, wrong: np.ndarray) -> dict[str, float]:
    """Precision, recall and F1 of a flagged set as a detector of wrong labels (0 where undefined)."""
    flagged, wrong = np.asarray(flagged, dtype=bool), np.asarray(wrong, dtype=bool)
    if flagged.shape != wrong.shape:
        raise ValueError(f"flagged {flagged.shape} and truth {wrong.shape} must have the same shape")
    hits = float((flagged & wrong).sum())
    precision = hits / flagged.sum() if flagged.any() else 0.0
    recall = hits / wrong.sum() if wrong.any() else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return {"flagged": int(flagged.sum()), "precision": precision, "recall": recall, "f1": f1}


def detection_report(scores: np.ndarray, flagged: np.ndarray, wrong: np.ndarray) -> dict[str, float]:
    """All the numbers of one detector on one labelled set (see the module docstring)."""
    return {
        "auroc": auroc(scores, wrong),
        "ap": average_precision(scores, wrong),
        "precision_at_k": precision_at_k(scores, wrong),
        "truly_wrong": int(np.asarray(wrong, dtype=bool).sum()),
        **flagged_quality(flagged, wrong),
    }


def cleanlab_issues(labels: np.ndarray, pred_probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """cleanlab's confident learning on out-of-sample probabilities: (flagged mask, score, higher = more suspect).

    ``cleanlab.filter.find_label_issues`` with its defaults (``filter_by="prune_by_noise_rate"``) is the flagged
    set; the score is ``1 - get_label_quality_scores`` (self-confidence, cleanlab's default ranking).
    ``pred_probs`` must be out-of-sample (K-fold) for cleanlab's guarantees; rows in the order of ``labels``.
    """
    try:
        from cleanlab.filter import find_label_issues
        from cleanlab.rank import get_label_quality_scores
    except ImportError as err:
        raise ImportError("cleanlab is a benchmark dependency: pip install -r requirements-dev.txt") from err
    labels = np.asarray(labels, dtype=np.int64)
    pred_probs = np.asarray(pred_probs, dtype=np.float64)
    if pred_probs.ndim != 2 or len(pred_probs) != len(labels):
        raise ValueError(f"pred_probs {pred_probs.shape} must be (N, K) with N = {len(labels)} labels")
    flagged = find_label_issues(labels, pred_probs, n_jobs=1)
    score = 1.0 - get_label_quality_scores(labels, pred_probs)
    return np.asarray(flagged, dtype=bool), np.asarray(score, dtype=np.float64)
