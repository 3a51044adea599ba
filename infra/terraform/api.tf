# POST /mnist → the "live" alias, through an HTTP API (payload format 2.0, as localcloud serves it).

resource "aws_apigatewayv2_api" "mnist" {
  name          = "mnist-classifier"
  description   = "MNIST digit classifier: POST /mnist"
  protocol_type = "HTTP"
}

resource "aws_apigatewayv2_integration" "live" {
  api_id                 = aws_apigatewayv2_api.mnist.id
  integration_type       = "AWS_PROXY"
  integration_method     = "POST"
  integration_uri        = aws_lambda_alias.live.invoke_arn
  payload_format_version = "2.0"
  timeout_milliseconds   = min(var.lambda_timeout_s * 1000, 30000)

  # A body the HTTP API accepts (up to 10 MB) can still be over Lambda's 6 MB, and then Lambda refuses
  # the invocation with 413 RequestEntityTooLargeException and the function never runs. HTTP APIs answer
  # a failed Lambda integration with 500 {"message":"Internal Server Error"}; this keeps the client's
  # status the 413 the integration returned. Unverified on AWS: check it after the first apply (see
  # README.md, "Request bodies over Lambda's 6 MB").
  # No other status is touched: the function's own 413 (bodies over 2 MiB) stays a 413 too.
  response_parameters {
    status_code = "413"
    mappings = {
      "overwrite:statuscode" = "413"
    }
  }
}

resource "aws_apigatewayv2_route" "predict" {
  api_id    = aws_apigatewayv2_api.mnist.id
  route_key = "POST /mnist"
  target    = "integrations/${aws_apigatewayv2_integration.live.id}"
}

resource "aws_cloudwatch_log_group" "api_access" {
  name              = "/aws/vendedlogs/apigateway/${aws_apigatewayv2_api.mnist.name}"
  retention_in_days = var.log_retention_days
}

resource "aws_apigatewayv2_stage" "default" {
  api_id      = aws_apigatewayv2_api.mnist.id
  name        = "$default"
  auto_deploy = true

  default_route_settings {
    throttling_rate_limit  = var.api_throttling_rate_limit
    throttling_burst_limit = var.api_throttling_burst_limit
  }

  access_log_settings {
    destination_arn = aws_cloudwatch_log_group.api_access.arn
    format = jsonencode({
      requestId          = "$context.requestId"
      requestTime        = "$context.requestTime"
      routeKey           = "$context.routeKey"
      status             = "$context.status"
      responseLength     = "$context.responseLength"
      latencyMs          = "$context.responseLatency"
      integrationStatus  = "$context.integrationStatus"
      integrationLatency = "$context.integrationLatency"
      integrationError   = "$context.integrationErrorMessage"
      sourceIp           = "$context.identity.sourceIp"
    })
  }
}

# Only this API's POST /mnist may invoke, and only the alias.
resource "aws_lambda_permission" "api" {
  statement_id  = "AllowHttpApiPostMnist"
  action        = "lambda:InvokeFunction"
  function_name = aws_lambda_function.classifier.function_name
  qualifier     = aws_lambda_alias.live.name
  principal     = "apigateway.amazonaws.com"
  source_arn    = "${aws_apigatewayv2_api.mnist.execution_arn}/*/*/mnist"
}
