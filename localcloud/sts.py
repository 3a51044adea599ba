"""AWS STS (query protocol): GetCallerIdentity, which connection tests (Airflow's included) call.

Every caller is the account's root user: localcloud accepts any credentials and has one account
(Config.account_id, default 000000000000).
"""

from __future__ import annotations

from typing import Any

from localcloud.service import Service, operation
from localcloud.wire import Request


class StsService(Service):
    model_name = "sts"

    @operation("GetCallerIdentity")
    def get_caller_identity(self, params: dict[str, Any], request: Request) -> dict[str, Any]:
        account = self.config.account_id
        return {"UserId": account, "Account": account, "Arn": f"arn:aws:iam::{account}:root"}
