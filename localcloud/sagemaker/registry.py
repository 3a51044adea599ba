"""The SageMaker model registry: model package groups and the model packages (versions) in them.

A package created with ModelPackageGroupName is a version of that group: versions count 1, 2, 3...
and are never reused, its ARN is ``model-package/<group>/<version>``, and its approval status starts as
PendingManualApproval. A package created with ModelPackageName alone is unversioned. CreateModelPackage
is idempotent per ClientToken (boto3 fills one in), so a retried request never adds a second version.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from localcloud.config import Config
from localcloud.sagemaker.common import (
    SORT_ORDERS,
    Arns,
    TagStore,
    check_choice,
    check_max_results,
    check_name,
    check_tags,
    echoed,
    now,
    sort_and_page,
    time_filter,
    validation_error,
)
from localcloud.store import Store
from localcloud.wire import ServiceError

GROUP_KIND = "sagemaker/model-package-group"  # key: group name in lower case
PACKAGE_KIND = "sagemaker/model-package"  # key: "<group>/<version, 9 digits>" or an unversioned name
CLIENT_TOKEN_KIND = "sagemaker/model-package-client-token"  # noqa: S105 - key: ClientToken -> the package key
APPROVAL_STATUSES = ("Approved", "Rejected", "PendingManualApproval")
PACKAGE_TYPES = ("Versioned", "Unversioned", "Both")
GROUP_SORT_KEYS = ("Name", "CreationTime")
_VERSIONED_NAME = re.compile(r"([a-zA-Z0-9](?:-*[a-zA-Z0-9]){0,62})/([0-9]{1,9})")
# Fields of CreateModelPackage that are not stored as given.
_NOT_DESCRIBED = ("ModelPackageName", "ModelPackageGroupName", "Tags", "ClientToken")


def _version_key(group_key: str, version: int) -> str:
    return f"{group_key}/{version:09d}"


class ModelRegistry:
    def __init__(self, store: Store, config: Config, tags: TagStore) -> None:
        self.store = store
        self.config = config
        self.tags = tags
        self.arns = Arns(config)

    def counts(self) -> dict[str, int]:
        return {
            "model_package_groups": self.store.count(GROUP_KIND),
            "model_packages": self.store.count(PACKAGE_KIND),
        }

    def _user(self) -> dict[str, Any]:
        account = self.config.account_id
        return {"IamIdentity": {"Arn": f"arn:aws:iam::{account}:root", "PrincipalId": account}}

    # --- groups ------------------------------------------------------------------------------------

    def create_group(self, name: str, description: str | None, tags: list[dict[str, str]]) -> str:
        check_name(name, "modelPackageGroupName")
        tags = check_tags(tags)
        arn = self.arns.make("model-package-group", name)
        doc = {
            "name": name,
            "arn": arn,
            "description": description,
            "created": now(),
            "latest_version": 0,
        }
        with self.store.transaction():
            if not self.store.insert(GROUP_KIND, name.lower(), doc):
                # The Airflow provider recognises an existing group by this message's start.
                raise validation_error(f"Model Package Group already exists: {arn}")
            self.tags.put(arn, tags)
        return arn

    def _group_key(self, name_or_arn: str) -> str:
        parsed = self.arns.parse(name_or_arn)
        if parsed is not None:
            resource_type, name = parsed
            if resource_type != "model-package-group":
                raise validation_error(f"{name_or_arn} is not a model package group ARN")
            return name.lower()
        return name_or_arn.lower()

    def _group(self, name_or_arn: str) -> dict[str, Any]:
        doc = self.store.get(GROUP_KIND, self._group_key(name_or_arn))
        if doc is None:
            name = self.arns.parse(name_or_arn)[1] if self.arns.parse(name_or_arn) else name_or_arn
            raise validation_error(
                f"ModelPackageGroup {self.arns.make('model-package-group', name)} does not exist."
            )
        return doc

    def describe_group(self, name_or_arn: str) -> dict[str, Any]:
        return self._group_summary(self._group(name_or_arn)) | {"CreatedBy": self._user()}

    @staticmethod
    def _group_summary(doc: dict[str, Any]) -> dict[str, Any]:
        return {
            "ModelPackageGroupName": doc["name"],
            "ModelPackageGroupArn": doc["arn"],
            "ModelPackageGroupDescription": doc["description"],
            "CreationTime": doc["created"],
            "ModelPackageGroupStatus": "Completed",
        }

    def list_groups(self, params: dict[str, Any]) -> tuple[list[dict[str, Any]], str | None]:
        sort_by = check_choice(params.get("SortBy", "CreationTime"), GROUP_SORT_KEYS, "sortBy")
        order = check_choice(params.get("SortOrder", "Ascending"), SORT_ORDERS, "sortOrder")
        contains = params.get("NameContains", "").lower()
        docs = [
            doc
            for _, doc in self.store.scan(GROUP_KIND)
            if contains in doc["name"].lower()
            and time_filter(params, doc["created"], "CreationTimeAfter", "CreationTimeBefore")
        ]
        sort_keys: dict[str, Callable[[dict[str, Any]], tuple]] = {
            "Name": lambda doc: (doc["name"].lower(),),
            "CreationTime": lambda doc: (doc["created"], doc["name"].lower()),
        }
        page, token = sort_and_page(
            docs,
            sort_keys[sort_by],
            descending=order == "Descending",
            token=params.get("NextToken"),
            max_results=check_max_results(params.get("MaxResults", 10)),
        )
        return [self._group_summary(doc) for doc in page], token

    def delete_group(self, name_or_arn: str) -> None:
        with self.store.transaction():
            doc = self._group(name_or_arn)
            key = doc["name"].lower()
            if self.store.count(PACKAGE_KIND, prefix=f"{key}/"):
                raise ServiceError(
                    "ConflictException",
                    f"Model Package Group {doc['arn']} still holds model packages; delete them first",
                )
            self.store.delete(GROUP_KIND, key)
            self.tags.put(doc["arn"], [])

    # --- packages ----------------------------------------------------------------------------------

    def create_package(self, params: dict[str, Any]) -> str:
        group_name, name = params.get("ModelPackageGroupName"), params.get("ModelPackageName")
        if group_name and name:
            raise validation_error(
                "Both ModelPackageName and ModelPackageGroupName are provided in the input. "
                "Cannot determine which one to use."
            )
        if not group_name and not name:
            raise validation_error(
                "Either ModelPackageGroupName (a versioned package) or ModelPackageName is required"
            )
        if "ModelApprovalStatus" in params:
            check_choice(params["ModelApprovalStatus"], APPROVAL_STATUSES, "modelApprovalStatus")
        _check_metadata(params.get("CustomerMetadataProperties", {}))
        tags = check_tags(params.get("Tags", []))
        fields = {key: value for key, value in params.items() if key not in _NOT_DESCRIBED}
        token = params.get("ClientToken")
        with self.store.transaction():
            if token and (seen := self.store.get(CLIENT_TOKEN_KIND, token)):
                existing = self.store.get(PACKAGE_KIND, seen["package"])
                if existing is not None:
                    return existing["arn"]
            if group_name:
                group = self._group(group_name)
                version = group["latest_version"] + 1
                self.store.put(GROUP_KIND, group["name"].lower(), {**group, "latest_version": version})
                key = _version_key(group["name"].lower(), version)
                arn = self.arns.make("model-package", f"{group['name']}/{version}")
                fields.setdefault("ModelApprovalStatus", "PendingManualApproval")
                identity = {"group": group["name"], "version": version, "name": None}
            else:
                check_name(name, "modelPackageName")
                key = name.lower()
                arn = self.arns.make("model-package", name)
                identity = {"group": None, "version": None, "name": name}
                if self.store.get(PACKAGE_KIND, key) is not None:
                    raise validation_error(f"Model package {arn} already exists.")
            created = now()
            doc = {
                "arn": arn,
                **identity,
                "fields": fields,
                "created": created,
                "modified": None,
                "approval_description": None,
            }
            self.store.put(PACKAGE_KIND, key, doc)
            if token:
                self.store.put(CLIENT_TOKEN_KIND, token, {"package": key})
            self.tags.put(arn, tags)
        return arn

    def _package_key(self, name_or_arn: str) -> str:
        reference = name_or_arn
        parsed = self.arns.parse(name_or_arn)
        if parsed is not None:
            resource_type, reference = parsed
            if resource_type != "model-package":
                raise validation_error(f"{name_or_arn} is not a model package ARN")
        versioned = _VERSIONED_NAME.fullmatch(reference)
        if versioned:
            return _version_key(versioned.group(1).lower(), int(versioned.group(2)))
        return reference.lower()

    def _package(self, name_or_arn: str) -> tuple[str, dict[str, Any]]:
        key = self._package_key(name_or_arn)
        doc = self.store.get(PACKAGE_KIND, key)
        if doc is None:
            described = (
                name_or_arn
                if name_or_arn.startswith("arn:")
                else self.arns.make("model-package", name_or_arn)
            )
            raise validation_error(f"ModelPackage {described} does not exist.")
        return key, doc

    def describe_package(self, name_or_arn: str) -> dict[str, Any]:
        _, doc = self._package(name_or_arn)
        described = echoed("DescribeModelPackage", doc["fields"])
        described.update(self._package_identity(doc))
        described.update(
            {
                "CreationTime": doc["created"],
                "ModelPackageStatus": "Completed",
                "ModelPackageStatusDetails": {"ValidationStatuses": [], "ImageScanStatuses": []},
                "CertifyForMarketplace": doc["fields"].get("CertifyForMarketplace", False),
                "CreatedBy": self._user(),
                "ApprovalDescription": doc["approval_description"],
                "LastModifiedTime": doc["modified"],
                "LastModifiedBy": self._user() if doc["modified"] else None,
            }
        )
        return described

    @staticmethod
    def _package_identity(doc: dict[str, Any]) -> dict[str, Any]:
        # As on AWS, a version is named by its group and number; only unversioned packages have a name.
        if doc["group"] is not None:
            return {
                "ModelPackageGroupName": doc["group"],
                "ModelPackageVersion": doc["version"],
                "ModelPackageArn": doc["arn"],
            }
        return {"ModelPackageName": doc["name"], "ModelPackageArn": doc["arn"]}

    def list_packages(self, params: dict[str, Any]) -> tuple[list[dict[str, Any]], str | None]:
        """ListModelPackages: a group's versions, or unversioned packages by default (ModelPackageType)."""
        sort_by = check_choice(params.get("SortBy", "CreationTime"), GROUP_SORT_KEYS, "sortBy")
        order = check_choice(params.get("SortOrder", "Ascending"), SORT_ORDERS, "sortOrder")
        approval = params.get("ModelApprovalStatus")
        if approval is not None:
            check_choice(approval, APPROVAL_STATUSES, "modelApprovalStatus")
        contains = params.get("NameContains", "").lower()
        if "ModelPackageGroupName" in params:
            group = self._group(params["ModelPackageGroupName"])
            found = self.store.scan(PACKAGE_KIND, prefix=f"{group['name'].lower()}/")
        else:
            wanted = check_choice(
                params.get("ModelPackageType", "Unversioned"), PACKAGE_TYPES, "modelPackageType"
            )
            found = [
                (key, doc)
                for key, doc in self.store.scan(PACKAGE_KIND)
                if wanted == "Both" or (doc["group"] is not None) == (wanted == "Versioned")
            ]
        docs = [
            doc
            for _, doc in found
            if contains in (doc["group"] or doc["name"]).lower()
            and (approval is None or doc["fields"].get("ModelApprovalStatus") == approval)
            and time_filter(params, doc["created"], "CreationTimeAfter", "CreationTimeBefore")
        ]
        sort_keys: dict[str, Callable[[dict[str, Any]], tuple]] = {
            "Name": lambda doc: ((doc["group"] or doc["name"]).lower(), doc["version"] or 0),
            "CreationTime": lambda doc: (
                doc["created"],
                (doc["group"] or doc["name"]).lower(),
                doc["version"] or 0,
            ),
        }
        page, token = sort_and_page(
            docs,
            sort_keys[sort_by],
            descending=order == "Descending",
            token=params.get("NextToken"),
            max_results=check_max_results(params.get("MaxResults", 10)),
        )
        summaries = [
            self._package_identity(doc)
            | {
                "ModelPackageDescription": doc["fields"].get("ModelPackageDescription"),
                "CreationTime": doc["created"],
                "ModelPackageStatus": "Completed",
                "ModelApprovalStatus": doc["fields"].get("ModelApprovalStatus"),
            }
            for doc in page
        ]
        return summaries, token

    def update_package(self, params: dict[str, Any]) -> str:
        """UpdateModelPackage: approval, its description, metadata added/removed, specs replaced."""
        if "ModelApprovalStatus" in params:
            check_choice(params["ModelApprovalStatus"], APPROVAL_STATUSES, "modelApprovalStatus")
        added = params.get("CustomerMetadataProperties", {})
        removed = params.get("CustomerMetadataPropertiesToRemove", [])
        _check_metadata(added)
        both = sorted(set(added) & set(removed))
        if both:
            raise validation_error(
                f"CustomerMetadataProperties keys cannot also be removed in the same request: {both}"
            )
        with self.store.transaction():
            key, doc = self._package(params["ModelPackageArn"])
            fields = doc["fields"]
            if "ModelApprovalStatus" in params:
                if doc["group"] is None:
                    raise validation_error("ModelApprovalStatus applies to versioned model packages only")
                fields["ModelApprovalStatus"] = params["ModelApprovalStatus"]
            if "ApprovalDescription" in params:
                doc["approval_description"] = params["ApprovalDescription"]
            metadata = {**fields.get("CustomerMetadataProperties", {}), **added}
            for name in removed:
                metadata.pop(name, None)
            if metadata:
                fields["CustomerMetadataProperties"] = metadata
            else:
                fields.pop("CustomerMetadataProperties", None)
            if params.get("AdditionalInferenceSpecificationsToAdd"):
                fields["AdditionalInferenceSpecifications"] = [
                    *fields.get("AdditionalInferenceSpecifications", []),
                    *params["AdditionalInferenceSpecificationsToAdd"],
                ]
            for replaced in (
                "InferenceSpecification",
                "SourceUri",
                "ModelCard",
                "ModelLifeCycle",
                "ModelPackageRegistrationType",
            ):
                if replaced in params:
                    fields[replaced] = params[replaced]
            doc["modified"] = now()
            self.store.put(PACKAGE_KIND, key, doc)
        return doc["arn"]

    # --- tags --------------------------------------------------------------------------------------

    def has(self, resource_type: str, resource_id: str) -> bool:
        """Whether an ARN's resource exists (for AddTags, ListTags, DeleteTags)."""
        if resource_type == "model-package-group":
            return self.store.get(GROUP_KIND, resource_id.lower()) is not None
        if resource_type == "model-package":
            try:
                self._package(resource_id)
            except ServiceError:
                return False
            return True
        return False


def _check_metadata(properties: dict[str, str]) -> None:
    for key, value in properties.items():
        if not 1 <= len(key) <= 128 or not 1 <= len(value) <= 256:
            raise validation_error(
                f"CustomerMetadataProperties keys must be 1-128 and values 1-256 characters long: {key!r}"
            )
