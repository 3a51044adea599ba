"""Amazon SNS (query protocol): standard topics, subscriptions and Publish, delivering to SQS queues.

Topics (document ``sns/topic``, key: name) and subscriptions (``sns/subscription``, key:
``<topic name>/<id>``) are durable. Publish sends each confirmed ``sqs`` subscriber SNS's JSON
envelope (``Type: Notification``, ``MessageId``, ``TopicArn``, ``Subject``, ``Message``,
``Timestamp``, ``SignatureVersion``, ``Signature``, ``SigningCertURL``, ``UnsubscribeURL``,
``MessageAttributes``) or, with ``RawMessageDelivery``, the bare message with its attributes as SQS
message attributes, through the in-process SQS API before Publish answers. A subscriber queue that is
gone is logged and skipped, as SNS drops what it cannot deliver; Publish still succeeds.

What differs from AWS, on purpose:
- ``email`` / ``email-json`` subscriptions are accepted and stay "pending confirmation" forever:
  localcloud sends no mail, so nothing confirms them and nothing is delivered to them.
- ``Signature`` is a base64 digest of SNS's string to sign (SHA1 for SignatureVersion 1, SHA256 for
  2), not an RSA signature: there is no AWS key here, so it cannot be verified against
  ``SigningCertURL``, which, like ``UnsubscribeURL``, is in AWS's form.
- Refused with 501 NotImplemented rather than accepted and ignored: FIFO topics, the http(s), lambda,
  sms, application and firehose protocols, subscription filter and redrive policies, SMS publishing.

Publish can be made to fail as SNS does when it is down (fault rule ``{"service": "sns",
"operation": "Publish"}``, chaos.py): 500 InternalError, which boto3 retries and then raises as
InternalErrorException.

backend.py     SnsBackend: topics, subscriptions and Publish's delivery to SQS, on the store
service.py     SnsService: the query operations, and the nested form members they need (maps, lists)
validation.py  SNS's parameter rules and errors: names, attributes, subjects, message attributes
"""

from localcloud.sns.backend import SnsBackend
from localcloud.sns.service import SnsService

__all__ = ["SnsBackend", "SnsService"]
