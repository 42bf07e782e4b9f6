"""Fusion: RRF (ranks, weights, one entry per image, evidence, ties) and the score methods of issue 18."""

from __future__ import annotations

import pytest

from query.fusion import ChannelHit, FusedHit, confidence_weights, fuse


def test_images_ranked_well_by_several_channels_win():
    channels = {"clip": [ChannelHit(1, 0.9), ChannelHit(2, 0.8), ChannelHit(3, 0.7)],
                "bm25": [ChannelHit(2, 12.0, "SERIAL XK-4471", "ocr"), ChannelHit(4, 3.0, "xk", "tag")]}
    fused = fuse(channels, {}, rrf_k=60)
    assert [i for i, _, _ in fused] == [2, 1, 4, 3]
    assert fused[0][1] == pytest.approx(1 / 62 + 1 / 61)
    assert fused[0][2] == {"clip": {"rank": 2, "score": 0.8},
                           "bm25": {"rank": 1, "score": 12.0, "text": "SERIAL XK-4471", "kind": "ocr"}}


def test_weights_and_zero_weight():
    channels = {"clip": [ChannelHit(1, 0.9), ChannelHit(2, 0.1)], "dense": [ChannelHit(2, 0.7), ChannelHit(1, 0.2)]}
    assert [i for i, _, _ in fuse(channels, {"dense": 2.0})] == [2, 1]
    assert [i for i, _, _ in fuse(channels, {"dense": 0.0})] == [1, 2]


def test_a_text_channel_counts_an_image_once_at_its_best_row():
    rows = [ChannelHit(7, 5.0, "first line", "ocr"), ChannelHit(8, 4.0, "x", "ocr"),
            ChannelHit(7, 3.0, "second line", "ocr")]
    fused = fuse({"bm25": rows, "clip": [ChannelHit(8, 0.5)]}, {})
    assert {i: e["bm25"]["rank"] for i, _, e in fused} == {7: 1, 8: 2}
    assert dict((i, e["bm25"]["text"]) for i, _, e in fused)[7] == "first line"


def test_single_channel_keeps_its_scores_and_ties_break_by_rank_then_id():
    fused = fuse({"clip": [ChannelHit(5, 0.31), ChannelHit(9, 0.30)]}, {})
    assert [(i, s) for i, s, _ in fused] == [(5, 0.31), (9, 0.30)]
    tie = fuse({"a": [ChannelHit(3, 1.0), ChannelHit(4, 1.0)], "b": [ChannelHit(4, 1.0), ChannelHit(3, 1.0)]}, {})
    assert [i for i, _, _ in tie] == [3, 4]


def test_fused_hit_round_trips():
    hit = FusedHit(1, "s3://b/k", 0.0325, {"clip": {"rank": 1, "score": 0.3}})
    assert FusedHit.from_dict(hit.to_dict()) == hit


def test_a_tier_hit_outranks_agreement_of_other_channels():
    """Image 7 is a copy of the query (phash score 56 >= the tier's 40) but only phash finds
    it; image 2 is ranked first by clip and dense. Plain RRF puts 2 first; the tier puts 7."""
    channels = {"clip": [ChannelHit(2, 0.9), ChannelHit(3, 0.8)],
                "dense": [ChannelHit(2, 0.7), ChannelHit(3, 0.6)],
                "phash": [ChannelHit(7, 56.0)]}
    assert [i for i, _, _ in fuse(channels, {})][0] == 2
    fused = fuse(channels, {}, tiers={"phash": 40})
    assert [i for i, _, _ in fused] == [7, 2, 3]
    scores = [s for _, s, _ in fused]
    assert scores == sorted(scores, reverse=True)  # scores still fall with rank
    assert fused[0][2]["phash"]["tier"] is True and "tier" not in str(fused[1][2])


def test_a_tier_keeps_a_single_channels_order_and_scores():
    hits = [ChannelHit(1, 50.0), ChannelHit(2, 30.0)]
    fused = fuse({"phash": hits}, {}, tiers={"phash": 40})
    assert [(i, s) for i, s, _ in fused] == [(1, 50.0), (2, 30.0)]
    assert fused[0][2]["phash"]["tier"] is True


# -- fusion methods (issue 18) -------------------------------------------------------------
# A query one channel knows (a code: bm25 finds its image far above the rest) and one
# channel does not (clip on a serial number: a flat list, the right image far down).
KNOWING = [ChannelHit(1, 14.0, "INV-44768-WS", "ocr")] + [ChannelHit(i, 1.5 - i / 100, "x", "ocr") for i in range(2, 8)]
FLAT = [ChannelHit(i, 0.30 - i / 1000) for i in range(2, 60)] + [ChannelHit(1, 0.2)]


def test_confidence_of_a_flat_list_is_low_and_of_a_clear_top_is_high():
    from query.fusion import confidence

    assert confidence([0.30 - i / 1000 for i in range(60)]) < 2.5
    assert confidence([h.score for h in KNOWING]) > 20
    assert confidence([h.score for h in FLAT]) < 2.5
    assert confidence([5.0] * 10) == 0.0 and confidence([1.0, 0.5]) == 0.0  # nothing stands out; too few


