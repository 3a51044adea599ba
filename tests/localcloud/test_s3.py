"""localcloud S3 driven by real boto3: every supported operation, its errors, durability, and moto parity."""

import base64
import hashlib
import http.client
import io
import urllib.parse
import urllib.request
import zlib
from urllib.parse import urlparse

import boto3
import botocore.httpchecksum
import pytest
from boto3.s3.transfer import TransferConfig
from botocore.config import Config as BotoConfig
from botocore.exceptions import ClientError
from moto import mock_aws

from localcloud.app import LocalCloud
from localcloud.config import Config

MiB = 1024 * 1024


def error_code(excinfo: pytest.ExceptionInfo) -> str:
    return excinfo.value.response["Error"]["Code"]


def md5_etag(data: bytes) -> str:
    return f'"{hashlib.md5(data).hexdigest()}"'


@pytest.fixture
def s3(localcloud):
    client = localcloud.client("s3")
    client.create_bucket(Bucket="lake")
    return client


# --- buckets ------------------------------------------------------------------------------------


def test_bucket_lifecycle_and_its_errors(localcloud):
    s3 = localcloud.client("s3")
    s3.create_bucket(Bucket="alpha")
    s3.create_bucket(Bucket="beta", CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})

    assert [b["Name"] for b in s3.list_buckets()["Buckets"]] == ["alpha", "beta"]
    assert s3.head_bucket(Bucket="beta")["BucketRegion"] == "eu-west-1"
    assert s3.get_bucket_location(Bucket="beta")["LocationConstraint"] == "eu-west-1"
    assert s3.get_bucket_location(Bucket="alpha")["LocationConstraint"] is None

    with pytest.raises(ClientError) as excinfo:
        s3.create_bucket(Bucket="alpha")
    assert error_code(excinfo) == "BucketAlreadyOwnedByYou"
    with pytest.raises(ClientError) as excinfo:
        s3.create_bucket(Bucket="Not_Valid")
    assert error_code(excinfo) == "InvalidBucketName"

    s3.put_object(Bucket="alpha", Key="k", Body=b"x")
    with pytest.raises(ClientError) as excinfo:
        s3.delete_bucket(Bucket="alpha")
    assert error_code(excinfo) == "BucketNotEmpty"

    s3.delete_object(Bucket="alpha", Key="k")
    s3.delete_bucket(Bucket="alpha")
    with pytest.raises(ClientError) as excinfo:
        s3.head_bucket(Bucket="alpha")
    assert excinfo.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404
    with pytest.raises(s3.exceptions.NoSuchBucket):
        s3.delete_bucket(Bucket="alpha")
    with pytest.raises(s3.exceptions.NoSuchBucket):
        s3.put_object(Bucket="alpha", Key="k", Body=b"x")


# --- objects ------------------------------------------------------------------------------------


def test_object_round_trip_keeps_body_etag_type_and_metadata(s3):
    body = b"pixels" * 1000
    put = s3.put_object(
        Bucket="lake",
        Key="shards/2024 01/ä+b.npz",
        Body=body,
        ContentType="application/x-npz",
        Metadata={"Sha256": "abc", "batch": "7"},
        CacheControl="no-cache",
    )
    assert put["ETag"] == md5_etag(body)

    got = s3.get_object(Bucket="lake", Key="shards/2024 01/ä+b.npz")
    assert got["Body"].read() == body
    assert got["ETag"] == md5_etag(body)
    assert got["ContentType"] == "application/x-npz"
    assert got["ContentLength"] == len(body)
    assert got["Metadata"] == {"sha256": "abc", "batch": "7"}  # S3 lower-cases metadata names
    assert got["CacheControl"] == "no-cache"

    head = s3.head_object(Bucket="lake", Key="shards/2024 01/ä+b.npz")
    assert (head["ContentLength"], head["ETag"], head["Metadata"]) == (
        len(body),
        md5_etag(body),
        got["Metadata"],
    )
    assert head["LastModified"] == got["LastModified"]

    s3.put_object(Bucket="lake", Key="shards/2024 01/ä+b.npz", Body=b"new")
    assert s3.get_object(Bucket="lake", Key="shards/2024 01/ä+b.npz")["Body"].read() == b"new"

    s3.delete_object(Bucket="lake", Key="shards/2024 01/ä+b.npz")
    with pytest.raises(s3.exceptions.NoSuchKey):
        s3.get_object(Bucket="lake", Key="shards/2024 01/ä+b.npz")
    with pytest.raises(ClientError) as excinfo:
        s3.head_object(Bucket="lake", Key="shards/2024 01/ä+b.npz")
    assert excinfo.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404
    s3.delete_object(Bucket="lake", Key="never-existed")  # S3 deletes are idempotent


