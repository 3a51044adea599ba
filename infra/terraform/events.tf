# Event-driven retraining (mnist_pipeline.events): a new batch in data/incoming/ → an S3 notification
# → this queue → the DAG's asset watcher in the triggerer → a run. A message is a wake-up, not data:
# the data step lists data/incoming/, so a lost or repeated message delays a run at worst.

locals {
  events_queue_name = "mnist-data-events"
  batch_suffix      = ".npz" # mnist_pipeline.events.BATCH_SUFFIX
}

# What the watcher parks (a message that is not a new-batch notification) lands here after
# events_max_receive_count receives. Kept 14 days, SQS's most, so there is time to look at it.
resource "aws_sqs_queue" "events_dlq" {
  name                      = "${local.events_queue_name}-dlq"
  message_retention_seconds = 1209600
  sqs_managed_sse_enabled   = true
}

resource "aws_sqs_queue" "events" {
  name = local.events_queue_name

  # The watcher receives with its own VisibilityTimeout (events.DEFAULT_VISIBILITY_S, 12 h: longer
  # than any run, so an event waits, received once, for the run that deletes it); the queue's default
  # is the same for anything else.
  visibility_timeout_seconds = 43200
  # A wake-up nobody received in 4 days is stale: the nightly cron has taken its batch by then.
  message_retention_seconds = 345600
  receive_wait_time_seconds = 20

  # SSE-SQS, not SSE-KMS: S3 cannot send to a queue encrypted with the AWS managed key alias/aws/sqs,
  # and a customer key would need kms grants for S3 and the workers.
  sqs_managed_sse_enabled = true

  redrive_policy = jsonencode({
    deadLetterTargetArn = aws_sqs_queue.events_dlq.arn
    maxReceiveCount     = var.events_max_receive_count
  })
}

# Only the events queue may move messages to its dead-letter queue.
resource "aws_sqs_queue_redrive_allow_policy" "events_dlq" {
  queue_url = aws_sqs_queue.events_dlq.id

  redrive_allow_policy = jsonencode({
    redrivePermission = "byQueue"
    sourceQueueArns   = [aws_sqs_queue.events.arn]
  })
}

# S3 may send, and only for this bucket in this account (no confused deputy: another account's
# bucket named in a notification cannot reach the queue).
data "aws_iam_policy_document" "events_queue" {
  statement {
    sid       = "PipelineBucketNotifications"
    actions   = ["sqs:SendMessage"]
    resources = [aws_sqs_queue.events.arn]

    principals {
      type        = "Service"
      identifiers = ["s3.amazonaws.com"]
    }

    condition {
      test     = "ArnEquals"
      variable = "aws:SourceArn"
      values   = [aws_s3_bucket.pipeline.arn]
    }

    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [local.account_id]
    }
  }
}

resource "aws_sqs_queue_policy" "events" {
  queue_url = aws_sqs_queue.events.id
  policy    = data.aws_iam_policy_document.events_queue.json
}

# S3 checks that it may send when the notification is created (and then sends s3:TestEvent, which
# the watcher deletes), so the queue policy must exist first. A bucket has one notification
# configuration: add other targets here, not in a second aws_s3_bucket_notification.
resource "aws_s3_bucket_notification" "pipeline" {
  bucket = aws_s3_bucket.pipeline.id

  queue {
    id            = "new-batches"
    queue_arn     = aws_sqs_queue.events.arn
    events        = ["s3:ObjectCreated:*"]
    filter_prefix = local.prefixes.incoming
    filter_suffix = local.batch_suffix
  }

  depends_on = [aws_sqs_queue_policy.events]
}

# A message in the dead-letter queue is a notification the watcher could not use (or a wake-up that
# waited through every receive): worth a look, never urgent, since the nightly run lists the lake.
resource "aws_cloudwatch_metric_alarm" "events_dlq" {
  alarm_name          = "${local.events_queue_name}-dlq-not-empty"
  alarm_description   = "Messages in ${aws_sqs_queue.events_dlq.name}: data events the asset watcher could not use. Inspect them with sqs receive-message; new batches are still found by listing data/incoming/."
  namespace           = "AWS/SQS"
  metric_name         = "ApproximateNumberOfMessagesVisible"
  dimensions          = { QueueName = aws_sqs_queue.events_dlq.name }
  statistic           = "Maximum"
  period              = 300
  evaluation_periods  = 1
  threshold           = 0
  comparison_operator = "GreaterThanThreshold"
  treat_missing_data  = "notBreaching"
  alarm_actions       = local.alarm_actions
  ok_actions          = local.alarm_actions
}
