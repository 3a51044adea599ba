# infra/terraform applied with no AWS account. tests/infra/test_terraform_plan.py copies the
# configuration and this file to a temporary directory, appends an override_resource block for every
# managed resource (so nothing is created and no AWS API is called; the real provider still validates
# each resource and renders every aws_iam_policy_document), runs `terraform test -json -verbose` and
# checks the states of these runs in Python.

# The real provider, configured never to call AWS.
provider "aws" {
  region                      = "eu-west-1"
  access_key                  = "offline"
  secret_key                  = "offline"
  skip_credentials_validation = true
  skip_requesting_account_id  = true
  skip_metadata_api_check     = true
  skip_region_validation      = true
  max_retries                 = 1
}

# The only data source that would call AWS (sts:GetCallerIdentity).
override_data {
  target = data.aws_caller_identity.current
  values = { account_id = "123456789012" }
}

run "defaults" {
  command = apply
}

run "with_alert_email" {
  command = apply

  variables {
    alert_email              = "ops@example.com"
    events_max_receive_count = 3
  }
}

run "refuses_a_malformed_alert_email" {
  command = plan

  variables {
    alert_email = "not an address"
  }

  expect_failures = [var.alert_email]
}