def test_keys_that_look_like_paths_stay_keys(localcloud, s3):
    for key in ["../../escape", "/abs/path", "a/./b", "..", "a//b/"]:
        s3.put_object(Bucket="lake", Key=key, Body=key.encode())
    for key in ["../../escape", "/abs/path", "a/./b", "..", "a//b/"]:
        assert s3.get_object(Bucket="lake", Key=key)["Body"].read() == key.encode()
    assert not (localcloud.data_dir.parent / "escape").exists()


def test_range_reads(s3):
    s3.put_object(Bucket="lake", Key="digits", Body=b"0123456789")

    part = s3.get_object(Bucket="lake", Key="digits", Range="bytes=2-4")
    assert part["ResponseMetadata"]["HTTPStatusCode"] == 206
    assert (part["Body"].read(), part["ContentRange"], part["ContentLength"]) == (b"234", "bytes 2-4/10", 3)
    assert s3.get_object(Bucket="lake", Key="digits", Range="bytes=7-")["Body"].read() == b"789"
    assert s3.get_object(Bucket="lake", Key="digits", Range="bytes=-3")["Body"].read() == b"789"
    assert s3.get_object(Bucket="lake", Key="digits", Range="bytes=8-100")["Body"].read() == b"89"

    with pytest.raises(ClientError) as excinfo:
        s3.get_object(Bucket="lake", Key="digits", Range="bytes=10-20")
    assert error_code(excinfo) == "InvalidRange"
    assert excinfo.value.response["ResponseMetadata"]["HTTPStatusCode"] == 416


def test_conditional_reads_and_writes(s3):
    etag = s3.put_object(Bucket="lake", Key="model", Body=b"v1")["ETag"]

    with pytest.raises(ClientError) as excinfo:
        s3.get_object(Bucket="lake", Key="model", IfNoneMatch=etag)
    assert excinfo.value.response["ResponseMetadata"]["HTTPStatusCode"] == 304
    with pytest.raises(ClientError) as excinfo:
        s3.get_object(Bucket="lake", Key="model", IfMatch='"0000"')
    assert error_code(excinfo) == "PreconditionFailed"
    assert s3.get_object(Bucket="lake", Key="model", IfMatch=etag)["Body"].read() == b"v1"

    # Create-only writes: the second writer of the same key loses, and the first object survives.
    with pytest.raises(ClientError) as excinfo:
        s3.put_object(Bucket="lake", Key="model", Body=b"v2", IfNoneMatch="*")
    assert error_code(excinfo) == "PreconditionFailed"
    assert s3.get_object(Bucket="lake", Key="model")["Body"].read() == b"v1"


