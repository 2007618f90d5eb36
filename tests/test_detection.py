"""Label-error detection metrics against hand-computed values, and the cleanlab baseline on a known case."""

from __future__ import annotations

import numpy as np
import pytest

from training import detection

# A toy ranking, most suspect first: wrong, right, wrong, right, right, wrong.
SCORES = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
WRONG = np.array([1, 0, 1, 0, 0, 1], dtype=bool)


def test_auroc_counts_the_ordered_pairs():
    # wrong labels score 0.9, 0.7, 0.4; right ones 0.8, 0.6, 0.5: 3 + 2 + 0 of the 9 pairs are in order
    assert detection.auroc(SCORES, WRONG) == pytest.approx(5 / 9)
    # ties count one half: (0.5 + 1 + 0 + 0.5) / 4
    assert detection.auroc(np.array([0.5, 0.5, 0.2, 0.2]), np.array([1, 0, 1, 0], bool)) == pytest.approx(0.5)
    assert np.isnan(detection.auroc(SCORES, np.zeros(6, bool)))


def test_average_precision_and_precision_at_k():
    # hits at ranks 1, 3 and 6: precision 1, 2/3 and 1/2 there, each adding 1/3 of recall
    assert detection.average_precision(SCORES, WRONG) == pytest.approx((1 + 2 / 3 + 1 / 2) / 3)
    # a tied group enters at once: (0.5 recall at precision 1/2) + (0.5 recall at precision 2/4)
    assert detection.average_precision(np.array([0.5, 0.5, 0.2, 0.2]), np.array([1, 0, 1, 0], bool)) == 0.5
    assert detection.precision_at_k(SCORES, WRONG) == pytest.approx(2 / 3)  # k = 3 wrong labels
    assert detection.precision_at_k(SCORES, WRONG, k=1) == 1.0
    precision, recall, thresholds = detection.pr_curve(SCORES, WRONG)
    np.testing.assert_allclose(precision, [1, 1 / 2, 2 / 3, 2 / 4, 2 / 5, 3 / 6])
    np.testing.assert_allclose(recall, [1 / 3, 1 / 3, 2 / 3, 2 / 3, 2 / 3, 1])
    np.testing.assert_allclose(thresholds, SCORES)


def test_ranking_metrics_agree_with_scikit_learn_on_random_scores_with_ties():
    from sklearn.metrics import average_precision_score, roc_auc_score

    rs = np.random.RandomState(0)
    wrong = rs.rand(300) < 0.3
    scores = np.round(rs.rand(300) + 0.5 * wrong, 1)  # rounding makes many ties
    assert detection.auroc(scores, wrong) == pytest.approx(roc_auc_score(wrong, scores))
    assert detection.average_precision(scores, wrong) == pytest.approx(average_precision_score(wrong, scores))


def test_flagged_set_precision_recall_f1():
    flagged = np.array([1, 1, 0, 0, 0, 1], dtype=bool)
    q = detection.flagged_quality(flagged, WRONG)  # 2 hits of 3 flagged, of 3 wrong
    assert q["flagged"] == 3 and q["precision"] == q["recall"] == q["f1"] == pytest.approx(2 / 3)
    assert detection.flagged_quality(np.zeros(6, bool), WRONG)["f1"] == 0.0
    report = detection.detection_report(SCORES, flagged, WRONG)
    assert report["truly_wrong"] == 3 and report["auroc"] == pytest.approx(5 / 9)
    with pytest.raises(ValueError, match="same length"):
        detection.auroc(SCORES, WRONG[:5])


def test_cleanlab_finds_the_flipped_labels_of_a_synthetic_set():
    pytest.importorskip("cleanlab")
    rs = np.random.RandomState(1)
    n, k = 300, 3
    true = rs.randint(0, k, n)
    # out-of-sample probabilities that know the truth: 0.7-0.9 on the true class, the rest spread
    top = rs.uniform(0.7, 0.9, n)
    pred_probs = np.tile(((1 - top) / (k - 1))[:, None], (1, k))
    pred_probs[np.arange(n), true] = top
    given = true.copy()
    flipped = rs.choice(n, 30, replace=False)
    given[flipped] = (true[flipped] + rs.randint(1, k, 30)) % k
    flagged, score = detection.cleanlab_issues(given, pred_probs)
    wrong = given != true
    # prune_by_noise_rate removes as many as the estimated joint says are wrong: 28 of the 30 here, no false alarm
    assert flagged.shape == (n,) and not (flagged & ~wrong).any() and (flagged & wrong).sum() >= 27
    assert detection.auroc(score, wrong) == 1.0
    with pytest.raises(ValueError, match=r"must be \(N, K\)"):
        detection.cleanlab_issues(given[:10], pred_probs)
