"""STS (sts.py): GetCallerIdentity answers for the configured account."""

import pytest

from localcloud.app import LocalCloud
from localcloud.config import Config


@pytest.mark.slow
def test_sts_get_caller_identity_uses_the_configured_account(tmp_path):
    with LocalCloud(Config(data_dir=tmp_path, port=0, account_id="123456789012")) as cloud:
        identity = cloud.client("sts").get_caller_identity()
    assert identity["Account"] == "123456789012"
    assert identity["Arn"] == "arn:aws:iam::123456789012:root"
