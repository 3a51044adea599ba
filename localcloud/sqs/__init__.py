"""Amazon SQS (json protocol, AwsJson1_0 with awsQueryCompatible errors): standard queues, durable
messages, long polling, visibility timeouts and dead-letter redrive. FIFO queues are refused.

backend.py     SqsBackend: queues and messages on the store, receiving, long polls, the in-process API
               (deliver, queue_exists) S3 notifications and SNS use
service.py     SqsService: the wire operations, a thin dispatcher
validation.py  AWS's parameter rules: names, attributes, bodies, batches, receipt handles, MD5s
exceptions.py  SQS's error codes and the modeled exception each maps to
"""

from localcloud.sqs.backend import SqsBackend
from localcloud.sqs.service import SqsService

__all__ = ["SqsBackend", "SqsService"]
