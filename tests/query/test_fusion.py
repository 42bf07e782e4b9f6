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
