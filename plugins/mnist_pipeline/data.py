"""The data step: find new incoming batches, validate them, quarantine bad ones, snapshot what a run
trains on, and (once the run deployed) mark them consumed.

The life of a nightly batch ``data/incoming/batch-NNNN.npz``:

1. :func:`find_new_batches` lists it while no successful run has consumed it.
2. :func:`validate_batches` validates it (Great Expectations, :mod:`data_checks`, through
   :func:`check_batches`): accepted, or moved by :func:`quarantine_batch` to
   ``data/quarantine/<run>/<batch>.<sha256>.npz`` with its validation report beside it. The move
   never loses bytes: the copy is made from, and checked against, exactly the bytes that were
   validated (their ETag), and the incoming object is deleted only if it still is those bytes
   (a conditional delete); a batch re-uploaded meanwhile stays in incoming for the next run. A
   file that is not a shard, or is too big or hostile to read (see :mod:`model_code.shards`),
   is quarantined the same way, never crashed on.
3. :func:`write_snapshot` writes the run's immutable training snapshot: every base shard, every
   batch earlier successful runs consumed, and this run's accepted batches, each with its sha256.
   Beside it, a SageMaker ``ManifestFile`` lists the same keys, so the training job reads exactly
   those objects without copying them.
4. When the run deployed, :func:`mark_consumed` (the DAG's ``mark_batches_consumed`` task) adds the snapshot's batches to
   ``snapshots/consumed.json``. A run that fails or is rejected consumes nothing, so its batches
   are found again by the next run.

Why an index rather than listing earlier runs' audits: one small object to read per run, and it
changes only on success. Marking is idempotent (a key already there keeps the run that consumed it
first). Read-modify-write is safe because the DAG runs one run at a time (``max_active_runs=1``).

Accepted batches stay in ``incoming/``: later snapshots name them there, by key and sha256.
"""

from __future__ import annotations

import hashlib
import json
import logging
import posixpath
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import numpy as np
from botocore.exceptions import ClientError

from mnist_pipeline import s3io
from mnist_pipeline.config import PipelineConfig
from model_code.shards import MAX_SHARD_BYTES, SHARD_SUFFIX, ShardError, load_shard_bytes, sha256_bytes

log = logging.getLogger(__name__)

BATCH_NAME = re.compile(r"^batch-\d{4}\.npz$")
MANIFEST_NAME = "manifest.json"
TRAIN_MANIFEST_NAME = "train.manifest"

# check(images, labels, batch_name) -> report; report["success"] says whether the batch is accepted.
BatchCheck = Callable[..., dict]


class LakeError(RuntimeError):
    """The lake is not in the state the pipeline needs; the message says which object and why."""


# --- discovery -----------------------------------------------------------------------------


def read_consumed(s3, config: PipelineConfig) -> dict[str, dict]:
    """Batches consumed by successful runs: key → {"sha256", "rows", "run_id"}."""
    index = s3io.get_json(s3, config.bucket, config.consumed_index_key, default={"batches": {}})
    return index["batches"]


def find_new_batches(s3, config: PipelineConfig, run_id: str | None = None) -> dict:
    """Incoming batches no successful run has consumed yet, oldest first.

    The batches that ``run_id`` itself consumed count as new for it: a successful run that is
    cleared and run again finds the same batches, so it repeats the same run (the same snapshot,
    job, package and version) instead of ending "nothing to do" and overwriting its own audit.

    Returns ``{"new": [key, ...], "consumed": [key, ...], "ignored": [key, ...]}``; ``ignored``
    holds objects under the incoming prefix not named ``batch-NNNN.npz`` (logged, left alone).
    """
    consumed = read_consumed(s3, config)
    new, seen, ignored = [], [], []
    for item in s3io.list_keys(s3, config.bucket, config.incoming_prefix, recursive=False):
        key = item["Key"]
        if not BATCH_NAME.match(posixpath.basename(key)):
            ignored.append(key)
        elif key in consumed and (run_id is None or consumed[key]["run_id"] != run_id):
            seen.append(key)
        else:
            new.append(key)
    if ignored:
        log.warning("ignoring objects in %s that are not batch-NNNN.npz: %s", config.incoming_prefix, ignored)
    log.info("incoming batches: %d new %s, %d already consumed", len(new), new, len(seen))
    return {"new": new, "consumed": seen, "ignored": ignored}


