output "api_endpoint" {
  description = "Base URL of the HTTP API."
  value       = aws_apigatewayv2_api.mnist.api_endpoint
}

output "endpoint_url" {
  description = "POST digits here: curl -X POST <url> -H 'Content-Type: application/json' --data '{\"input\": [...784 numbers...]}'."
  value       = "${aws_apigatewayv2_api.mnist.api_endpoint}/mnist"
}

output "bucket_name" {
  value = aws_s3_bucket.pipeline.id
}

output "bucket_arn" {
  value = aws_s3_bucket.pipeline.arn
}

output "sagemaker_role_arn" {
  value = aws_iam_role.sagemaker.arn
}

output "lambda_role_arn" {
  value = aws_iam_role.lambda.arn
}

output "lambda_function_arn" {
  value = aws_lambda_function.classifier.arn
}

output "lambda_alias_arn" {
  value = aws_lambda_alias.live.arn
}

output "lambda_layer_arn" {
  value = aws_lambda_layer_version.runtime.arn
}

output "model_package_group_arn" {
  value = aws_sagemaker_model_package_group.registry.arn
}

output "events_queue_url" {
  description = "The data-events queue the asset watcher polls (S3 notifications of new batches)."
  value       = aws_sqs_queue.events.url
}

output "events_queue_arn" {
  value = aws_sqs_queue.events.arn
}

output "events_dlq_url" {
  description = "Data events the watcher could not use: aws sqs receive-message --queue-url <this>."
  value       = aws_sqs_queue.events_dlq.url
}

output "alerts_topic_arn" {
  description = "Pipeline alerts (the DAG and the alarms publish here); subscribe with alert_email or aws sns subscribe."
  value       = aws_sns_topic.alerts.arn
}

output "api_id" {
  value = aws_apigatewayv2_api.mnist.id
}

output "airflow_policy_arn" {
  description = "Attach to the Airflow workers' role (done for you when airflow_role_name is set)."
  value       = aws_iam_policy.airflow.arn
}

output "airflow_policy_json" {
  description = "The same policy as JSON, e.g. for an MWAA execution role managed elsewhere."
  value       = data.aws_iam_policy_document.airflow.json
}

# The names are config.py's: Variable mnist_<name>, or env AIRFLOW_VAR_MNIST_<NAME>.
output "airflow_variables" {
  description = "Airflow Variables for the DAG (set them in the UI, `airflow variables import`, or MWAA's secrets backend)."
  value = {
    mnist_bucket              = aws_s3_bucket.pipeline.id
    mnist_region              = var.region
    mnist_sagemaker_role_arn  = aws_iam_role.sagemaker.arn
    mnist_lambda_function     = aws_lambda_function.classifier.function_name
    mnist_lambda_alias        = aws_lambda_alias.live.name
    mnist_api_id              = aws_apigatewayv2_api.mnist.id
    mnist_model_package_group = aws_sagemaker_model_package_group.registry.model_package_group_name
    mnist_events_queue_url    = aws_sqs_queue.events.url
    mnist_alerts_topic_arn    = aws_sns_topic.alerts.arn
  }
}

# The DAG's schedule is decided when the file is parsed, from the environment only (a parse must not
# query Variables), so the data-events queue must reach the dag-processor and the scheduler as
# MNIST_EVENTS_QUEUE_URL; without it the DAG runs on its cron alone. On MWAA: export these in the
# startup script.
output "airflow_environment" {
  description = "Environment variables for every Airflow component (the same values as the Variables above)."
  value = {
    MNIST_EVENTS_QUEUE_URL = aws_sqs_queue.events.url
    MNIST_ALERTS_TOPIC_ARN = aws_sns_topic.alerts.arn
  }
}

# No keys: on AWS the workers' role supplies credentials; only the region is set.
output "airflow_connection" {
  description = "The aws_default connection, as the environment variable AIRFLOW_CONN_AWS_DEFAULT."
  value       = "AIRFLOW_CONN_AWS_DEFAULT=${jsonencode({ conn_type = "aws", extra = { region_name = var.region } })}"
}
