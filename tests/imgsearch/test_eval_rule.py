"""The fusion rule line of `imgsearch eval` (issue 18): fused hit@5 and mAP >= best channel's - 0.02."""

from __future__ import annotations

from imgsearch.evaluate import FUSED, ChannelResult, EvalReport


def result(name: str, per_query: dict[str, tuple[float, float]]) -> ChannelResult:
    base = {"p@k": 0.0, "r@k": 0.0, "f1@k": 0.0, "pr_auc": 0.0, "mrr": 0.0, "hit@1": 0.0}
    return ChannelResult(name, {q: {**base, "hit@5": h, "map": m} for q, (h, m) in per_query.items()},
                         {q: [0.0] * 11 for q in per_query})


def test_rule_per_kind_against_the_best_single_channel():
    kinds = {"code": ["c1", "c2"], "paraphrase": ["p1", "p2"]}
    channels = [result("bm25", {"c1": (1, 1.0), "c2": (1, 1.0), "p1": (0, 0.2), "p2": (1, 0.5)}),
                result("dense", {"c1": (1, 0.9), "c2": (1, 0.9), "p1": (1, 1.0), "p2": (1, 1.0)}),
                result(FUSED, {"c1": (1, 1.0), "c2": (1, 0.97), "p1": (1, 0.5), "p2": (1, 1.0)})]
    report = EvalReport("set", 10, 10, 100, kinds, channels)
    rule = {kind: holds for kind, holds, _ in report.rule()}
    assert rule == {"code": True, "paraphrase": False}  # code: mAP 0.985 >= 1.0 - 0.02; paraphrase 0.75 < 0.98
    text = report.render()
    assert "code: holds" in text and "paraphrase: does NOT hold" in text and "map 0.750 vs dense 1.000" in text
    assert report.to_dict()["rule"] == rule


def test_no_rule_without_a_fused_run():
    report = EvalReport("set", 1, 10, 100, {"k": ["q"]}, [result("clip", {"q": (1, 1.0)})])
    assert report.rule() == [] and "fusion rule" not in report.render()
