variable "region" {
  description = "AWS region for every resource (the Airflow Variable mnist_region)."
  type        = string
  default     = "eu-west-1"
}

variable "tags" {
  description = "Tags added to every resource."
  type        = map(string)
  default     = { project = "mnist-airflow-mlops" }
}

variable "bucket_name" {
  description = "The pipeline's bucket; null: mnist-pipeline-<account id>."
  type        = string
  default     = null
}

variable "noncurrent_version_retention_days" {
  description = "Days an overwritten or deleted object version is kept before it expires."
  type        = number
  default     = 90
}

variable "lambda_function_name" {
  description = "The serving function (the Airflow Variable mnist_lambda_function)."
  type        = string
  default     = "mnist-classifier"
}

variable "lambda_alias" {
  description = "The alias the HTTP API invokes and the DAG moves (mnist_lambda_alias)."
  type        = string
  default     = "live"
}

variable "lambda_architecture" {
  description = "x86_64 or arm64; build the layer for the same one (build_artifacts.sh <arch>)."
  type        = string
  default     = "x86_64"

  validation {
    condition     = contains(["x86_64", "arm64"], var.lambda_architecture)
    error_message = "lambda_architecture must be \"x86_64\" or \"arm64\"."
  }
}

variable "lambda_memory_mb" {
  description = "Function memory; CPU share grows with it."
  type        = number
  default     = 1024
}

variable "lambda_timeout_s" {
  description = "Function timeout in seconds (API Gateway waits at most 30 s)."
  type        = number
  default     = 30
}

variable "reserved_concurrency" {
  description = "Reserved concurrent executions of the function; -1: unreserved."
  type        = number
  default     = 10
}

variable "layer_zip" {
  description = "The dependency layer zip written by build_artifacts.sh."
  type        = string
  default     = "build/layer.zip"
}

variable "function_zip" {
  description = "The initial deployment package written by build_artifacts.sh (handler only)."
  type        = string
  default     = "build/function.zip"
}

variable "model_package_group" {
  description = "SageMaker model package group of the registry (mnist_model_package_group)."
  type        = string
  default     = "mnist-classifier"
}

variable "training_image_account" {
  description = "Account of the SageMaker PyTorch training images in this region (AWS Deep Learning Containers)."
  type        = string
  default     = "763104351884"
}

variable "training_image_repository_arns" {
  description = "ECR repositories the SageMaker role may pull from; null: pytorch-training in training_image_account."
  type        = list(string)
  default     = null
}

variable "api_throttling_rate_limit" {
  description = "Steady-state requests per second the HTTP API accepts."
  type        = number
  default     = 100
}

variable "api_throttling_burst_limit" {
  description = "Burst of requests the HTTP API accepts."
  type        = number
  default     = 50
}

variable "log_retention_days" {
  description = "Retention of the Lambda, API access and (if managed) SageMaker training log groups."
  type        = number
  default     = 30
}

variable "manage_sagemaker_log_group" {
  description = "Create /aws/sagemaker/TrainingJobs with retention; false when it already exists in the account."
  type        = bool
  default     = false
}

variable "alarm_actions" {
  description = "ARNs notified when an alarm fires or recovers, besides the alerts topic (alerts.tf)."
  type        = list(string)
  default     = []
}

variable "error_alarm_threshold" {
  description = "Alias invocation errors within 5 minutes that raise the errors alarm."
  type        = number
  default     = 1
}

variable "latency_alarm_p99_ms" {
  description = "p99 alias duration (ms) over 5 minutes that raises the latency alarm."
  type        = number
  default     = 1000
}

variable "airflow_role_name" {
  description = "IAM role of the Airflow workers (MWAA execution role or your own); null: only create the policy."
  type        = string
  default     = null
}

variable "events_max_receive_count" {
  description = "Receives of a data-events message before SQS moves it to the dead-letter queue."
  type        = number
  default     = 5

  validation {
    condition     = var.events_max_receive_count >= 1 && var.events_max_receive_count <= 1000
    error_message = "events_max_receive_count must be between 1 and 1000 (SQS's range for maxReceiveCount)."
  }
}

variable "alert_email" {
  description = "Email address subscribed to the alerts topic (it must confirm); empty: no subscription."
  type        = string
  default     = ""

  validation {
    condition     = var.alert_email == "" || can(regex("^[^@\\s]+@[^@\\s]+\\.[^@\\s]+$", var.alert_email))
    error_message = "alert_email must be an email address like ops@example.com, or empty for no subscription."
  }
}