# --- reading shards ------------------------------------------------------------------------


def read_shard_object(s3, bucket: str, key: str, expected_sha256: str | None = None):
    """Download and parse one shard; returns (images, labels, sha256). Raises ShardError if bad.

    At most :data:`~model_code.shards.MAX_SHARD_BYTES` are read, whatever the object's size.
    """
    where = f"s3://{bucket}/{key}"
    try:
        data = s3io.get_bytes(s3, bucket, key, max_bytes=MAX_SHARD_BYTES)
    except s3io.ObjectTooLarge:
        raise ShardError(f"{where}: larger than {MAX_SHARD_BYTES} bytes, the most a shard may be") from None
    images, labels = load_shard_bytes(data, where=where, expected_sha256=expected_sha256)
    return images, labels, sha256_bytes(data)


@dataclass(frozen=True)
class IncomingBatch:
    """One incoming object as it was read: its bytes (None when over the shard size limit, which are
    hashed but not kept), and the identity of exactly those bytes (ETag, size, sha256)."""

    key: str
    etag: str
    size: int
    sha256: str
    data: bytes | None


def fetch_batch(s3, bucket: str, key: str) -> IncomingBatch | None:
    """Read an incoming object in one GET (memory bounded by the shard size limit); None if gone."""
    try:
        response = s3.get_object(Bucket=bucket, Key=key)
    except ClientError as error:
        if s3io.is_not_found(error):
            return None
        raise
    digest, kept, size = hashlib.sha256(), [], 0
    for chunk in s3io.chunks(response["Body"]):
        digest.update(chunk)
        size += len(chunk)
        if size <= MAX_SHARD_BYTES:
            kept.append(chunk)
    data = b"".join(kept) if size <= MAX_SHARD_BYTES else None
    return IncomingBatch(key, response["ETag"], size, digest.hexdigest(), data)


def describe_shard(s3, bucket: str, key: str, expected_sha256: str | None = None) -> dict:
    """``{"key", "uri", "sha256", "rows"}`` of a shard, read and verified."""
    _, labels, sha = read_shard_object(s3, bucket, key, expected_sha256)
    return {"key": key, "uri": f"s3://{bucket}/{key}", "sha256": sha, "rows": int(len(labels))}


def shard_keys(s3, bucket: str, prefix: str) -> list[str]:
    return [item["Key"] for item in s3io.list_keys(s3, bucket, prefix) if item["Key"].endswith(SHARD_SUFFIX)]


def read_shards(s3, bucket: str, prefix: str):
    """Every shard under ``prefix``, concatenated: (images, labels, [{"key", "sha256", "rows"}])."""
    keys = shard_keys(s3, bucket, prefix)
    if not keys:
        raise LakeError(f"no {SHARD_SUFFIX} shards under s3://{bucket}/{prefix}")
    parts = [read_shard_object(s3, bucket, key) for key in keys]
    images = np.concatenate([images for images, _, _ in parts])
    labels = np.concatenate([labels for _, labels, _ in parts])
    described = [
        {"key": key, "sha256": sha, "rows": int(len(labels_))}
        for key, (_, labels_, sha) in zip(keys, parts, strict=True)
    ]
    return images, labels, described


# --- validation and quarantine -------------------------------------------------------------


