"""The lake in S3 (moto): new batches are found once, bad ones quarantined without loss, snapshots are exact."""

import hashlib
import json

import pytest

from mnist_pipeline import data
from model_code.shards import ShardError
from tests.fixtures.plugin_aws import put_shard, random_digits

RUN_1 = "scheduled__2025-01-01T02:00:00+00:00"
RUN_2 = "scheduled__2025-01-02T02:00:00+00:00"


def accept_all(images, labels, name):
    return {"batch_name": name, "success": True, "failed": []}


def reject_label_seven_heavy(images, labels, name):
    """A stand-in check with a named failure, in data_checks' report shape."""
    share = float((labels == 7).mean())
    if share > 0.5:
        return {
            "batch_name": name,
            "success": False,
            "failed": [{"expectation": "class_proportions", "observed": share, "expected": "<= 0.5"}],
        }
    return accept_all(images, labels, name)


@pytest.fixture
def lake_in_s3(s3, pipeline_config):
    """Two base shards, a holdout, three clean incoming batches."""
    bucket = pipeline_config.bucket
    shas = {}
    for index in range(2):
        key = f"data/base/base-{index:05d}.npz"
        shas[key] = put_shard(s3, bucket, key, *random_digits(index, 50))
    put_shard(s3, bucket, "data/holdout/holdout-00000.npz", *random_digits(99, 40))
    for number in range(1, 4):
        key = f"data/incoming/batch-{number:04d}.npz"
        shas[key] = put_shard(s3, bucket, key, *random_digits(10 + number, 20))
    return shas


def keys_under(s3, bucket, prefix):
    return sorted(
        item["Key"] for item in s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
    )


def test_new_batches_are_listed_oldest_first_and_other_objects_ignored(s3, pipeline_config, lake_in_s3):
    s3.put_object(Bucket=pipeline_config.bucket, Key="data/incoming/README.txt", Body=b"drop batches here")
    found = data.find_new_batches(s3, pipeline_config)
    assert found["new"] == [f"data/incoming/batch-{n:04d}.npz" for n in (1, 2, 3)]
    assert found["ignored"] == ["data/incoming/README.txt"]


def test_a_batch_consumed_by_a_successful_run_is_not_found_again(s3, pipeline_config, lake_in_s3):
    checked = data.check_batches(s3, pipeline_config, RUN_1, ["data/incoming/batch-0001.npz"], accept_all)
    data.write_snapshot(s3, pipeline_config, RUN_1, checked["accepted"])
    assert (
        "data/incoming/batch-0001.npz" in data.find_new_batches(s3, pipeline_config)["new"]
    )  # not yet successful

    assert data.mark_consumed(s3, pipeline_config, RUN_1) == ["data/incoming/batch-0001.npz"]
    found = data.find_new_batches(s3, pipeline_config)
    assert found["new"] == ["data/incoming/batch-0002.npz", "data/incoming/batch-0003.npz"]
    assert found["consumed"] == ["data/incoming/batch-0001.npz"]
    assert data.mark_consumed(s3, pipeline_config, RUN_1) == []  # idempotent


def test_a_successful_run_cleared_and_run_again_finds_its_own_batches_again(s3, pipeline_config, lake_in_s3):
    checked = data.check_batches(s3, pipeline_config, RUN_1, ["data/incoming/batch-0001.npz"], accept_all)
    data.write_snapshot(s3, pipeline_config, RUN_1, checked["accepted"])
    data.mark_consumed(s3, pipeline_config, RUN_1)

    again = data.find_new_batches(s3, pipeline_config, RUN_1)  # the same run, cleared
    assert again["new"][0] == "data/incoming/batch-0001.npz"
    assert "data/incoming/batch-0001.npz" not in data.find_new_batches(s3, pipeline_config, RUN_2)["new"]


