# The serving function. Terraform creates it once, with the handler and no model; from then on the
# mnist_retraining DAG owns its code and the alias (update code, publish a version, move "live"),
# so those attributes are ignored here and a later `terraform apply` never rolls a deployment back.

# Layers over 50 MB must come from S3; numpy + onnxruntime are about that.
resource "aws_s3_object" "layer" {
  bucket      = aws_s3_bucket.pipeline.id
  key         = "${local.prefixes.lambda}layers/runtime-${var.lambda_architecture}.zip"
  source      = var.layer_zip
  source_hash = filemd5(var.layer_zip)

  depends_on = [aws_s3_bucket_server_side_encryption_configuration.pipeline]
}

resource "aws_lambda_layer_version" "runtime" {
  layer_name               = "${var.lambda_function_name}-runtime"
  description              = "numpy + onnxruntime from lambda_package/requirements.txt"
  s3_bucket                = aws_s3_object.layer.bucket
  s3_key                   = aws_s3_object.layer.key
  s3_object_version        = aws_s3_object.layer.version_id
  source_code_hash         = filebase64sha256(var.layer_zip)
  compatible_runtimes      = ["python3.12"]
  compatible_architectures = [var.lambda_architecture]
}

resource "aws_cloudwatch_log_group" "lambda" {
  name              = "/aws/lambda/${var.lambda_function_name}"
  retention_in_days = var.log_retention_days
}

# Version 1, published here, is the placeholder; its description tells the DAG that an alias on it is
# a first deployment (mnist_pipeline.live_alias.PLACEHOLDER_DESCRIPTION), not an unknown model.
resource "aws_lambda_function" "classifier" {
  function_name                  = var.lambda_function_name
  description                    = "placeholder: no model deployed yet; the mnist_retraining DAG publishes the versions that serve"
  role                           = aws_iam_role.lambda.arn
  runtime                        = "python3.12"
  handler                        = "handler.handler"
  architectures                  = [var.lambda_architecture]
  filename                       = var.function_zip
  source_code_hash               = filebase64sha256(var.function_zip)
  layers                         = [aws_lambda_layer_version.runtime.arn]
  memory_size                    = var.lambda_memory_mb
  timeout                        = var.lambda_timeout_s
  reserved_concurrent_executions = var.reserved_concurrency
  publish                        = true

  lifecycle {
    ignore_changes = [filename, source_code_hash, s3_bucket, s3_key, s3_object_version]
  }

  depends_on = [aws_cloudwatch_log_group.lambda, aws_iam_role_policy.lambda]
}

resource "aws_lambda_alias" "live" {
  name             = var.lambda_alias
  description      = "What the HTTP API serves; moved by the mnist_retraining DAG (canary, then full)"
  function_name    = aws_lambda_function.classifier.function_name
  function_version = aws_lambda_function.classifier.version

  lifecycle {
    ignore_changes = [function_version, routing_config]
  }
}

resource "aws_sagemaker_model_package_group" "registry" {
  model_package_group_name        = var.model_package_group
  model_package_group_description = "MNIST classifiers trained by the mnist_retraining DAG"
}
