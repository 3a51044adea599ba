"""Amazon S3 (rest-xml): buckets, objects, listings and multipart uploads, bodies streamed to blob files.

Clients use path-style addressing (`http://127.0.0.1:4566/<bucket>/<key>`); for boto3:
`botocore.config.Config(s3={"addressing_style": "path"})`.

bodies.py      upload bodies (plain, HTTP-chunked, aws-chunked), size limits and checksums as they stream
backend.py     S3Backend: buckets, objects and multipart uploads on the durable store; the in-process API
service.py     S3Service: the wire operations (rest-xml)
utils.py       keys, ETags, stored attributes, ranges, conditional requests, continuation tokens
notifications.py  bucket notification configurations, and the events they send to SQS after each write
exceptions.py  the S3 errors more than one of them raises
"""

from localcloud.s3.backend import S3Backend
from localcloud.s3.service import S3Service

__all__ = ["S3Backend", "S3Service"]