def test_a_failing_batch_is_moved_to_quarantine_with_its_report(s3, pipeline_config, lake_in_s3):
    bucket = pipeline_config.bucket
    images, labels = random_digits(5, 20)
    labels[:] = 7
    put_shard(s3, bucket, "data/incoming/batch-0004.npz", images, labels)
    s3.put_object(Bucket=bucket, Key="data/incoming/batch-0005.npz", Body=b"not a shard")
    keys = data.find_new_batches(s3, pipeline_config)["new"]

    checked = data.check_batches(s3, pipeline_config, RUN_1, keys, reject_label_seven_heavy)

    assert [batch["key"] for batch in checked["accepted"]] == keys[:3]
    assert [batch["sha256"] for batch in checked["accepted"]] == [lake_in_s3[key] for key in keys[:3]]
    bad, unreadable = checked["quarantined"]
    assert bad["reasons"] == ["class_proportions: observed 1.0, expected '<= 0.5'"]
    assert "not a readable .npz shard" in unreadable["reasons"][0]
    prefix = pipeline_config.run_quarantine_prefix(RUN_1)
    bad_sha, unreadable_sha = bad["sha256"], unreadable["sha256"]
    assert unreadable_sha == hashlib.sha256(b"not a shard").hexdigest()
    assert keys_under(s3, bucket, prefix) == sorted(
        prefix + name
        for name in (
            f"batch-0004.{bad_sha}.npz",
            f"batch-0004.{bad_sha}.report.json",
            f"batch-0005.{unreadable_sha}.npz",
            f"batch-0005.{unreadable_sha}.report.json",
        )
    )
    report = json.loads(s3.get_object(Bucket=bucket, Key=bad["report_key"])["Body"].read())
    assert report["run_id"] == RUN_1 and report["report"]["success"] is False
    assert s3.get_object(Bucket=bucket, Key=unreadable["quarantine_key"])["Body"].read() == b"not a shard"
    assert "data/incoming/batch-0004.npz" not in keys_under(s3, bucket, "data/incoming/")
    assert data.find_new_batches(s3, pipeline_config)["new"] == keys[:3]


def test_checking_again_for_the_same_run_gives_the_same_answer(s3, pipeline_config, lake_in_s3):
    images, labels = random_digits(5, 20)
    labels[:] = 7
    put_shard(s3, pipeline_config.bucket, "data/incoming/batch-0004.npz", images, labels)
    keys = data.find_new_batches(s3, pipeline_config)["new"]
    first = data.check_batches(s3, pipeline_config, RUN_1, keys, reject_label_seven_heavy)
    # A retry gets the keys from the first try's discovery, including the one now in quarantine.
    again = data.check_batches(s3, pipeline_config, RUN_1, keys, reject_label_seven_heavy)
    assert again == first


def test_a_quarantine_interrupted_after_the_copy_finishes_without_losing_the_batch(
    s3, pipeline_config, lake_in_s3
):
    bucket, key = pipeline_config.bucket, "data/incoming/batch-0002.npz"
    original = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    batch = data.fetch_batch(s3, bucket, key)
    destination, _ = data.quarantine_paths(pipeline_config, RUN_1, key, batch.sha256)
    s3.copy_object(Bucket=bucket, Key=destination, CopySource={"Bucket": bucket, "Key": key})  # crash here

    result = data.quarantine_batch(s3, pipeline_config, RUN_1, batch, {"success": False, "error": "bad"})

    assert result["reasons"] == ["bad"]
    assert s3.get_object(Bucket=bucket, Key=destination)["Body"].read() == original
    assert key not in keys_under(s3, bucket, "data/incoming/")


