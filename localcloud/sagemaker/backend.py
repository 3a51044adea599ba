"""SageMakerBackend: training jobs, the model registry and the tags of both, behind one in-process API."""

from __future__ import annotations

import base64
import binascii
from typing import TYPE_CHECKING

from localcloud.config import Config
from localcloud.logs import LogsBackend
from localcloud.s3 import S3Backend
from localcloud.sagemaker.common import Arns, TagStore, check_tags, constraint_error, validation_error
from localcloud.sagemaker.jobs import TrainingJobs
from localcloud.sagemaker.registry import ModelRegistry
from localcloud.service import Backend
from localcloud.store import Store

if TYPE_CHECKING:
    from localcloud.app import LocalCloud

DEFAULT_STOP_GRACE_S = 10.0
LIST_TAGS_DEFAULT = 50


class SageMakerBackend(Backend):
    """`training` (TrainingJobs) and `registry` (ModelRegistry) share one tag store.

    :param max_running_jobs: how many training jobs train at once; the others wait in Starting.
        Default: config.max_training_jobs (LOCALCLOUD_MAX_TRAINING_JOBS, else 1).
    :param stop_grace_s: how long a stopped job's processes get between SIGTERM and SIGKILL.
    """

    def __init__(
        self,
        store: Store,
        config: Config,
        s3: S3Backend,
        logs: LogsBackend,
        *,
        max_running_jobs: int | None = None,
        stop_grace_s: float = DEFAULT_STOP_GRACE_S,
    ) -> None:
        self.arns = Arns(config)
        self.tags = TagStore(store)
        self.training = TrainingJobs(
            store,
            config,
            s3,
            logs,
            self.tags,
            max_running=max_running_jobs or config.max_training_jobs,
            stop_grace_s=stop_grace_s,
        )
        self.registry = ModelRegistry(store, config, self.tags)

    def start(self, cloud: LocalCloud) -> None:
        self.training.start(cloud.endpoint_url)

    def stop(self) -> None:
        self.training.stop()

    def counts(self) -> dict[str, int]:
        return {**self.training.counts(), **self.registry.counts()}

    # --- tags ----------------------------------------------------------------------------------------

    def _existing(self, arn: str) -> str:
        parsed = self.arns.parse(arn)
        found = parsed is not None and (
            self.training.arn_exists(parsed[1]) if parsed[0] == "training-job" else self.registry.has(*parsed)
        )
        if not found:
            raise validation_error(f"Requested resource not found: {arn}")
        return arn

    def add_tags(self, arn: str, tags: list[dict[str, str]]) -> list[dict[str, str]]:
        return self.tags.add(self._existing(arn), check_tags(tags))

    def list_tags(
        self, arn: str, token: str | None, max_results: int | None
    ) -> tuple[list[dict[str, str]], str | None]:
        tags = self.tags.get(self._existing(arn))
        limit = LIST_TAGS_DEFAULT if max_results is None else max_results
        if limit < LIST_TAGS_DEFAULT:
            raise constraint_error(
                limit, "maxResults", f"have value greater than or equal to {LIST_TAGS_DEFAULT}"
            )
        try:
            offset = int(base64.urlsafe_b64decode(token.encode())) if token else 0
        except (binascii.Error, ValueError):
            raise validation_error(f"Invalid pagination token: {token!r}") from None
        more = offset + limit < len(tags)
        next_token = base64.urlsafe_b64encode(str(offset + limit).encode()).decode() if more else None
        return tags[offset : offset + limit], next_token

    def delete_tags(self, arn: str, keys: list[str]) -> None:
        self.tags.remove(self._existing(arn), keys)