def check_batches(s3, config: PipelineConfig, run_id: str, keys: Iterable[str], check: BatchCheck) -> dict:
    """Validate each batch; quarantine those that fail. Safe to re-run for the same run.

    :param keys: incoming batch keys, from :func:`find_new_batches`.
    :param check: ``check(images, labels, batch_name) -> report``; the batch is accepted when
        ``report["success"]`` is true. The report (JSON) is stored beside a quarantined batch.
        It only sees files that parsed as shards; others are quarantined with the parse error.
    :return: ``{"accepted": [{"key", "uri", "sha256", "rows"}], "quarantined": [{"key", "sha256",
        "quarantine_key", "report_key", "reasons"}]}``.
    """
    accepted, quarantined = [], []
    for key in keys:
        name = posixpath.basename(key).removesuffix(SHARD_SUFFIX)
        batch = fetch_batch(s3, config.bucket, key)
        if batch is None:  # a retry: quarantined by an earlier try of this run
            moved = _already_quarantined(s3, config, run_id, key)
            if not moved:
                raise LakeError(
                    f"batch {config.s3_uri(key)} is neither in incoming nor in "
                    f"{config.s3_uri(config.run_quarantine_prefix(run_id))}"
                )
            quarantined.extend(moved)
            continue
        try:
            if batch.data is None:
                raise ShardError(
                    f"{config.s3_uri(key)}: {batch.size} bytes, more than the {MAX_SHARD_BYTES} a shard may be"
                )
            images, labels = load_shard_bytes(batch.data, where=config.s3_uri(key))
        except ShardError as error:
            report = {"batch_name": name, "success": False, "error": str(error)}
        else:
            report = check(images, labels, name)
            if report.get("success"):
                accepted.append(
                    {"key": key, "uri": config.s3_uri(key), "sha256": batch.sha256, "rows": int(len(labels))}
                )
                continue
        quarantined.append(quarantine_batch(s3, config, run_id, batch, report))
    log.info("accepted %s; quarantined %s", [a["key"] for a in accepted], [q["key"] for q in quarantined])
    return {"accepted": accepted, "quarantined": quarantined}


def quarantine_paths(config: PipelineConfig, run_id: str, key: str, sha256: str) -> tuple[str, str]:
    """(quarantine key, report key) for the bytes ``sha256`` of an incoming batch key.

    The content's sha256 is in the name, so two different files that arrived under the same
    batch name never overwrite each other in quarantine.
    """
    stem = posixpath.basename(key).removesuffix(SHARD_SUFFIX)
    destination = f"{config.run_quarantine_prefix(run_id)}{stem}.{sha256}{SHARD_SUFFIX}"
    return destination, destination.removesuffix(SHARD_SUFFIX) + ".report.json"


def quarantine_batch(s3, config: PipelineConfig, run_id: str, batch: IncomingBatch, report: dict) -> dict:
    """Move a failed batch to the run's quarantine prefix with its report beside it; lose nothing.

    The report is written first; the copy is made only from the validated bytes (CopySourceIfMatch
    their ETag) and checked to hold them (sha256); only then is the incoming object deleted, and
    only if it still holds them (IfMatch): bytes that arrived under that key meanwhile stay in
    incoming, to be validated by the next run. Re-running after any step finishes the move.
    """
    bucket, key = config.bucket, batch.key
    destination, report_key = quarantine_paths(config, run_id, key, batch.sha256)
    s3io.put_json(
        s3, bucket, report_key, {"run_id": run_id, "batch": key, "sha256": batch.sha256, "report": report}
    )
    try:
        s3.copy_object(
            Bucket=bucket,
            Key=destination,
            CopySource={"Bucket": bucket, "Key": key},
            CopySourceIfMatch=batch.etag,
        )
    except ClientError as error:
        if error.response["Error"]["Code"] in ("PreconditionFailed", "412"):
            raise LakeError(
                f"batch {config.s3_uri(key)} changed while it was being validated; it was left in incoming "
                "and a retry validates its new bytes"
            ) from error
        raise
    copied = _sha256_of(s3, bucket, destination)
    if copied != batch.sha256:
        # Not the validated bytes (a store that ignores CopySourceIfMatch): no copy under their name.
        s3.delete_object(Bucket=bucket, Key=destination)
        raise LakeError(
            f"copy of {config.s3_uri(key)} to {config.s3_uri(destination)} holds sha256 {copied}, not the "
            f"validated {batch.sha256}; the batch was left in incoming"
        )
    try:
        s3.delete_object(Bucket=bucket, Key=key, IfMatch=batch.etag)
    except ClientError as error:
        if error.response["Error"]["Code"] not in ("PreconditionFailed", "412", "NoSuchKey", "404"):
            raise
        log.warning(
            "%s was replaced after its old bytes were quarantined; the new bytes stay in incoming", key
        )
    log.warning("quarantined %s → %s: %s", key, destination, "; ".join(failure_reasons(report)))
    return _quarantined(key, batch.sha256, destination, report_key, report)