def test_bytes_uploaded_under_the_key_during_a_quarantine_stay_in_incoming(s3, pipeline_config, lake_in_s3):
    bucket, key = pipeline_config.bucket, "data/incoming/batch-0003.npz"
    batch = data.fetch_batch(s3, bucket, key)
    newer = put_shard(s3, bucket, key, *random_digits(77, 20))  # the producer re-uploads meanwhile

    with pytest.raises(data.LakeError, match="changed while it was being validated|holds sha256"):
        data.quarantine_batch(s3, pipeline_config, RUN_1, batch, {"success": False, "error": "bad"})

    # The new upload is in incoming, untouched, for the next run to validate; nothing is quarantined
    # under the old bytes' name.
    assert hashlib.sha256(s3.get_object(Bucket=bucket, Key=key)["Body"].read()).hexdigest() == newer
    destination, _ = data.quarantine_paths(pipeline_config, RUN_1, key, batch.sha256)
    assert destination not in keys_under(s3, bucket, pipeline_config.quarantine_prefix)


def test_the_incoming_batch_is_deleted_only_if_it_still_holds_the_quarantined_bytes(
    s3, pipeline_config, lake_in_s3, monkeypatch
):
    bucket, key = pipeline_config.bucket, "data/incoming/batch-0001.npz"
    batch = data.fetch_batch(s3, bucket, key)
    original_copy = s3.copy_object
    newer = {}

    def copy_then_reupload(**arguments):  # the producer re-uploads right after the copy
        answer = original_copy(**arguments)
        newer["sha"] = put_shard(s3, bucket, key, *random_digits(78, 20))
        return answer

    monkeypatch.setattr(s3, "copy_object", copy_then_reupload)
    result = data.quarantine_batch(s3, pipeline_config, RUN_1, batch, {"success": False, "error": "bad"})

    assert s3.get_object(Bucket=bucket, Key=result["quarantine_key"])["Body"].read() == batch.data
    assert hashlib.sha256(s3.get_object(Bucket=bucket, Key=key)["Body"].read()).hexdigest() == newer["sha"]


def test_poison_batches_are_quarantined_byte_identical_and_a_good_one_accepted(
    s3, pipeline_config, lake_in_s3
):
    from tests.fixtures.poison import NOT_A_SHARD, deflate_bomb_batch, huge_header_batch, truncated_batch

    bucket = pipeline_config.bucket
    poison = {
        "data/incoming/batch-0011.npz": truncated_batch(*random_digits(3, 20)),
        "data/incoming/batch-0012.npz": huge_header_batch(),
        "data/incoming/batch-0013.npz": deflate_bomb_batch(),
        "data/incoming/batch-0014.npz": NOT_A_SHARD,
    }
    for key, body in poison.items():
        s3.put_object(Bucket=bucket, Key=key, Body=body)
    keys = ["data/incoming/batch-0001.npz", *poison]

    checked = data.check_batches(s3, pipeline_config, RUN_1, keys, accept_all)

    assert [batch["key"] for batch in checked["accepted"]] == ["data/incoming/batch-0001.npz"]
    assert [batch["key"] for batch in checked["quarantined"]] == list(poison)
    for moved in checked["quarantined"]:
        kept = s3.get_object(Bucket=bucket, Key=moved["quarantine_key"])["Body"].read()
        assert kept == poison[moved["key"]], moved["key"]
        assert moved["reasons"] and moved["key"] not in keys_under(s3, bucket, "data/incoming/")
    assert "1000000000 images" in checked["quarantined"][1]["reasons"][0]
    assert "a shard holds at most 100000 images" in checked["quarantined"][2]["reasons"][0]


def test_an_object_over_the_shard_size_limit_is_quarantined_without_being_held_in_memory(
    s3, pipeline_config, lake_in_s3, monkeypatch
):
    monkeypatch.setattr(data, "MAX_SHARD_BYTES", 1000)
    bucket, key = pipeline_config.bucket, "data/incoming/batch-0015.npz"
    body = bytes(range(256)) * 20  # 5120 bytes
    s3.put_object(Bucket=bucket, Key=key, Body=body)

    checked = data.check_batches(s3, pipeline_config, RUN_1, [key], accept_all)

    (moved,) = checked["quarantined"]
    assert "5120 bytes, more than the 1000 a shard may be" in moved["reasons"][0]
    assert moved["sha256"] == hashlib.sha256(body).hexdigest()
    assert s3.get_object(Bucket=bucket, Key=moved["quarantine_key"])["Body"].read() == body


