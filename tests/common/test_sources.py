"""Sources: the local walk and S3 listing both yield {uri, etag, size} and fetch bytes."""

from __future__ import annotations

import pytest

from common.errors import SourceError
from common.sources import LocalSource, open_source


def test_local_walk_is_recursive_sorted_and_skips_hidden(tmp_path, make_settings):
    (tmp_path / "b").mkdir()
    (tmp_path / ".git").mkdir()
    (tmp_path / "a.jpg").write_bytes(b"1")
    (tmp_path / "b" / "c.png").write_bytes(b"22")
    (tmp_path / ".hidden.jpg").write_bytes(b"3")
    (tmp_path / ".git" / "x.jpg").write_bytes(b"4")
    objs = list(open_source(str(tmp_path), make_settings()).list())
    assert [o.uri.rsplit("/", 2)[-2:] for o in objs] == [[tmp_path.name, "a.jpg"], ["b", "c.png"]]
    assert [o.size for o in objs] == [1, 2]
    assert all(o.uri.startswith("file:///") for o in objs)


def test_include_globs_and_fetch(tmp_path):
    (tmp_path / "x.JPG").write_bytes(b"abc")
    (tmp_path / "y.txt").write_bytes(b"zz")
    src = LocalSource(tmp_path, include=("*.jpg",))
    [obj] = list(src.list())
    assert src.fetch(obj.uri, 100) == b"abc"


def test_etag_changes_when_a_file_is_rewritten(tmp_path):
    f = tmp_path / "x.png"
    f.write_bytes(b"one")
    first = next(LocalSource(tmp_path).list()).etag
    f.write_bytes(b"other content")
    assert next(LocalSource(tmp_path).list()).etag != first


def test_bad_locations_get_clear_errors(tmp_path, make_settings):
    with pytest.raises(SourceError, match="folder not found"):
        open_source(str(tmp_path / "nope"), make_settings())
    (tmp_path / "f").write_bytes(b"")
    with pytest.raises(SourceError, match="not a folder"):
        open_source(str(tmp_path / "f"), make_settings())
    with pytest.raises(SourceError, match="unsupported source"):
        open_source("ftp://host/x", make_settings())


def test_listed_uri_prefix_matches_what_a_source_lists():
    from common.sources import listed_uri_prefix

    assert listed_uri_prefix("file:///data/shop") == "file:///data/shop/"
    assert listed_uri_prefix("file:///data/shop/") == "file:///data/shop/"
    assert listed_uri_prefix("s3://b/my photos/") == "s3://b/my%20photos/"  # listed URIs quote the key
    assert listed_uri_prefix("s3://b/shop") == "s3://b/shop"  # S3 lists shop2/ under prefix 'shop' too
    assert listed_uri_prefix("s3://b/") == "s3://b/"