@pytest.mark.parametrize("method", ["wrrf", "confidence", "clearance"])
def test_confidence_methods_follow_the_channel_that_knows(method):
    channels = {"clip": FLAT, "bm25": KNOWING}
    # equal-weight RRF: image 2 (clip #1, bm25 #2) wins
    assert [i for i, _, _ in fuse(channels, {}, method="rrf")][0] == 2
    assert [i for i, _, _ in fuse(channels, {}, method=method)][0] == 1


@pytest.mark.parametrize("method", ["confidence", "clearance"])
def test_a_word_channel_counts_as_much_of_the_query_as_its_best_hit_holds(method):
    # BM25 on an 8-word paraphrase: one text shares a rare word and stands far above the
    # few sharing a common one (robust z ~30); dense is sure of another image (z ~6)
    partial = [ChannelHit(1, 4.6, "bigger building next", "ocr", 1 / 8)] + [
        ChannelHit(i, 1.4 - i / 100, "two extreme parts", "ocr", 1 / 8) for i in range(10, 17)]
    dense = [ChannelHit(2, 0.51), ChannelHit(3, 0.25), ChannelHit(1, 0.23)] + [
        ChannelHit(i, 0.2 - i / 1000) for i in range(20, 70)]
    whole = [ChannelHit(h.image_id, h.score, h.text, h.kind, None) for h in partial]
    assert fuse({"bm25": whole, "dense": dense}, {}, method=method)[0][0] == 1
    fused = fuse({"bm25": partial, "dense": dense}, {}, method=method)
    assert fused[0][0] == 2
    assert dict((i, e) for i, _, e in fused)[1]["bm25"] == {
        "rank": 1, "score": 4.6, "text": "bigger building next", "kind": "ocr", "coverage": 0.125}
    full = [ChannelHit(h.image_id, h.score, h.text, h.kind, 1.0) for h in partial]
    assert fuse({"bm25": full, "dense": dense}, {}, method=method)[0][0] == 1  # all its words: it counts
    for weighed in ("wrrf", method):  # every method with per-query weights reads the coverage
        plain = confidence_weights({"bm25": whole, "dense": dense}, weighed)
        assert confidence_weights({"bm25": partial, "dense": dense}, weighed) == {
            "bm25": pytest.approx(plain["bm25"] / 8), "dense": plain["dense"]}


@pytest.mark.parametrize("method", ["minmax", "zscore", "confidence", "clearance"])
def test_a_fused_score_does_not_change_with_the_depth_the_channels_were_asked_for(method):
    # the service asks each channel for max(50, 3k) hits: k=10 and k=100 must order alike
    import random

    rng = random.Random(7)
    deep = {name: [ChannelHit(i, score) for i, score in zip(
                rng.sample(range(400), 150), sorted((rng.gauss(mean, 0.1) for _ in range(150)), reverse=True))]
            for name, mean in (("clip", 0.3), ("dense", 0.4), ("bm25", 5.0))}
    shallow = {name: hits[:50] for name, hits in deep.items()}
    cut = {i: score for i, score, _ in fuse(shallow, {}, method=method)}
    full = {i: score for i, score, _ in fuse(deep, {}, method=method)}
    assert cut == {i: pytest.approx(full[i]) for i in cut}
    assert all(full[i] == 0 for i in full.keys() - cut.keys())  # below every channel's top 50: nothing


@pytest.mark.parametrize("method", ["rrf", "wrrf", "minmax", "zscore", "confidence", "clearance"])
def test_every_method_ranks_agreement_first_keeps_evidence_and_falling_scores(method):
    channels = {"clip": [ChannelHit(1, 0.9), ChannelHit(2, 0.5), ChannelHit(3, 0.4), ChannelHit(4, 0.1)],
                "dense": [ChannelHit(1, 0.8), ChannelHit(3, 0.5), ChannelHit(5, 0.45), ChannelHit(6, 0.2)]}
    fused = fuse(channels, {}, method=method)
    assert fused[0][0] == 1 and {i for i, _, _ in fused} == {1, 2, 3, 4, 5, 6}
    assert fused[0][2] == {"clip": {"rank": 1, "score": 0.9}, "dense": {"rank": 1, "score": 0.8}}
    scores = [s for _, s, _ in fused]
    assert scores == sorted(scores, reverse=True)
    assert [i for i, _, _ in fuse(channels, {"clip": 0.0}, method=method)][:2] == [1, 3]  # weights still apply


# A channel whose scores sit tightly together far above its zero, one image a little above
# them (CLIP's text-to-image cosines on a word it cannot read): a large robust z from a gap
# small next to the scores. And one whose top stands clear by more than half of its score
# (dense on a sentence it holds), with a wider crowd, so a smaller z.
CONCENTRATED = [ChannelHit(100, 0.25)] + [ChannelHit(i, 0.212 - i / 10000) for i in range(1, 50)]
CLEAR = [ChannelHit(1, 0.60)] + [ChannelHit(i, 0.30 - i / 500) for i in range(2, 50)] + [ChannelHit(100, 0.05)]


