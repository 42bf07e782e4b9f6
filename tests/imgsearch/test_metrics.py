"""Metrics against values computed by hand (the arithmetic is in each test's comment)."""

from __future__ import annotations

import pytest

from imgsearch import metrics

# ranking: a(rel) b c(rel) d e(rel); relevant = {a, c, e, z}: z is never retrieved.
RANKED = ["a", "b", "c", "d", "e"]
RELEVANT = {"a", "c", "e", "z"}


def test_precision_recall_f1_at_k():
    assert metrics.precision_at(RANKED, RELEVANT, 3) == pytest.approx(2 / 3)   # a, c of 3
    assert metrics.recall_at(RANKED, RELEVANT, 3) == pytest.approx(2 / 4)      # a, c of 4 relevant
    # F1 = 2 * (2/3) * (1/2) / (2/3 + 1/2) = (2/3) / (7/6) = 4/7
    assert metrics.f1_at(RANKED, RELEVANT, 3) == pytest.approx(4 / 7)
    # a short list is not rewarded: 3 relevant among 5 results, divided by k = 10
    assert metrics.precision_at(RANKED, RELEVANT, 10) == pytest.approx(0.3)
    assert metrics.f1_at(["b", "d"], RELEVANT, 2) == 0.0


def test_average_precision_counts_missed_relevant_as_zero():
    # precisions at the hits: 1/1, 2/3, 3/5; z missed -> (1 + 2/3 + 3/5 + 0) / 4 = 0.566666...
    assert metrics.average_precision(RANKED, RELEVANT) == pytest.approx((1 + 2 / 3 + 3 / 5) / 4)
    assert metrics.average_precision(["a", "c", "e", "z"], RELEVANT) == 1.0
    assert metrics.average_precision(["b", "d"], RELEVANT) == 0.0


def test_pr_auc_interpolates_precision():
    # ranking b a(rel) c(rel) with 2 relevant: points (r=.5, p=1/2), (r=1, p=2/3).
    # interpolated: p(r<=.5) = max(1/2, 2/3) = 2/3, p(.5<r<=1) = 2/3 -> area 2/3;
    # AP for the same ranking is (1/2 + 2/3) / 2 = 7/12, smaller.
    assert metrics.pr_auc(["b", "a", "c"], {"a", "c"}) == pytest.approx(2 / 3)
    assert metrics.average_precision(["b", "a", "c"], {"a", "c"}) == pytest.approx(7 / 12)
    # RANKED: points (.25, 1), (.5, 2/3), (.75, 3/5); recall never reaches 1 ->
    # .25 * 1 + .25 * 2/3 + .25 * 3/5 = 0.566666... (equal to AP: precision never rises)
    assert metrics.pr_auc(RANKED, RELEVANT) == pytest.approx(0.25 * (1 + 2 / 3 + 3 / 5))
    assert metrics.pr_auc([], RELEVANT) == 0.0


def test_pr_curve_is_interpolated_precision_at_eleven_recall_levels():
    # RANKED: points (.25, 1), (.5, 2/3), (.75, 3/5), recall 1 never reached.
    # level 0-.25 -> 1; .3-.5 -> max(2/3, 3/5) = 2/3; .6-.75 -> 3/5; .8-1 -> 0
    assert metrics.pr_curve(RANKED, RELEVANT) == pytest.approx(
        [1, 1, 1, 2 / 3, 2 / 3, 2 / 3, 3 / 5, 3 / 5, 0, 0, 0])
    # b a(rel) c(rel): precision rises from 1/2 to 2/3, so interpolation lifts every level to 2/3
    assert metrics.pr_curve(["b", "a", "c"], {"a", "c"}) == pytest.approx([2 / 3] * 11)
    assert metrics.pr_curve([], RELEVANT) == [0.0] * 11
    # the channel's curve is the mean of its queries' curves
    assert metrics.mean_curve([[1.0] * 11, [0.0] * 11]) == [0.5] * 11
    assert metrics.mean_curve([]) == [0.0] * 11


def test_reciprocal_rank_and_hits():
    assert metrics.reciprocal_rank(["b", "d", "c"], RELEVANT) == pytest.approx(1 / 3)
    assert metrics.reciprocal_rank(["b"], RELEVANT) == 0.0
    assert metrics.hit_at(["b", "d", "c"], RELEVANT, 1) == 0.0
    assert metrics.hit_at(["b", "d", "c"], RELEVANT, 3) == 1.0


def test_query_and_mean_metrics():
    one = metrics.query_metrics(RANKED, RELEVANT, 5)
    assert set(one) == set(metrics.METRICS)
    assert one["p@k"] == pytest.approx(3 / 5) and one["r@k"] == pytest.approx(3 / 4)
    assert one["hit@1"] == 1.0 and one["mrr"] == 1.0
    two = metrics.query_metrics(["x", "y", "c"], {"c"}, 5)
    assert two["map"] == pytest.approx(1 / 3) and two["hit@1"] == 0.0 and two["hit@5"] == 1.0
    mean = metrics.mean_metrics([one, two])
    assert mean["map"] == pytest.approx(((1 + 2 / 3 + 3 / 5) / 4 + 1 / 3) / 2)
    assert mean["hit@1"] == pytest.approx(0.5)


def test_a_query_without_relevant_items_is_refused():
    with pytest.raises(ValueError, match="relevant"):
        metrics.query_metrics(RANKED, set(), 5)
    with pytest.raises(ValueError, match="k must be"):
        metrics.precision_at(RANKED, RELEVANT, 0)
