"""How Lambda's resources sit in the store: their kinds and keys, and what a version freezes.

    lambda/function  <name>               {"latest": <$LATEST config>, "active": <what $LATEST runs>,
                                           "next_version": n, "published": {...}, "tags", "policy"}
    lambda/version   <name>:<%010d>       <config of a published version>
    lambda/alias     <name>:<alias>       <alias configuration>
    lambda/code      <sha256 hex>         the deployment packages (code_store.py)

A config is boto3's FunctionConfiguration plus "_code", the zip's sha256 in hex (code_store.py).
"""

from __future__ import annotations

import uuid
from typing import Any

FUNCTION_KIND = "lambda/function"
VERSION_KIND = "lambda/version"
ALIAS_KIND = "lambda/alias"

# Settings a published version freezes, and whose change makes PublishVersion publish a new version.
PUBLISHED_SETTINGS = (
    "CodeSha256",
    "Runtime",
    "Handler",
    "Role",
    "Timeout",
    "MemorySize",
    "Environment",
    "Description",
    "TracingConfig",
    "EphemeralStorage",
    "LoggingConfig",
)


def version_key(name: str, version: str) -> str:
    return f"{name}:{int(version):010d}"


def new_revision() -> str:
    return str(uuid.uuid4())


def public(config: dict[str, Any]) -> dict[str, Any]:
    """A stored config as the API shows it: without localcloud's own "_" fields."""
    return {key: value for key, value in config.items() if not key.startswith("_")}
