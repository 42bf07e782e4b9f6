"""Tests for tests/servers.py: the real SeaweedFS S3 server used by the test suite."""

from __future__ import annotations

import hashlib
import socket
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import botocore
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from tests.servers import S3Server, ServerError, find_weed, free_port

integration = pytest.mark.integration


@pytest.fixture(scope="module")
def s3():
    with S3Server() as server:
        yield server


def _error_code(excinfo: pytest.ExceptionInfo[ClientError]) -> str:
    return excinfo.value.response["Error"]["Code"]


def test_free_port_is_bindable():
    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_missing_weed_binary_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ServerError, match="'weed' not found"):
        find_weed()


@integration
def test_server_attributes(s3):
    assert s3.endpoint_url == f"http://127.0.0.1:{s3.ports['s3']}"
    assert s3.region == "us-east-1"
    assert s3.access_key and s3.secret_key
    assert s3.startup_seconds is not None and s3.startup_seconds < 10
    assert all(port > 0 for port in s3.ports.values())
    assert len(set(s3.ports.values())) == len(s3.ports)


@integration
def test_put_1200_objects_and_list_them_with_a_paginator(s3):
    client = s3.client(config=Config(max_pool_connections=16))
    bucket = "paging"
    client.create_bucket(Bucket=bucket)
    bodies = {f"images/{i:05d}.bin": f"object {i}".encode() for i in range(1200)}
    bodies["other/outside-prefix.bin"] = b"not listed"

    def put(key: str) -> str:
        return client.put_object(Bucket=bucket, Key=key, Body=bodies[key])["ETag"]

    with ThreadPoolExecutor(max_workers=16) as pool:
        put_etags = dict(zip(bodies, pool.map(put, bodies), strict=True))

    pages = client.get_paginator("list_objects_v2").paginate(
        Bucket=bucket, Prefix="images/", PaginationConfig={"PageSize": 500}
    )
    page_sizes = []
    listed = {}
    for page in pages:
        page_sizes.append(page["KeyCount"])
        for obj in page["Contents"]:
            listed[obj["Key"]] = obj["ETag"]

    assert page_sizes == [500, 500, 200]
    assert sorted(listed) == sorted(k for k in bodies if k.startswith("images/"))
    for key, etag in listed.items():
        # Single-part upload: the ETag is the quoted hex MD5 of the body.
        assert etag == f'"{hashlib.md5(bodies[key]).hexdigest()}"'
        assert etag == put_etags[key]

    got = client.get_object(Bucket=bucket, Key="images/01199.bin")
    assert got["Body"].read() == b"object 1199"


@integration
def test_wrong_secret_key_is_refused(s3):
    client = s3.client(aws_secret_access_key="not-the-secret")
    with pytest.raises(ClientError) as excinfo:
        client.list_buckets()
    assert _error_code(excinfo) == "SignatureDoesNotMatch"
    assert excinfo.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403


@integration
def test_unknown_access_key_is_refused(s3):
    client = s3.client(aws_access_key_id="NO-SUCH-KEY", aws_secret_access_key="x")
    with pytest.raises(ClientError) as excinfo:
        client.create_bucket(Bucket="should-not-exist")
    assert _error_code(excinfo) == "InvalidAccessKeyId"
    names = [b["Name"] for b in s3.client().list_buckets()["Buckets"]]
    assert "should-not-exist" not in names


@integration
def test_anonymous_request_is_refused(s3):
    client = s3.client(config=Config(signature_version=botocore.UNSIGNED))
    with pytest.raises(ClientError) as excinfo:
        client.list_buckets()
    assert _error_code(excinfo) == "AccessDenied"


@integration
def test_two_servers_run_side_by_side_and_stop_cleanly(s3):
    other = S3Server()
    with other:
        assert other.endpoint_url != s3.endpoint_url
        assert set(other.ports.values()).isdisjoint(s3.ports.values())
        other.client().create_bucket(Bucket="only-in-other")
        names = [b["Name"] for b in s3.client().list_buckets()["Buckets"]]
        assert "only-in-other" not in names
        workdir = other.workdir
        s3_port = other.ports["s3"]
    assert workdir is not None and not workdir.exists()
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", s3_port)) != 0
    # The first server is unaffected.
    s3.client().list_buckets()


@integration
def test_given_data_dir_is_kept_and_reusable(tmp_path: Path):
    server = S3Server(tmp_path / "s3", access_key="fixed-key", secret_key="fixed-secret")
    for _ in range(2):
        with server:
            client = server.client()
            assert client.list_buckets()["Buckets"] == []
            client.create_bucket(Bucket="kept")
    assert sorted(p.name for p in (tmp_path / "s3").iterdir()) == ["run0", "run1"]
    assert (tmp_path / "s3" / "run1" / "server.log").stat().st_size > 0


@integration
def test_redis_server_serves_and_restarts():
    from tests.servers import RedisServer

    with RedisServer(appendonly=True) as server:
        client = server.client()
        client.set("k", "v")
        client.connection_pool.disconnect()
        server.restart()
        assert server.client().get("k") == b"v"


@integration
def test_milvus_lite_server_is_shared_over_grpc():
    from pymilvus import MilvusClient

    from tests.servers import MilvusLiteServer

    with MilvusLiteServer() as server:
        a, b = MilvusClient(uri=server.uri), MilvusClient(uri=server.uri)
        a.create_collection("c", dimension=4)
        assert "c" in b.list_collections()
        a.close()
        b.close()