def test_conditional_deletes_and_copies_act_only_on_the_bytes_named(s3):
    # What the lake's quarantine relies on: copy exactly the validated bytes, delete them only if
    # nobody replaced them meanwhile.
    old = s3.put_object(Bucket="lake", Key="incoming/b1", Body=b"validated")["ETag"]
    s3.copy_object(
        Bucket="lake",
        Key="quarantine/b1",
        CopySource={"Bucket": "lake", "Key": "incoming/b1"},
        CopySourceIfMatch=old,
    )
    s3.put_object(Bucket="lake", Key="incoming/b1", Body=b"re-uploaded")  # the producer again

    with pytest.raises(ClientError) as excinfo:
        s3.copy_object(
            Bucket="lake",
            Key="quarantine/b2",
            CopySource={"Bucket": "lake", "Key": "incoming/b1"},
            CopySourceIfMatch=old,
        )
    assert error_code(excinfo) == "PreconditionFailed"
    with pytest.raises(ClientError) as excinfo:
        s3.delete_object(Bucket="lake", Key="incoming/b1", IfMatch=old)
    assert error_code(excinfo) == "PreconditionFailed"
    assert s3.get_object(Bucket="lake", Key="incoming/b1")["Body"].read() == b"re-uploaded"
    assert s3.get_object(Bucket="lake", Key="quarantine/b1")["Body"].read() == b"validated"

    current = s3.head_object(Bucket="lake", Key="incoming/b1")["ETag"]
    s3.delete_object(Bucket="lake", Key="incoming/b1", IfMatch=current)
    with pytest.raises(ClientError) as excinfo:
        s3.delete_object(Bucket="lake", Key="incoming/b1", IfMatch=current)
    assert error_code(excinfo) == "NoSuchKey"


def test_copy_object(s3):
    s3.put_object(
        Bucket="lake", Key="src dir/ä?.bin", Body=b"payload", ContentType="a/b", Metadata={"k": "v"}
    )
    s3.create_bucket(Bucket="other")

    result = s3.copy_object(
        Bucket="other", Key="copy", CopySource={"Bucket": "lake", "Key": "src dir/ä?.bin"}
    )
    assert result["CopyObjectResult"]["ETag"] == md5_etag(b"payload")
    copied = s3.get_object(Bucket="other", Key="copy")
    assert (copied["Body"].read(), copied["ContentType"], copied["Metadata"]) == (
        b"payload",
        "a/b",
        {"k": "v"},
    )

    s3.copy_object(
        Bucket="other",
        Key="copy",
        CopySource="lake/src dir/ä?.bin",
        MetadataDirective="REPLACE",
        Metadata={"new": "1"},
        ContentType="text/plain",
    )
    replaced = s3.head_object(Bucket="other", Key="copy")
    assert (replaced["ContentType"], replaced["Metadata"]) == ("text/plain", {"new": "1"})

    with pytest.raises(ClientError) as excinfo:
        s3.copy_object(
            Bucket="lake", Key="src dir/ä?.bin", CopySource={"Bucket": "lake", "Key": "src dir/ä?.bin"}
        )
    assert error_code(excinfo) == "InvalidRequest"
    with pytest.raises(s3.exceptions.NoSuchKey):
        s3.copy_object(Bucket="other", Key="x", CopySource={"Bucket": "lake", "Key": "missing"})

    s3.delete_object(Bucket="lake", Key="src dir/ä?.bin")  # the copy does not share the source's fate
    assert s3.get_object(Bucket="other", Key="copy")["Body"].read() == b"payload"


def test_delete_objects(s3):
    for key in ("a", "b", "c"):
        s3.put_object(Bucket="lake", Key=key, Body=b"x")

    result = s3.delete_objects(
        Bucket="lake", Delete={"Objects": [{"Key": "a"}, {"Key": "b"}, {"Key": "missing"}]}
    )
    assert sorted(d["Key"] for d in result["Deleted"]) == ["a", "b", "missing"]
    assert [o["Key"] for o in s3.list_objects_v2(Bucket="lake")["Contents"]] == ["c"]

    quiet = s3.delete_objects(Bucket="lake", Delete={"Objects": [{"Key": "c"}], "Quiet": True})
    assert "Deleted" not in quiet
    assert s3.list_objects_v2(Bucket="lake")["KeyCount"] == 0


# --- listings -----------------------------------------------------------------------------------

