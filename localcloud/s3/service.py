"""The S3 wire API (rest-xml): the thin dispatcher from each operation to S3Backend, and S3's answers."""

from __future__ import annotations

import hashlib
from typing import Any
from urllib.parse import quote, quote_plus, unquote

from localcloud.s3 import notifications
from localcloud.s3.backend import Listing, S3Backend
from localcloud.s3.bodies import Upload
from localcloud.s3.utils import (
    MAX_KEYS,
    check_preconditions,
    checksum_members,
    decode_token,
    encode_token,
    parse_range,
)
from localcloud.service import Service, operation
from localcloud.wire import FileBody, Request, Response, ServiceError

S3_NAMESPACE = "http://s3.amazonaws.com/doc/2006-03-01/"


class S3Service(Service):
    model_name = "s3"
    validation_error_code = "MalformedXML"  # the only required members not in the URL are XML bodies
    internal_error_code = "InternalError"
    xml_namespace = S3_NAMESPACE
    xml_root_names = {
        "ListBuckets": "ListAllMyBucketsResult",
        "ListObjects": "ListBucketResult",
        "ListObjectsV2": "ListBucketResult",
        "DeleteObjects": "DeleteResult",
        "CreateMultipartUpload": "InitiateMultipartUploadResult",
        "CompleteMultipartUpload": "CompleteMultipartUploadResult",
        "GetBucketNotificationConfiguration": "NotificationConfiguration",
    }
    backend: S3Backend

    def handle(self, request: Request) -> Response:
        # The events a request causes name it (request id, client address), as S3's do.
        token = notifications.REQUEST.set(notifications.origin_of(request))
        try:
            return super().handle(request)
        finally:
            notifications.REQUEST.reset(token)

    def request_too_large(self, limit: int) -> ServiceError:
        return ServiceError(
            "MaxMessageLengthExceeded", f"Your request was too big: the limit is {limit} bytes."
        )

    @property
    def _owner(self) -> dict[str, str]:
        return {
            "ID": hashlib.sha256(self.config.account_id.encode()).hexdigest(),
            "DisplayName": "localcloud",
        }

    # buckets

    @operation("CreateBucket")
    def create_bucket(self, params: dict[str, Any], request: Request) -> dict[str, Any]:
        region = (params.get("CreateBucketConfiguration") or {}).get("LocationConstraint") or "us-east-1"
        self.backend.create_bucket(params["Bucket"], region)
        return {"Location": f"/{params['Bucket']}", "BucketArn": f"arn:aws:s3:::{params['Bucket']}"}

    @operation("HeadBucket")
    def head_bucket(self, params: dict[str, Any], request: Request) -> dict[str, Any]:
        bucket = self.backend.bucket(params["Bucket"])
        return {"BucketRegion": bucket["region"], "BucketArn": f"arn:aws:s3:::{params['Bucket']}"}

    @operation("GetBucketLocation")
    def get_bucket_location(self, params: dict[str, Any], request: Request) -> Response:
        region = self.backend.bucket(params["Bucket"])["region"]
        text = "" if region == "us-east-1" else region  # S3's historical quirk: us-east-1 is empty
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            f'<LocationConstraint xmlns="{S3_NAMESPACE}">{text}</LocationConstraint>'
        )
        return Response(200, {"Content-Type": "application/xml"}, body.encode())

    @operation("ListBuckets")
    def list_buckets(self, params: dict[str, Any], request: Request) -> dict[str, Any]:
        buckets = [
            {"Name": name, "CreationDate": doc["created"], "BucketRegion": doc["region"]}
            for name, doc in self.backend.list_buckets()
            if name.startswith(params.get("Prefix", ""))
        ]
        return {"Buckets": buckets, "Owner": self._owner, "Prefix": params.get("Prefix")}

    @operation("DeleteBucket")
    def delete_bucket(self, params: dict[str, Any], request: Request) -> dict[str, Any]:
        self.backend.delete_bucket(params["Bucket"])
        return {}

    @operation("PutBucketNotificationConfiguration")
    def put_bucket_notification_configuration(
        self, params: dict[str, Any], request: Request
    ) -> dict[str, Any]:
        self.backend.put_notification_configuration(
            params["Bucket"],
            params["NotificationConfiguration"],
            params.get("SkipDestinationValidation", False),
        )
        return {}

    @operation("GetBucketNotificationConfiguration")
    def get_bucket_notification_configuration(
        self, params: dict[str, Any], request: Request
    ) -> dict[str, Any]:
        return self.backend.notification_configuration(params["Bucket"])

    # objects

    @operation("PutObject")
    def put_object(self, params: dict[str, Any], request: Request) -> dict[str, Any]:
        self.backend.bucket(params["Bucket"])  # fail before the client sends the body
        body = Upload.from_request(request, params, self.config.max_object_bytes)
        doc = self.backend.put_object(
            params["Bucket"],
            params["Key"],
            body,
            params,
            if_match=params.get("IfMatch"),
            if_none_match=params.get("IfNoneMatch"),
        )
        return {"ETag": doc["etag"], "Size": doc["size"], **checksum_members(doc)}

    @operation("GetObject")
    def get_object(self, params: dict[str, Any], request: Request) -> dict[str, Any] | Response:
        return self._read_object(params, request, with_body=True)

    @operation("HeadObject")
    def head_object(self, params: dict[str, Any], request: Request) -> dict[str, Any] | Response:
        return self._read_object(params, request, with_body=False)

    def _read_object(
        self, params: dict[str, Any], request: Request, with_body: bool
    ) -> dict[str, Any] | Response:
        doc, file = self.backend.open_object(params["Bucket"], params["Key"])
        try:
            not_modified = check_preconditions(params, doc)
            if not_modified:
                file.close()
                return Response(304, {"ETag": doc["etag"]})
            size = doc["size"]
            span = parse_range(params.get("Range"), size)
            start, length = span if span else (0, size)
            out: dict[str, Any] = {
                "ContentLength": length,
                "ContentType": params.get("ResponseContentType") or doc["content_type"],
                "ETag": doc["etag"],
                "LastModified": doc["modified"],
                "Metadata": doc["metadata"] or None,
                "AcceptRanges": "bytes",
                "PartsCount": doc.get("parts"),
                **doc["headers"],
            }
            if span:
                out["ContentRange"] = f"bytes {start}-{start + length - 1}/{size}"
            elif params.get("ChecksumMode") == "ENABLED":
                out.update(checksum_members(doc))  # a whole-object checksum only describes the whole object
            if with_body:
                out["Body"] = FileBody(file, start, length)
            else:
                file.close()
        except BaseException:
            file.close()
            raise
        if span:
            return self.serialize("GetObject" if with_body else "HeadObject", out, request, status=206)
        return out

    @operation("DeleteObject")
    def delete_object(self, params: dict[str, Any], request: Request) -> dict[str, Any]:
        self.backend.delete_object(params["Bucket"], params["Key"], if_match=params.get("IfMatch"))
        return {}

    @operation("DeleteObjects")
    def delete_objects(self, params: dict[str, Any], request: Request) -> dict[str, Any]:
        objects = params["Delete"].get("Objects", [])
        if not 1 <= len(objects) <= MAX_KEYS:
            raise ServiceError(
                "MalformedXML", f"Delete must name between 1 and {MAX_KEYS} objects, got {len(objects)}"
            )
        deleted, errors = [], []
        for entry in objects:
            try:
                self.backend.delete_object(params["Bucket"], entry["Key"])
                deleted.append({"Key": entry["Key"]})
            except ServiceError as error:
                if error.code == "NoSuchBucket":
                    raise
                errors.append({"Key": entry["Key"], "Code": error.code, "Message": error.message})
        quiet = params["Delete"].get("Quiet", False)
        return {"Deleted": None if quiet else deleted, "Errors": errors or None}

    @operation("CopyObject")
    def copy_object(self, params: dict[str, Any], request: Request) -> dict[str, Any]:
        source = unquote(params["CopySource"].split("?", 1)[0]).lstrip("/")
        source_bucket, _, source_key = source.partition("/")
        if not source_key:
            raise ServiceError(
                "InvalidArgument",
                f"Copy Source must mention the source bucket and key: {params['CopySource']!r}",
            )
        replace = params.get("MetadataDirective") == "REPLACE"
        if (source_bucket, source_key) == (params["Bucket"], params["Key"]) and not replace:
            raise ServiceError(
                "InvalidRequest",
                "This copy request is illegal because it is trying to copy an object to itself without "
                "changing the object's metadata, storage class, website redirect location or encryption "
                "attributes.",
            )
        doc = self.backend.copy_object(
            source_bucket,
            source_key,
            params["Bucket"],
            params["Key"],
            params if replace else None,
            source_if_match=params.get("CopySourceIfMatch"),
            source_if_none_match=params.get("CopySourceIfNoneMatch"),
        )
        return {"CopyObjectResult": {"ETag": doc["etag"], "LastModified": doc["modified"]}}

    @operation("ListObjectsV2")
    def list_objects_v2(self, params: dict[str, Any], request: Request) -> dict[str, Any]:
        token = params.get("ContinuationToken")
        marker = decode_token(token) if token is not None else params.get("StartAfter")
        listing, out = self._list(params, marker)
        out.update(
            KeyCount=len(listing.objects) + len(listing.common_prefixes),
            ContinuationToken=token,
            StartAfter=params.get("StartAfter"),
            NextContinuationToken=encode_token(listing.last_marker) if listing.truncated else None,
        )
        return out

    @operation("ListObjects")
    def list_objects(self, params: dict[str, Any], request: Request) -> dict[str, Any]:
        listing, out = self._list(params, params.get("Marker"))
        out["Marker"] = params.get("Marker", "")
        if listing.truncated and params.get("Delimiter"):
            out["NextMarker"] = self._encode_key(params, listing.last_marker)
        return out

    def _list(self, params: dict[str, Any], marker: str | None) -> tuple[Listing, dict[str, Any]]:
        max_keys = min(params.get("MaxKeys", MAX_KEYS), MAX_KEYS)
        if max_keys < 0:
            raise ServiceError("InvalidArgument", "max-keys must not be negative", ArgumentName="max-keys")
        prefix, delimiter = params.get("Prefix", ""), params.get("Delimiter", "")
        listing = self.backend.list_objects(params["Bucket"], prefix, delimiter, max_keys, marker)
        owner = self._owner if params.get("FetchOwner") else None
        contents = [
            {
                "Key": self._encode_key(params, key),
                "LastModified": doc["modified"],
                "ETag": doc["etag"],
                "Size": doc["size"],
                "StorageClass": "STANDARD",
                "Owner": owner,
                "ChecksumAlgorithm": [doc["checksum"]["algorithm"]] if doc.get("checksum") else None,
            }
            for key, doc in listing.objects
        ]
        out = {
            "Name": params["Bucket"],
            "Prefix": self._encode_key(params, prefix),
            "Delimiter": self._encode_key(params, delimiter) or None,
            "MaxKeys": max_keys,
            "EncodingType": params.get("EncodingType"),
            "IsTruncated": listing.truncated,
            "Contents": contents or None,
            "CommonPrefixes": [{"Prefix": self._encode_key(params, p)} for p in listing.common_prefixes]
            or None,
        }
        return listing, out

    @staticmethod
    def _encode_key(params: dict[str, Any], value: str | None) -> str | None:
        # boto3 asks for encoding-type=url and decodes with unquote_plus, so any key survives XML.
        if value is None or params.get("EncodingType") != "url":
            return value
        return quote_plus(value, safe="/")

    # multipart uploads

    @operation("CreateMultipartUpload")
    def create_multipart_upload(self, params: dict[str, Any], request: Request) -> dict[str, Any]:
        algorithm = params.get("ChecksumAlgorithm")
        upload_id = self.backend.create_multipart_upload(params["Bucket"], params["Key"], params, algorithm)
        return {
            "Bucket": params["Bucket"],
            "Key": params["Key"],
            "UploadId": upload_id,
            "ChecksumAlgorithm": algorithm,
        }

    @operation("UploadPart")
    def upload_part(self, params: dict[str, Any], request: Request) -> dict[str, Any]:
        # Fail before the client sends the body.
        self.backend.upload(params["Bucket"], params["Key"], params["UploadId"])
        body = Upload.from_request(request, params, self.config.max_object_bytes)
        doc = self.backend.upload_part(
            params["Bucket"], params["Key"], params["UploadId"], params["PartNumber"], body
        )
        return {"ETag": doc["etag"], **checksum_members(doc, with_type=False)}

    @operation("CompleteMultipartUpload")
    def complete_multipart_upload(self, params: dict[str, Any], request: Request) -> dict[str, Any]:
        parts = [
            (part["PartNumber"], part["ETag"])
            for part in (params.get("MultipartUpload") or {}).get("Parts", [])
        ]
        doc = self.backend.complete_multipart_upload(
            params["Bucket"], params["Key"], params["UploadId"], parts
        )
        host = request.headers.get("host", "localhost")
        return {
            "Location": f"http://{host}/{params['Bucket']}/{quote(params['Key'])}",
            "Bucket": params["Bucket"],
            "Key": params["Key"],
            "ETag": doc["etag"],
        }

    @operation("AbortMultipartUpload")
    def abort_multipart_upload(self, params: dict[str, Any], request: Request) -> dict[str, Any]:
        self.backend.abort_multipart_upload(params["Bucket"], params["Key"], params["UploadId"])
        return {}
