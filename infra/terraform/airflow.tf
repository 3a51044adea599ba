# What the Airflow workers (MWAA execution role or self-hosted) may do: exactly the calls the
# mnist_retraining DAG and plugins/mnist_pipeline make, on this pipeline's resources. Keep it in
# step with the code: tests/infra/test_terraform.py compares it with the boto3 calls in plugins/.

locals {
  function_arn       = aws_lambda_function.classifier.arn
  package_group_arn  = aws_sagemaker_model_package_group.registry.arn
  package_arns       = "arn:${local.partition}:sagemaker:${var.region}:${local.account_id}:model-package/${var.model_package_group}/*"
  training_jobs_arns = "arn:${local.partition}:sagemaker:${var.region}:${local.account_id}:training-job/*"
}

data "aws_iam_policy_document" "airflow" {
  # HeadBucket (the provider's input check) and ListObjectsV2 (lake, audit, monitoring).
  statement {
    sid       = "ListPipelineBucket"
    actions   = ["s3:ListBucket"]
    resources = [aws_s3_bucket.pipeline.arn]
  }

  # GetObject also covers HeadObject, CopyObject's source, and UpdateFunctionCode reading lambda/.
  statement {
    sid       = "ReadPipelineObjects"
    actions   = ["s3:GetObject"]
    resources = ["${aws_s3_bucket.pipeline.arn}/*"]
  }

  statement {
    sid     = "WriteRunOutputs"
    actions = ["s3:PutObject"]
    resources = [for prefix in ["quarantine", "snapshots", "code", "evaluations", "lambda", "audit", "monitoring"] :
      "${aws_s3_bucket.pipeline.arn}/${local.prefixes[prefix]}*"
    ]
  }

  # A quarantined batch is copied out of incoming/, then deleted there.
  statement {
    sid       = "MoveIncomingBatches"
    actions   = ["s3:DeleteObject"]
    resources = ["${aws_s3_bucket.pipeline.arn}/${local.prefixes.incoming}*"]
  }

  # CreateTrainingJob with Tags needs AddTags too.
  statement {
    sid       = "TrainingJobs"
    actions   = ["sagemaker:CreateTrainingJob", "sagemaker:DescribeTrainingJob", "sagemaker:AddTags"]
    resources = [local.training_jobs_arns]
  }

  statement {
    sid       = "PassTrainingRole"
    actions   = ["iam:PassRole"]
    resources = [aws_iam_role.sagemaker.arn]

    condition {
      test     = "StringEquals"
      variable = "iam:PassedToService"
      values   = ["sagemaker.amazonaws.com"]
    }
  }

  # The provider's register operator calls CreateModelPackageGroup on every run (it tolerates
  # "already exists") and deletes the group again only if it created it and registration failed.
  statement {
    sid = "ModelRegistry"
    actions = [
      "sagemaker:CreateModelPackage",
      "sagemaker:CreateModelPackageGroup",
      "sagemaker:DeleteModelPackageGroup",
      "sagemaker:DescribeModelPackage",
      "sagemaker:UpdateModelPackage",
    ]
    resources = [local.package_group_arn, local.package_arns]
  }

  # ListModelPackages has no resource-level permissions.
  statement {
    sid       = "FindRunPackage"
    actions   = ["sagemaker:ListModelPackages"]
    resources = ["*"]
  }

  # GetFunction: boto3's function_updated_v2 waiter polls it after UpdateFunctionCode.
  statement {
    sid = "DeployLambda"
    actions = [
      "lambda:CreateAlias",
      "lambda:DeleteAlias",
      "lambda:GetAlias",
      "lambda:GetFunction",
      "lambda:GetFunctionConfiguration",
      "lambda:InvokeFunction",
      "lambda:ListVersionsByFunction",
      "lambda:PublishVersion",
      "lambda:UpdateAlias",
      "lambda:UpdateFunctionCode",
    ]
    resources = [local.function_arn, "${local.function_arn}:*"]
  }

  # The asset watcher (triggerer) receives data events; a message that is not a new batch gets its
  # visibility stretched per receive, so the redrive policy parks it in the dead-letter queue; the run
  # deletes the messages of the events that started it (DeleteMessageBatch is sqs:DeleteMessage).
  # Nothing on the dead-letter queue: the workers never read it, people inspect it.
  statement {
    sid       = "DataEvents"
    actions   = ["sqs:ChangeMessageVisibility", "sqs:DeleteMessage", "sqs:ReceiveMessage"]
    resources = [aws_sqs_queue.events.arn]
  }

  statement {
    sid       = "PublishAlerts"
    actions   = ["sns:Publish"]
    resources = [aws_sns_topic.alerts.arn]
  }

  # Drift monitoring reads the serving function's request records from its log group. Most Logs
  # actions are authorized on the group's ARN with a trailing ":*", so both spellings are listed.
  statement {
    sid       = "ReadServingLogs"
    actions   = ["logs:FilterLogEvents"]
    resources = [aws_cloudwatch_log_group.lambda.arn, "${aws_cloudwatch_log_group.lambda.arn}:*"]
  }
}

resource "aws_iam_policy" "airflow" {
  name        = "mnist-airflow-worker"
  description = "What the mnist_retraining DAG calls; attach to the MWAA execution role or the workers' role"
  policy      = data.aws_iam_policy_document.airflow.json
}

resource "aws_iam_role_policy_attachment" "airflow" {
  count      = var.airflow_role_name == null ? 0 : 1
  role       = var.airflow_role_name
  policy_arn = aws_iam_policy.airflow.arn
}