LISTING_KEYS = [
    "audit/run-1.json",
    "audit/run-2.json",
    "incoming/2024-01-01/batch.npz",
    "incoming/2024-01-02/batch.npz",
    "incoming/2024-01-02/extra.npz",
    "incoming/readme",
    "models/a b+c%.onnx",
    "models/ünï/x",
    "top",
    "zzz/",
]


def test_list_objects_v2_prefix_delimiter_and_pagination(s3):
    for key in LISTING_KEYS:
        s3.put_object(Bucket="lake", Key=key, Body=key.encode())

    top = s3.list_objects_v2(Bucket="lake", Delimiter="/")
    assert [p["Prefix"] for p in top["CommonPrefixes"]] == ["audit/", "incoming/", "models/", "zzz/"]
    assert [o["Key"] for o in top["Contents"]] == ["top"]
    assert top["KeyCount"] == 5 and top["IsTruncated"] is False

    incoming = s3.list_objects_v2(Bucket="lake", Prefix="incoming/", Delimiter="/")
    assert [p["Prefix"] for p in incoming["CommonPrefixes"]] == [
        "incoming/2024-01-01/",
        "incoming/2024-01-02/",
    ]
    assert [o["Key"] for o in incoming["Contents"]] == ["incoming/readme"]

    pages = list(
        s3.get_paginator("list_objects_v2").paginate(Bucket="lake", PaginationConfig={"PageSize": 3})
    )
    assert [o["Key"] for page in pages for o in page["Contents"]] == sorted(LISTING_KEYS)
    assert [page["KeyCount"] for page in pages] == [3, 3, 3, 1]
    assert [page["IsTruncated"] for page in pages] == [True, True, True, False]

    after = s3.list_objects_v2(Bucket="lake", StartAfter="models/a b+c%.onnx")
    assert [o["Key"] for o in after["Contents"]] == ["models/ünï/x", "top", "zzz/"]
    first = s3.list_objects_v2(Bucket="lake", Prefix="models/")["Contents"][0]
    assert (first["Key"], first["Size"], first["ETag"]) == (
        "models/a b+c%.onnx",
        18,
        md5_etag(b"models/a b+c%.onnx"),
    )
    with pytest.raises(s3.exceptions.NoSuchBucket):
        s3.list_objects_v2(Bucket="missing")


def test_list_objects_v1_markers(s3):
    for key in LISTING_KEYS:
        s3.put_object(Bucket="lake", Key=key, Body=b"")
    pages = list(
        s3.get_paginator("list_objects").paginate(
            Bucket="lake", Delimiter="/", PaginationConfig={"PageSize": 2}
        )
    )
    prefixes = [p["Prefix"] for page in pages for p in page.get("CommonPrefixes", [])]
    keys = [o["Key"] for page in pages for o in page.get("Contents", [])]
    assert (prefixes, keys) == (["audit/", "incoming/", "models/", "zzz/"], ["top"])


def list_pages(client, **kwargs):
    """Every page of ListObjectsV2, reduced to the fields the pipeline reads."""
    pages, token = [], None
    while True:
        page = client.list_objects_v2(
            Bucket="lake", **kwargs, **({"ContinuationToken": token} if token else {})
        )
        pages.append(
            {
                "keys": [(o["Key"], o["Size"], o["ETag"]) for o in page.get("Contents", [])],
                "prefixes": [p["Prefix"] for p in page.get("CommonPrefixes", [])],
                "KeyCount": page["KeyCount"],
                "IsTruncated": page["IsTruncated"],
            }
        )
        if not page["IsTruncated"]:
            return pages
        token = page["NextContinuationToken"]


