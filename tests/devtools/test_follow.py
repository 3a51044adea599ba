"""What the demo prints while it follows a run."""

from __future__ import annotations

from devtools.follow import epoch_lines, state_changes


def test_progress_shows_each_task_state_change_once():
    before = {"load_settings": "success", "train.train_model": "queued", "deploy.smoke_test": None}
    after = {"load_settings": "success", "train.train_model": "running", "deploy.smoke_test": None}
    assert state_changes({}, before) == ["load_settings: success", "train.train_model: queued"]
    assert state_changes(before, after) == ["train.train_model: queued → running"]
    assert state_changes(after, after) == []


def test_progress_shows_the_training_epochs_from_the_job_log():
    lines = [
        "training on 52000 images from 6 shard(s)",
        "METRICS epoch=1/3 train_loss=0.201000 test_loss=0.060000 test_accuracy=0.981200 seconds=31.2",
        "METRICS epoch=2/3 train_loss=0.051000 test_loss=0.040000 test_accuracy=0.990300",
    ]
    assert epoch_lines(lines) == [
        "epoch 1/3: train loss 0.201000, test accuracy 98.12% (31.2 s)",
        "epoch 2/3: train loss 0.051000, test accuracy 99.03%",
    ]
