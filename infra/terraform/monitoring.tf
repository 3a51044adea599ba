# Alarms on what clients of the alias notice: failed invocations and slow ones.

locals {
  alias_dimensions = {
    FunctionName = aws_lambda_function.classifier.function_name
    Resource     = "${aws_lambda_function.classifier.function_name}:${aws_lambda_alias.live.name}"
  }
}

resource "aws_cloudwatch_metric_alarm" "alias_errors" {
  alarm_name          = "${var.lambda_function_name}-${var.lambda_alias}-errors"
  alarm_description   = "Invocations of ${var.lambda_function_name}:${var.lambda_alias} failed; consider rolling the alias back."
  namespace           = "AWS/Lambda"
  metric_name         = "Errors"
  dimensions          = local.alias_dimensions
  statistic           = "Sum"
  period              = 300
  evaluation_periods  = 1
  threshold           = var.error_alarm_threshold
  comparison_operator = "GreaterThanOrEqualToThreshold"
  treat_missing_data  = "notBreaching"
  alarm_actions       = local.alarm_actions
  ok_actions          = local.alarm_actions
}

resource "aws_cloudwatch_metric_alarm" "alias_latency" {
  alarm_name          = "${var.lambda_function_name}-${var.lambda_alias}-latency-p99"
  alarm_description   = "p99 duration of ${var.lambda_function_name}:${var.lambda_alias} is above ${var.latency_alarm_p99_ms} ms."
  namespace           = "AWS/Lambda"
  metric_name         = "Duration"
  dimensions          = local.alias_dimensions
  extended_statistic  = "p99"
  period              = 300
  evaluation_periods  = 3
  datapoints_to_alarm = 2
  threshold           = var.latency_alarm_p99_ms
  comparison_operator = "GreaterThanThreshold"
  treat_missing_data  = "notBreaching"
  alarm_actions       = local.alarm_actions
  ok_actions          = local.alarm_actions
}

# Shared by every training job in the account, so it is opt-in (or `terraform import` it).
resource "aws_cloudwatch_log_group" "sagemaker_training" {
  count             = var.manage_sagemaker_log_group ? 1 : 0
  name              = "/aws/sagemaker/TrainingJobs"
  retention_in_days = var.log_retention_days
}
