"""The unmodified AWS CLI works against localcloud by setting --endpoint-url (skipped without it)."""

import json
import os
import shutil
import subprocess

import pytest

AWS = shutil.which("aws")
pytestmark = pytest.mark.skipif(AWS is None, reason="the AWS CLI is not installed")


def aws(localcloud, *args: str, tmp_path) -> subprocess.CompletedProcess:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("AWS_")},
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_CONFIG_FILE": str(tmp_path / "aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "aws-credentials"),
    }
    (tmp_path / "aws-config").write_text("[default]\ns3 =\n    addressing_style = path\n")
    return subprocess.run(
        [AWS, "--endpoint-url", localcloud.endpoint_url, "--output", "json", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_s3_sts_logs_and_lambda_through_the_cli(localcloud, tmp_path):
    upload = tmp_path / "big.bin"
    upload.write_bytes(os.urandom(12 * 2**20))  # above the CLI's 8 MB multipart threshold
    assert aws(localcloud, "s3", "mb", "s3://cli-bucket", tmp_path=tmp_path).returncode == 0
    copied = aws(localcloud, "s3", "cp", str(upload), "s3://cli-bucket/dir/big.bin", tmp_path=tmp_path)
    assert copied.returncode == 0, copied.stderr
    listing = aws(localcloud, "s3", "ls", "s3://cli-bucket/dir/", tmp_path=tmp_path)
    assert "big.bin" in listing.stdout and str(12 * 2**20) in listing.stdout
    back = tmp_path / "back.bin"
    assert (
        aws(localcloud, "s3", "cp", "s3://cli-bucket/dir/big.bin", str(back), tmp_path=tmp_path).returncode
        == 0
    )
    assert back.read_bytes() == upload.read_bytes()

    identity = json.loads(aws(localcloud, "sts", "get-caller-identity", tmp_path=tmp_path).stdout)
    assert identity["Account"] == "000000000000"
    missing = aws(localcloud, "lambda", "get-function", "--function-name", "nope", tmp_path=tmp_path)
    assert missing.returncode != 0 and "ResourceNotFoundException" in missing.stderr
    groups = aws(localcloud, "logs", "describe-log-groups", tmp_path=tmp_path)
    assert json.loads(groups.stdout)["logGroups"] == []
