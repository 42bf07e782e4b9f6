"""RRF fusion: ranks not scores, weights, one entry per image, evidence, deterministic ties."""

from __future__ import annotations

import pytest

from query.fusion import ChannelHit, FusedHit, fuse


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
