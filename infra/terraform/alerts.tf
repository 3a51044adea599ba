# Pipeline alerts (mnist_pipeline.alerts): a failed, rolled-back or rejected run, and drift, publish
# one message here from the DAG; the CloudWatch alarms (monitoring.tf, events.tf) notify it too.

# Not encrypted with KMS: CloudWatch alarms cannot publish to a topic under the AWS managed key
# alias/aws/sns, and a customer key would add kms grants to the workers and to CloudWatch. Alerts
# carry run ids, outcomes and reasons, never data.
resource "aws_sns_topic" "alerts" {
  name = "mnist-pipeline-alerts"
}

# Email subscriptions stay "pending confirmation" until the address clicks the link AWS sends; until
# then Terraform cannot delete them (AWS removes unconfirmed ones after 3 days).
resource "aws_sns_topic_subscription" "alert_email" {
  count     = var.alert_email == "" ? 0 : 1
  topic_arn = aws_sns_topic.alerts.arn
  protocol  = "email"
  endpoint  = var.alert_email
}

locals {
  # Every alarm notifies the alerts topic, then whatever alarm_actions adds.
  alarm_actions = concat([aws_sns_topic.alerts.arn], var.alarm_actions)
}