def test_the_snapshot_lists_base_consumed_and_accepted_shards_with_their_sha256(
    s3, pipeline_config, lake_in_s3
):
    bucket = pipeline_config.bucket
    first = data.check_batches(s3, pipeline_config, RUN_1, ["data/incoming/batch-0001.npz"], accept_all)
    data.write_snapshot(s3, pipeline_config, RUN_1, first["accepted"])
    data.mark_consumed(s3, pipeline_config, RUN_1)

    second = data.check_batches(s3, pipeline_config, RUN_2, ["data/incoming/batch-0002.npz"], accept_all)
    summary = data.write_snapshot(s3, pipeline_config, RUN_2, second["accepted"])

    manifest = data.read_snapshot(s3, pipeline_config, RUN_2)
    expected_keys = [
        "data/base/base-00000.npz",
        "data/base/base-00001.npz",
        "data/incoming/batch-0001.npz",
        "data/incoming/batch-0002.npz",
    ]
    assert [shard["key"] for shard in manifest["shards"]] == expected_keys
    assert {shard["key"]: shard["sha256"] for shard in manifest["shards"]} == {
        key: lake_in_s3[key] for key in expected_keys
    }
    assert manifest["rows"] == summary["rows"] == 50 + 50 + 20 + 20
    assert manifest["new_batches"] == ["data/incoming/batch-0002.npz"]
    assert summary["sha256"] == manifest["sha256"] == data.snapshot_sha256(manifest["shards"])

    _, train_manifest_key = summary["train_manifest_uri"].removeprefix("s3://").split("/", 1)
    train_manifest = json.loads(s3.get_object(Bucket=bucket, Key=train_manifest_key)["Body"].read())
    assert train_manifest == [{"prefix": f"s3://{bucket}/"}, *expected_keys]


def test_a_snapshot_is_immutable_but_rewriting_the_same_one_is_harmless(s3, pipeline_config, lake_in_s3):
    checked = data.check_batches(s3, pipeline_config, RUN_1, ["data/incoming/batch-0001.npz"], accept_all)
    first = data.write_snapshot(s3, pipeline_config, RUN_1, checked["accepted"])
    assert data.write_snapshot(s3, pipeline_config, RUN_1, checked["accepted"]) == first

    more = data.check_batches(s3, pipeline_config, RUN_1, ["data/incoming/batch-0002.npz"], accept_all)
    with pytest.raises(data.LakeError, match="already has snapshot .* snapshots are immutable"):
        data.write_snapshot(s3, pipeline_config, RUN_1, checked["accepted"] + more["accepted"])


def test_a_batch_that_changed_after_validation_is_not_snapshotted(s3, pipeline_config, lake_in_s3):
    checked = data.check_batches(s3, pipeline_config, RUN_1, ["data/incoming/batch-0001.npz"], accept_all)
    put_shard(s3, pipeline_config.bucket, "data/incoming/batch-0001.npz", *random_digits(77, 20))
    with pytest.raises(ShardError, match="batch-0001.npz: sha256 is .*, expected"):
        data.write_snapshot(s3, pipeline_config, RUN_1, checked["accepted"])


def test_a_snapshot_needs_base_shards(s3, pipeline_config):
    with pytest.raises(data.LakeError, match="no base shards under s3://mnist-pipeline-test/data/base/"):
        data.write_snapshot(s3, pipeline_config, RUN_1, [])


# --- is there work (the short-circuit) --------------------------------------------------------------


def test_work_means_an_accepted_batch_or_a_forced_retrain():
    assert data.has_work({"accepted": [{"key": "b1"}]}, force_retrain=False) is True
    assert data.has_work({"accepted": []}, force_retrain=True) is True
    assert data.has_work({"accepted": [], "quarantined": [{"key": "b2"}]}, force_retrain=False) is False