def _sha256_of(s3, bucket: str, key: str) -> str:
    digest = hashlib.sha256()
    for chunk in s3io.chunks(s3.get_object(Bucket=bucket, Key=key)["Body"]):
        digest.update(chunk)
    return digest.hexdigest()


def _already_quarantined(s3, config: PipelineConfig, run_id: str, key: str) -> list[dict]:
    """What earlier tries of this run quarantined from ``key`` (found by their reports)."""
    stem = posixpath.basename(key).removesuffix(SHARD_SUFFIX)
    prefix = f"{config.run_quarantine_prefix(run_id)}{stem}."
    moved = []
    for item in s3io.list_keys(s3, config.bucket, prefix):
        report_key = item["Key"]
        if not report_key.endswith(".report.json"):
            continue
        destination = report_key.removesuffix(".report.json") + SHARD_SUFFIX
        if not s3io.exists(s3, config.bucket, destination):
            continue  # the report of a move that never copied: the batch was left in incoming
        stored = s3io.get_json(s3, config.bucket, report_key)
        if stored.get("batch") == key:
            moved.append(_quarantined(key, stored["sha256"], destination, report_key, stored["report"]))
    return moved


def _quarantined(key: str, sha256: str, destination: str, report_key: str, report: dict) -> dict:
    return {
        "key": key,
        "sha256": sha256,
        "quarantine_key": destination,
        "report_key": report_key,
        "reasons": failure_reasons(report),
    }


def failure_reasons(report: dict) -> list[str]:
    """Short reasons from a validation report (``data_checks`` ValidationResult.to_dict() shape)."""
    if report.get("error"):
        return [report["error"]]
    reasons = [
        f"{item.get('expectation')}: observed {item.get('observed')!r}, expected {item.get('expected')!r}"
        for item in report.get("failed", [])
    ]
    if report.get("skipped"):
        reasons.append(f"{len(report['skipped'])} content checks skipped (structure is wrong)")
    return reasons or ["failed validation"]


def validate_batches(s3, config: PipelineConfig, run_id: str, keys: list[str]) -> dict:
    """Validate incoming batches with ``data_checks`` against the lake's reference statistics;
    quarantine the failures (:func:`check_batches`)."""
    if not keys:
        return {"accepted": [], "quarantined": []}
    from data_checks.reference import Reference  # Great Expectations: heavy, task time only
    from data_checks.validation import validate_batch

    reference = Reference.from_json(s3io.get_bytes(s3, config.bucket, config.reference_key))

    def check(images, labels, name: str) -> dict:
        return validate_batch(images, labels, reference, batch_name=name).to_dict()

    return check_batches(s3, config, run_id, keys, check)


def has_work(checked: Mapping, force_retrain: bool, *, drift: bool = False) -> bool:
    """Train when a batch was accepted, when asked to anyway, or when live traffic drifted (so the
    champion is re-evaluated, and a candidate trained, on the data there is)."""
    accepted = len(checked.get("accepted", []))
    if accepted:
        log.info("%d new batch(es) accepted: training.", accepted)
    elif force_retrain:
        log.info("No new data, but force_retrain is set: training.")
    elif drift:
        log.info("No new data, but live traffic drifted (see monitor_traffic): training.")
    else:
        log.info("Nothing to do: no new accepted batches, no drift, and force_retrain is off.")
    return bool(accepted) or bool(force_retrain) or bool(drift)


# --- snapshots -----------------------------------------------------------------------------


def snapshot_sha256(shards: Iterable[dict]) -> str:
    """The snapshot's identity: sha256 over its sorted (key, shard sha256) pairs."""
    pairs = sorted((shard["key"], shard["sha256"]) for shard in shards)
    return hashlib.sha256(json.dumps(pairs, separators=(",", ":")).encode()).hexdigest()