def test_listing_matches_moto(localcloud, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    ours = localcloud.client("s3")
    queries = [
        {},
        {"Delimiter": "/"},
        {"Prefix": "incoming/"},
        {"Prefix": "incoming/", "Delimiter": "/"},
        {"Prefix": "incoming/2024-01-02/", "Delimiter": "/"},
        {"MaxKeys": 2},
        {"MaxKeys": 1, "Delimiter": "/"},
        {"MaxKeys": 3, "Prefix": "incoming/", "Delimiter": "/"},
        {"StartAfter": "incoming/readme", "MaxKeys": 2},
        {"Prefix": "nothing/"},
        {"Delimiter": "-"},
        {"Prefix": "models/", "Delimiter": "/", "MaxKeys": 1},
    ]
    with mock_aws():
        theirs = boto3.client("s3", region_name="us-east-1")
        for client in (ours, theirs):
            client.create_bucket(Bucket="lake")
            for key in LISTING_KEYS:
                client.put_object(Bucket="lake", Key=key, Body=key.encode())
        for query in queries:
            assert list_pages(ours, **query) == list_pages(theirs, **query), query


# --- multipart ----------------------------------------------------------------------------------


def test_multipart_upload(s3):
    first, second = b"a" * (5 * MiB), b"tail bytes"
    upload = s3.create_multipart_upload(Bucket="lake", Key="big.bin", ContentType="x/y", Metadata={"m": "1"})
    upload_id = upload["UploadId"]
    etags = [
        s3.upload_part(Bucket="lake", Key="big.bin", UploadId=upload_id, PartNumber=number, Body=data)["ETag"]
        for number, data in ((1, first), (2, second))
    ]
    assert etags == [md5_etag(first), md5_etag(second)]

    parts = [{"PartNumber": 1, "ETag": etags[0]}, {"PartNumber": 2, "ETag": etags[1]}]
    done = s3.complete_multipart_upload(
        Bucket="lake", Key="big.bin", UploadId=upload_id, MultipartUpload={"Parts": parts}
    )
    expected = hashlib.md5(hashlib.md5(first).digest() + hashlib.md5(second).digest()).hexdigest()
    assert done["ETag"] == f'"{expected}-2"'

    got = s3.get_object(Bucket="lake", Key="big.bin")
    assert got["Body"].read() == first + second
    assert (got["ETag"], got["ContentType"], got["Metadata"]) == (done["ETag"], "x/y", {"m": "1"})
    with pytest.raises(s3.exceptions.NoSuchUpload):  # a completed upload is gone
        s3.upload_part(Bucket="lake", Key="big.bin", UploadId=upload_id, PartNumber=3, Body=b"late")


def test_multipart_errors_and_abort(s3):
    upload_id = s3.create_multipart_upload(Bucket="lake", Key="k")["UploadId"]
    small = s3.upload_part(Bucket="lake", Key="k", UploadId=upload_id, PartNumber=1, Body=b"tiny")["ETag"]
    last = s3.upload_part(Bucket="lake", Key="k", UploadId=upload_id, PartNumber=2, Body=b"end")["ETag"]

    def complete(parts):
        with pytest.raises(ClientError) as excinfo:
            s3.complete_multipart_upload(
                Bucket="lake", Key="k", UploadId=upload_id, MultipartUpload={"Parts": parts}
            )
        return error_code(excinfo)

    assert complete([{"PartNumber": 1, "ETag": '"00000000000000000000000000000000"'}]) == "InvalidPart"
    assert complete([{"PartNumber": 7, "ETag": small}]) == "InvalidPart"
    assert complete([{"PartNumber": 2, "ETag": last}, {"PartNumber": 1, "ETag": small}]) == "InvalidPartOrder"
    assert complete([{"PartNumber": 1, "ETag": small}, {"PartNumber": 2, "ETag": last}]) == "EntityTooSmall"
    with pytest.raises(ClientError) as excinfo:
        s3.upload_part(Bucket="lake", Key="k", UploadId=upload_id, PartNumber=10_001, Body=b"x")
    assert error_code(excinfo) == "InvalidArgument"

    s3.abort_multipart_upload(Bucket="lake", Key="k", UploadId=upload_id)
    with pytest.raises(s3.exceptions.NoSuchUpload):
        s3.abort_multipart_upload(Bucket="lake", Key="k", UploadId=upload_id)
    with pytest.raises(s3.exceptions.NoSuchKey):
        s3.get_object(Bucket="lake", Key="k")


def test_managed_transfer_upload_and_download(s3, tmp_path):
    """boto3's own upload_file/download_file: parallel parts, ranged GETs, CRC32 checksums."""
    data = bytes(range(256)) * (48 * 1024)  # 12 MiB -> three 5 MiB-ish parts
    source = tmp_path / "model.tar.gz"
    source.write_bytes(data)
    config = TransferConfig(multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB, max_concurrency=3)
    s3.upload_file(str(source), "lake", "models/model.tar.gz", Config=config)
    assert s3.head_object(Bucket="lake", Key="models/model.tar.gz")["ETag"].endswith('-3"')

    target = tmp_path / "back.tar.gz"
    s3.download_file("lake", "models/model.tar.gz", str(target), Config=config)
    assert target.read_bytes() == data


# --- checksums and body encodings ---------------------------------------------------------------


def test_flexible_checksums_are_verified_and_returned(s3):
    data = b"checksummed body"
    crc = base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode()

    put = s3.put_object(Bucket="lake", Key="c", Body=data)  # boto3 sends CRC32 by default
    assert put["ChecksumCRC32"] == crc
    got = s3.get_object(Bucket="lake", Key="c", ChecksumMode="ENABLED")  # botocore re-checks the body
    assert (got["Body"].read(), got["ChecksumCRC32"]) == (data, crc)

    sha = base64.b64encode(hashlib.sha256(data).digest()).decode()
    assert (
        s3.put_object(Bucket="lake", Key="s", Body=data, ChecksumAlgorithm="SHA256")["ChecksumSHA256"] == sha
    )

    with pytest.raises(ClientError) as excinfo:
        s3.put_object(Bucket="lake", Key="bad", Body=data, ChecksumCRC32="AAAAAA==")
    assert error_code(excinfo) == "BadDigest"
    with pytest.raises(ClientError) as excinfo:
        s3.put_object(Bucket="lake", Key="bad", Body=data, ContentMD5=base64.b64encode(b"0" * 16).decode())
    assert error_code(excinfo) == "BadDigest"
    with pytest.raises(s3.exceptions.NoSuchKey):
        s3.get_object(Bucket="lake", Key="bad")  # a body that failed its checksum is never stored


def test_aws_chunked_upload_with_trailing_checksum_as_boto3_sends_it_over_tls(s3, monkeypatch):
    # botocore uses aws-chunked + a trailing CRC32 (and HTTP chunked framing) only on https URLs;
    # make it believe the URL is https so the real client encodes the body.
    real_urlparse = botocore.httpchecksum.urlparse
    monkeypatch.setattr(
        botocore.httpchecksum, "urlparse", lambda url: real_urlparse(url)._replace(scheme="https")
    )
    data = bytes(range(256)) * 4096 + b"odd tail"
    put = s3.put_object(Bucket="lake", Key="chunked", Body=io.BytesIO(data))
    assert put["ChecksumCRC32"] == base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode()
    got = s3.get_object(Bucket="lake", Key="chunked")
    assert got["Body"].read() == data
    assert got["ETag"] == md5_etag(data)
    assert "ContentEncoding" not in got  # aws-chunked is transport, not content


def send_aws_chunked(endpoint_url, key, chunks, trailer):
    """A SigV4 streaming upload as other SDKs send it: signed chunks, then a checksum trailer."""
    signature = ";chunk-signature=" + "0" * 64
    body = b"".join(f"{len(c):x}{signature}\r\n".encode() + c + b"\r\n" for c in chunks)
    body += f"0{signature}\r\n{trailer}\r\nx-amz-trailer-signature:{'0' * 64}\r\n\r\n".encode()
    url = urlparse(endpoint_url)
    connection = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
    connection.request(
        "PUT",
        f"/lake/{key}",
        body=body,
        headers={
            "Authorization": "AWS4-HMAC-SHA256 Credential=AKID/20250101/us-east-1/s3/aws4_request, "
            "SignedHeaders=host, Signature=" + "0" * 64,
            "x-amz-content-sha256": "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER",
            "Content-Encoding": "aws-chunked",
            "x-amz-decoded-content-length": str(sum(len(c) for c in chunks)),
            "x-amz-trailer": "x-amz-checksum-crc32",
        },
    )
    response = connection.getresponse()
    return response.status, response.read()


def test_signed_aws_chunked_upload_is_decoded_and_its_trailer_checked(localcloud, s3):
    chunks = [b"x" * 65536, b"y" * 1000]
    crc = base64.b64encode(zlib.crc32(b"".join(chunks)).to_bytes(4, "big")).decode()

    status, _ = send_aws_chunked(localcloud.endpoint_url, "signed", chunks, f"x-amz-checksum-crc32:{crc}")
    assert status == 200
    assert s3.get_object(Bucket="lake", Key="signed")["Body"].read() == b"".join(chunks)

    status, body = send_aws_chunked(
        localcloud.endpoint_url, "corrupt", chunks, "x-amz-checksum-crc32:AAAAAA=="
    )
    assert status == 400 and b"<Code>BadDigest</Code>" in body


@pytest.mark.slow
def test_oversized_object_is_refused_with_entity_too_large(tmp_path):
    with LocalCloud(Config(data_dir=tmp_path, port=0, max_object_bytes=MiB)) as cloud:
        s3 = cloud.client("s3", config=BotoConfig(retries={"max_attempts": 1}))
        s3.create_bucket(Bucket="lake")
        with pytest.raises(ClientError) as excinfo:
            s3.put_object(Bucket="lake", Key="too-big", Body=b"z" * (2 * MiB))
        assert error_code(excinfo) == "EntityTooLarge"
        s3.put_object(Bucket="lake", Key="fits", Body=b"z" * MiB)  # the server is still fine afterwards
        assert [o["Key"] for o in s3.list_objects_v2(Bucket="lake")["Contents"]] == ["fits"]


def test_presigned_urls(localcloud, s3):
    put_url = s3.generate_presigned_url(
        "put_object", Params={"Bucket": "lake", "Key": "via url"}, ExpiresIn=60
    )
    request = urllib.request.Request(put_url, data=b"uploaded with curl", method="PUT")
    with urllib.request.urlopen(request) as response:
        assert response.status == 200
    get_url = s3.generate_presigned_url(
        "get_object", Params={"Bucket": "lake", "Key": "via url"}, ExpiresIn=60
    )
    with urllib.request.urlopen(get_url) as response:
        assert response.read() == b"uploaded with curl"
    assert urllib.parse.urlparse(get_url).path == "/lake/via%20url"


# --- durability ---------------------------------------------------------------------------------


def test_objects_and_uploads_survive_a_restart(localcloud, s3):
    s3.put_object(Bucket="lake", Key="kept", Body=b"durable", Metadata={"a": "1"})
    upload_id = s3.create_multipart_upload(Bucket="lake", Key="mp")["UploadId"]
    part = s3.upload_part(Bucket="lake", Key="mp", UploadId=upload_id, PartNumber=1, Body=b"part one")["ETag"]

    localcloud.restart()
    s3 = localcloud.client("s3")

    kept = s3.get_object(Bucket="lake", Key="kept")
    assert (kept["Body"].read(), kept["Metadata"], kept["ETag"]) == (
        b"durable",
        {"a": "1"},
        md5_etag(b"durable"),
    )
    done = s3.complete_multipart_upload(
        Bucket="lake",
        Key="mp",
        UploadId=upload_id,
        MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": part}]},
    )
    assert s3.get_object(Bucket="lake", Key="mp")["Body"].read() == b"part one"
    assert done["ETag"].endswith('-1"')