def test_relative_clearance_is_the_tops_share_of_its_score_above_the_crowd():
    from query.fusion import confidence, relative_clearance

    conc, clear = [h.score for h in CONCENTRATED], [h.score for h in CLEAR]
    assert confidence(conc) > 2 * confidence(clear)          # the spread-normalised view
    assert relative_clearance(conc) == pytest.approx((0.25 - 0.20955) / 0.25)
    assert relative_clearance(clear) == pytest.approx((0.60 - 0.249) / 0.60)
    # measured from the channel's zero, not from its lowest score
    assert relative_clearance([3.0, 1.0, 1.0, 1.0]) == pytest.approx(2 / 3)
    assert relative_clearance([3.0, 1.0, 1.0, 1.0], zero=1.0) == pytest.approx(1.0)
    assert relative_clearance([-0.1, -0.2, -0.3]) == 0.0   # a top at or below the zero: nothing related
    assert relative_clearance([0.9, 0.1]) == 0.0           # too few to say
    assert relative_clearance([0.5] * 10) == 0.0


def test_clearance_follows_the_clear_channel_where_confidence_follows_the_concentrated_one():
    channels = {"clip": CONCENTRATED, "dense": CLEAR}
    assert [i for i, _, _ in fuse(channels, {}, method="confidence")][0] == 100
    fused = fuse(channels, {}, method="clearance")
    assert [i for i, _, _ in fused][:2] == [1, 100]
    # the weights are confidence x clearance per channel, on min-max scores
    from query.fusion import confidence, relative_clearance
    w = {name: confidence([h.score for h in hits]) * relative_clearance([h.score for h in hits])
         for name, hits in channels.items()}
    top = dict((i, s) for i, s, _ in fused)
    assert top[1] == pytest.approx(w["dense"] * 1.0 + w["clip"] * (0.2119 - 0.2071) / (0.25 - 0.2071), rel=1e-3)


def test_clearance_reads_each_channels_zero():
    from query.fusion import confidence, confidence_weights

    hits = [ChannelHit(i, 10.0 - i / 10) for i in range(1, 30)] + [ChannelHit(99, 20.0)]
    hits = sorted(hits, key=lambda h: -h.score)
    plain = confidence_weights({"x": hits, "y": CLEAR}, "clearance")["x"]
    shifted = confidence_weights({"x": hits, "y": CLEAR}, "clearance", zeros={"x": 9.0})["x"]
    z = confidence([h.score for h in hits])
    median = 8.55  # of the 30 scores: (8.6 + 8.5) / 2
    assert plain == pytest.approx(z * (20 - median) / 20)  # the gap is about half the top's height above 0
    assert shifted == pytest.approx(z)  # and all of it (capped at 1) above 9
    assert confidence_weights({"x": hits, "y": CLEAR}, "confidence")["x"] == pytest.approx(z)


def test_min_max_fusion_is_relative_score():
    channels = {"clip": [ChannelHit(1, 0.9), ChannelHit(2, 0.6), ChannelHit(3, 0.3)],
                "bm25": [ChannelHit(3, 10.0), ChannelHit(1, 5.0)]}
    got = {i: s for i, s, _ in fuse(channels, {}, method="minmax")}
    # clip: 1 -> 1, 2 -> 0.5, 3 -> 0; bm25 against its floor 0: 3 -> 1, 1 -> 0.5
    assert got == pytest.approx({1: 1.5, 2: 0.5, 3: 1.0})


@pytest.mark.parametrize("method", ["rrf", "wrrf", "minmax", "zscore", "confidence", "clearance"])
def test_tiers_and_single_channels_hold_in_every_method(method):
    channels = {"clip": [ChannelHit(2, 0.9), ChannelHit(3, 0.8)], "dense": [ChannelHit(2, 0.7), ChannelHit(3, 0.6)],
                "phash": [ChannelHit(7, 56.0), ChannelHit(3, 30.0)]}
    fused = fuse(channels, {}, tiers={"phash": 40}, method=method)
    assert fused[0][0] == 7 and fused[0][2]["phash"]["tier"] is True
    scores = [s for _, s, _ in fused]
    assert scores == sorted(scores, reverse=True)
    single = fuse({"clip": [ChannelHit(5, 0.31), ChannelHit(9, 0.30)]}, {}, method=method)
    assert [(i, s) for i, s, _ in single] == [(5, 0.31), (9, 0.30)]


def test_an_unknown_method_is_refused():
    with pytest.raises(ValueError, match="unknown fusion method"):
        fuse({"clip": []}, {}, method="borda")


def test_settings_list_the_methods_fusion_has():
    from common.errors import ConfigError
    from common.settings import Settings
    from query.fusion import METHODS

    for method in METHODS:
        assert Settings.from_env({"IMGSEARCH_FUSION": method}).fusion == method
    with pytest.raises(ConfigError, match="FUSION must be one of rrf, wrrf, minmax, zscore, confidence, clearance"):
        Settings.from_env({"IMGSEARCH_FUSION": "borda"})
