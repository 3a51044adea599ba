# Execution roles, least privilege: named actions only, on this pipeline's resources only. A few
# actions accept no resource narrower than "*" (noted where used); the action is still named.

locals {
  sagemaker_log_group_arn = "arn:${local.partition}:logs:${var.region}:${local.account_id}:log-group:/aws/sagemaker/TrainingJobs"
}

# --- SageMaker training jobs ---------------------------------------------------------------------

data "aws_iam_policy_document" "sagemaker_assume" {
  statement {
    actions = ["sts:AssumeRole"]

    principals {
      type        = "Service"
      identifiers = ["sagemaker.amazonaws.com"]
    }

    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [local.account_id]
    }
  }
}

resource "aws_iam_role" "sagemaker" {
  name               = "mnist-sagemaker-execution"
  description        = "Runs the mnist_retraining DAG's training jobs"
  assume_role_policy = data.aws_iam_policy_document.sagemaker_assume.json
}

data "aws_iam_policy_document" "sagemaker" {
  statement {
    sid     = "ListTrainingInputsAndOutputs"
    actions = ["s3:ListBucket"]
    resources = [
      aws_s3_bucket.pipeline.arn,
    ]

    condition {
      test     = "StringLike"
      variable = "s3:prefix"
      values = [
        "${local.prefixes.data}*",
        "${local.prefixes.snapshots}*",
        "${local.prefixes.code}*",
        "${local.prefixes.training}*",
      ]
    }
  }

  # The lake shards and snapshot manifests are the channels; code/ holds sourcedir.tar.gz;
  # training/checkpoints/ lets a spot job resume.
  statement {
    sid     = "ReadTrainingInputs"
    actions = ["s3:GetObject"]
    resources = [
      "${aws_s3_bucket.pipeline.arn}/${local.prefixes.data}*",
      "${aws_s3_bucket.pipeline.arn}/${local.prefixes.snapshots}*",
      "${aws_s3_bucket.pipeline.arn}/${local.prefixes.code}*",
      "${aws_s3_bucket.pipeline.arn}/${local.prefixes.training}*",
    ]
  }

  statement {
    sid       = "WriteModelAndCheckpoints"
    actions   = ["s3:PutObject"]
    resources = ["${aws_s3_bucket.pipeline.arn}/${local.prefixes.training}*"]
  }

  statement {
    sid = "TrainingLogs"
    actions = [
      "logs:CreateLogGroup",
      "logs:CreateLogStream",
      "logs:DescribeLogStreams",
      "logs:PutLogEvents",
    ]
    resources = [
      local.sagemaker_log_group_arn,
      "${local.sagemaker_log_group_arn}:log-stream:*",
    ]
  }

  # PutMetricData has no resource-level permissions; the namespace condition narrows it instead.
  statement {
    sid       = "TrainingMetrics"
    actions   = ["cloudwatch:PutMetricData"]
    resources = ["*"]

    condition {
      test     = "StringEquals"
      variable = "cloudwatch:namespace"
      values   = ["/aws/sagemaker/TrainingJobs"]
    }
  }

  # GetAuthorizationToken is account-wide by design; the image pull itself is per repository.
  statement {
    sid       = "EcrLogin"
    actions   = ["ecr:GetAuthorizationToken"]
    resources = ["*"]
  }

  statement {
    sid = "PullTrainingImage"
    actions = [
      "ecr:BatchCheckLayerAvailability",
      "ecr:BatchGetImage",
      "ecr:GetDownloadUrlForLayer",
    ]
    resources = local.training_image_repository_arns
  }
}

resource "aws_iam_role_policy" "sagemaker" {
  name   = "mnist-training"
  role   = aws_iam_role.sagemaker.id
  policy = data.aws_iam_policy_document.sagemaker.json
}

# --- Lambda -------------------------------------------------------------------------------------

data "aws_iam_policy_document" "lambda_assume" {
  statement {
    actions = ["sts:AssumeRole"]

    principals {
      type        = "Service"
      identifiers = ["lambda.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "lambda" {
  name               = "mnist-lambda-execution"
  description        = "Runs the MNIST classifier function"
  assume_role_policy = data.aws_iam_policy_document.lambda_assume.json
}

# The handler reads nothing but its own package: it only needs to log. Its log group is created
# below (with retention), so it needs no logs:CreateLogGroup.
data "aws_iam_policy_document" "lambda" {
  statement {
    sid       = "FunctionLogs"
    actions   = ["logs:CreateLogStream", "logs:PutLogEvents"]
    resources = ["${aws_cloudwatch_log_group.lambda.arn}:log-stream:*"]
  }
}

resource "aws_iam_role_policy" "lambda" {
  name   = "mnist-classifier-logs"
  role   = aws_iam_role.lambda.id
  policy = data.aws_iam_policy_document.lambda.json
}
