# Names and ARNs every other file uses.

data "aws_caller_identity" "current" {}

data "aws_partition" "current" {}

locals {
  account_id  = data.aws_caller_identity.current.account_id
  partition   = data.aws_partition.current.partition
  bucket_name = coalesce(var.bucket_name, "mnist-pipeline-${local.account_id}")
  bucket_arn  = "arn:${local.partition}:s3:::${local.bucket_name}"

  # The S3 layout of plugins/mnist_pipeline/config.py (the defaults of its *_prefix settings).
  prefixes = {
    data        = "data/"
    incoming    = "data/incoming/"
    quarantine  = "data/quarantine/"
    snapshots   = "snapshots/"
    code        = "code/"
    training    = "training/"
    evaluations = "evaluations/"
    lambda      = "lambda/"
    audit       = "audit/"
    monitoring  = "monitoring/"
  }

  # The SageMaker PyTorch training images live in AWS's Deep Learning Containers account.
  training_image_repository_arns = (
    var.training_image_repository_arns != null
    ? var.training_image_repository_arns
    : ["arn:${local.partition}:ecr:${var.region}:${var.training_image_account}:repository/pytorch-training"]
  )
}
