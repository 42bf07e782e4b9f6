"""The dense text model: a mean-pooled folder (the default MiniLM) runs on transformers alone
and gives the vectors sentence-transformers gives; other layouts still go through it."""

from __future__ import annotations

import json
import shutil

import numpy as np

from common.models import reference
from common.models.text import load_text_encoder, mean_pooled_layout

TEXTS = ["a warm winter coat", "  INVOICE 2026-0088  ", "x" * 3000, "Fresh coffee beans", "a", "tow away zone"]


def test_the_default_model_runs_without_sentence_transformers_and_gives_its_vectors(make_settings):
    from sentence_transformers import SentenceTransformer

    encoder = load_text_encoder(make_settings())
    assert encoder.light and encoder.dim == 384
    got = encoder.encode(TEXTS, batch_size=4)  # several batches of different padding
    reference_model = SentenceTransformer(str(reference.minilm_dir()), device="cpu", local_files_only=True)
    want = reference_model.encode(TEXTS, batch_size=64, normalize_embeddings=True, convert_to_numpy=True,
                                  show_progress_bar=False)
    assert got.dtype == np.float32 and got.shape == want.shape
    assert np.abs(got - want).max() < 1e-5
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_other_layouts_are_left_to_sentence_transformers(tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(reference.minilm_dir(), folder)
    assert mean_pooled_layout(folder) == {"max_seq_length": 256, "do_lower_case": False}
    pooling = folder / "1_Pooling" / "config.json"
    config = json.loads(pooling.read_text())
    pooling.write_text(json.dumps({**config, "pooling_mode_mean_tokens": False, "pooling_mode_cls_token": True}))
    assert mean_pooled_layout(folder) is None  # CLS pooling
    pooling.write_text(json.dumps(config))
    (folder / "config_sentence_transformers.json").write_text(json.dumps({"prompts": {"query": "query: "}}))
    assert mean_pooled_layout(folder) is None  # prompts change the text encoded
    (folder / "config_sentence_transformers.json").unlink()
    (folder / "modules.json").write_text(json.dumps([{"idx": 0, "name": "0", "path": "",
                                                      "type": "sentence_transformers.models.Transformer"}]))
    assert mean_pooled_layout(folder) is None  # no pooling / normalize
    assert mean_pooled_layout(tmp_path / "absent") is None