def write_snapshot(s3, config: PipelineConfig, run_id: str, accepted: Iterable[dict]) -> dict:
    """Write the run's training snapshot and its SageMaker manifest; return a summary for XCom.

    The snapshot is base shards + batches consumed by earlier successful runs + ``accepted`` (this
    run's, from :func:`check_batches`). Every shard is read and hashed now; an accepted batch
    whose bytes changed since validation, or a consumed one that changed since it was consumed,
    fails the task. A snapshot is immutable: re-running with the same shards returns it; with
    different shards it fails rather than changing what a training job may already be reading.

    :return: ``{"run_id", "sha256", "rows", "shards", "new_batches", "manifest_uri",
        "train_manifest_uri"}``.
    """
    accepted = list(accepted)
    consumed = read_consumed(s3, config)
    expected = {key: entry["sha256"] for key, entry in consumed.items()}
    expected.update({batch["key"]: batch["sha256"] for batch in accepted})
    keys = shard_keys(s3, config.bucket, config.base_prefix)
    if not keys:
        raise LakeError(f"no base shards under {config.s3_uri(config.base_prefix)}; seed the lake first")
    keys += sorted(expected)
    try:
        shards = [describe_shard(s3, config.bucket, key, expected.get(key)) for key in keys]
    except FileNotFoundError as error:
        raise LakeError(f"a shard of the snapshot is missing: {error}") from error
    sha = snapshot_sha256(shards)
    manifest = {
        "run_id": run_id,
        "sha256": sha,
        "rows": sum(shard["rows"] for shard in shards),
        "shards": shards,
        "new_batches": sorted(batch["key"] for batch in accepted),
    }
    prefix = config.snapshot_prefix(run_id)
    manifest_key, train_manifest_key = prefix + MANIFEST_NAME, prefix + TRAIN_MANIFEST_NAME
    existing = s3io.get_json(s3, config.bucket, manifest_key, default=None)
    if existing is not None and existing["sha256"] != sha:
        raise LakeError(
            f"run {run_id!r} already has snapshot {existing['sha256'][:12]} at {config.s3_uri(manifest_key)}, "
            f"but its shards now give {sha[:12]}; snapshots are immutable. Trigger a new run, or delete "
            "that snapshot if no training job used it."
        )
    # The SageMaker manifest first: manifest.json is the commit marker a retry checks.
    train_manifest = [{"prefix": f"s3://{config.bucket}/"}] + [shard["key"] for shard in shards]
    s3io.put_json(s3, config.bucket, train_manifest_key, train_manifest)
    if existing is None:
        s3io.put_json(s3, config.bucket, manifest_key, manifest)
    else:
        manifest = existing
    log.info("snapshot %s: %d shards, %d rows", sha[:12], len(manifest["shards"]), manifest["rows"])
    return {
        "run_id": run_id,
        "sha256": manifest["sha256"],
        "rows": manifest["rows"],
        "shards": len(manifest["shards"]),
        "new_batches": manifest["new_batches"],
        "manifest_uri": config.s3_uri(manifest_key),
        "train_manifest_uri": config.s3_uri(train_manifest_key),
    }


def read_snapshot(s3, config: PipelineConfig, run_id: str) -> dict:
    return s3io.get_json(s3, config.bucket, config.snapshot_prefix(run_id) + MANIFEST_NAME)


def mark_consumed(s3, config: PipelineConfig, run_id: str) -> list[str]:
    """Record the run's snapshot batches as consumed (call only when the run succeeded).

    Returns the keys newly marked. A key already in the index keeps its first run; nothing is
    written when nothing changes, so calling this twice is harmless.
    """
    snapshot = read_snapshot(s3, config, run_id)
    index = s3io.get_json(s3, config.bucket, config.consumed_index_key, default={"batches": {}})
    added = []
    for shard in snapshot["shards"]:
        key = shard["key"]
        if key.startswith(config.incoming_prefix) and key not in index["batches"]:
            index["batches"][key] = {"sha256": shard["sha256"], "rows": shard["rows"], "run_id": run_id}
            added.append(key)
    if added:
        s3io.put_json(s3, config.bucket, config.consumed_index_key, index)
    log.info("marked consumed by %s: %s", run_id, added)
    return added
