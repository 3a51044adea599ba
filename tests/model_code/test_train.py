"""model_code/train.py keeps SageMaker's script-mode contract, run through the official toolkit.

The main job runs ``sagemaker-training``'s ``train`` entry point on a job directory laid out by
localcloud.sagemaker.runner, in quick mode on real MNIST (2000 training / 500 holdout images, one
epoch), and the tests check what SageMaker's users rely on: the three artifacts, a self-contained
ONNX graph with a dynamic batch that computes what torch computes, metrics a MetricDefinitions
regex reads from the log, the data lineage in the card, and an actionable FailureReason.
"""

import ast
import hashlib
import json
import re
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from onnx.external_data_helper import uses_external_data

from localcloud.sagemaker.runner import (
    collect_result,
    pack_model,
    prepare_job_dir,
    start_training,
    stop_training,
)
from model_code.metric_definitions import METRIC_DEFINITIONS, format_epoch_line
from model_code.net import MnistNet
from tests.fixtures.model import MODEL_CODE, run_train_script, write_channel

pytestmark = pytest.mark.slow

ARTIFACTS = ["model.onnx", "model.pt", "model_card.json"]


def metrics_in(lines: list[str]) -> dict[str, list[float]]:
    """Every value each MetricDefinitions regex finds in the log, as SageMaker collects them."""
    found = {definition["Name"]: [] for definition in METRIC_DEFINITIONS}
    for line in lines:
        for definition in METRIC_DEFINITIONS:
            match = re.search(definition["Regex"], line)
            if match:
                found[definition["Name"]].append(float(match.group(1)))
    return found


def run_job(job) -> tuple[int, list[str]]:
    with start_training(job) as proc:
        lines = list(proc.stdout)
    return proc.returncode, lines


@pytest.fixture(scope="module")
def quick_lake(mnist, tmp_path_factory) -> dict:
    """A small data lake: 2000 training images in two shards, 500 holdout images in one."""
    root = tmp_path_factory.mktemp("lake")
    train = write_channel(root / "train", mnist.train_images[:2000], mnist.train_labels[:2000], shards=2)
    test = write_channel(root / "test", mnist.test_images[:500], mnist.test_labels[:500])
    return {"train_dir": root / "train", "test_dir": root / "test", "train": train, "test": test}


@pytest.fixture(scope="module")
def toolkit_job(quick_lake, tmp_path_factory):
    """One quick training job run through the sagemaker-training toolkit: (job, exit code, log lines).

    The code arrives as the pipeline ships it to SageMaker: the sourcedir.tar.gz of model_code/.
    """
    from mnist_pipeline.train import pack_source_dir

    work_dir = tmp_path_factory.mktemp("jobs")
    source_tarball = work_dir / "sourcedir.tar.gz"
    source_tarball.write_bytes(pack_source_dir(MODEL_CODE)[0])
    job = prepare_job_dir(
        work_dir / "quick-job",
        job_name="quick-job-0001",
        hyperparameters={"epochs": "1", "max-train-samples": "2000", "seed": "3"},
        channels={"train": quick_lake["train_dir"], "test": quick_lake["test_dir"]},
        entry_point="train.py",
        submit_dir=str(source_tarball),
    )
    returncode, lines = run_job(job)
    return job, returncode, lines


def test_the_toolkit_job_succeeds_and_leaves_the_three_artifacts(toolkit_job):
    job, returncode, lines = toolkit_job
    assert returncode == 0, "".join(lines[-40:])
    assert collect_result(job) == (True, None)
    assert sorted(path.name for path in job.model_dir.iterdir()) == ARTIFACTS


def test_model_onnx_is_one_self_contained_file_with_a_dynamic_batch(toolkit_job):
    job, _, _ = toolkit_job
    model = onnx.load(str(job.model_dir / "model.onnx"), load_external_data=False)
    assert model.graph.initializer, "the weights must be in the graph"
    assert not [tensor.name for tensor in model.graph.initializer if uses_external_data(tensor)]
    [pixels] = model.graph.input
    batch, width = pixels.type.tensor_type.shape.dim
    assert (pixels.name, batch.dim_param, width.dim_value) == ("pixels", "batch", 784)
    assert [output.name for output in model.graph.output] == ["logits", "probabilities"]

    session = onnxruntime.InferenceSession(
        str(job.model_dir / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    for size in (1, 7):
        logits, probabilities = session.run(None, {"pixels": np.zeros((size, 784), np.float32)})
        assert logits.shape == probabilities.shape == (size, 10)
        np.testing.assert_allclose(probabilities.sum(axis=1), 1, atol=1e-5)


def test_onnx_and_the_torch_state_dict_agree_on_raw_holdout_pixels(toolkit_job, mnist):
    job, _, _ = toolkit_job
    net = MnistNet()
    net.load_state_dict(torch.load(job.model_dir / "model.pt", weights_only=True))
    net.eval()
    pixels = mnist.test_images[:500].reshape(-1, 784).astype(np.float32)
    with torch.no_grad():
        expected = net(torch.from_numpy(pixels)).numpy()
    session = onnxruntime.InferenceSession(
        str(job.model_dir / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    (logits,) = session.run(["logits"], {"pixels": pixels})
    assert np.abs(logits - expected).max() <= 1e-4
    card = json.loads((job.model_dir / "model_card.json").read_text())
    accuracy = float((logits.argmax(axis=1) == mnist.test_labels[:500]).mean())
    assert accuracy == pytest.approx(card["metrics"]["test_accuracy"])


def test_metric_definitions_read_the_epoch_line_from_the_job_log(toolkit_job):
    job, _, lines = toolkit_job
    card = json.loads((job.model_dir / "model_card.json").read_text())
    last = card["epochs"][-1]
    found = metrics_in(lines)
    assert found["train:loss"] == [pytest.approx(last["train_loss"], abs=1e-6)]
    assert found["test:loss"] == [pytest.approx(last["test_loss"], abs=1e-6)]
    assert found["test:accuracy"] == [pytest.approx(last["test_accuracy"], abs=1e-6)]


def test_the_model_card_records_lineage_hyperparameters_and_the_onnx_hash(toolkit_job, quick_lake):
    job, _, _ = toolkit_job
    card = json.loads((job.model_dir / "model_card.json").read_text())
    assert card["training_job"] == "quick-job-0001"
    for channel in ("train", "test"):
        recorded = {shard["file"]: shard["sha256"] for shard in card["data"][channel]["shards"]}
        assert recorded == quick_lake[channel]
    assert card["data"]["train"]["samples_used"] == 2000
    assert card["hyperparameters"]["epochs"] == 1
    assert card["hyperparameters"]["seed"] == 3
    onnx_bytes = (job.model_dir / "model.onnx").read_bytes()
    assert card["onnx"]["sha256"] == hashlib.sha256(onnx_bytes).hexdigest()
    assert card["onnx"]["parity_max_abs_diff"] <= 1e-4
    assert card["output"] == {"name": "probabilities", "kind": "probabilities"}
    assert card["libraries"]["torch"] and card["libraries"]["onnxruntime"]
    assert len(card["epochs"]) == 1


def test_pack_model_puts_the_artifacts_at_the_root_of_model_tar_gz(toolkit_job):
    job, _, _ = toolkit_job
    archive = pack_model(job)
    with tarfile.open(archive) as tar:
        assert sorted(tar.getnames()) == ARTIFACTS
        packed_card = tar.extractfile("model_card.json").read()
    assert packed_card == (job.model_dir / "model_card.json").read_bytes()
    first = archive.read_bytes()
    assert pack_model(job).read_bytes() == first, "the same model must pack to the same bytes"


def test_a_corrupt_shard_fails_the_job_with_a_reason_naming_the_shard(quick_lake, tmp_path):
    train_dir = tmp_path / "train"
    write_channel(train_dir, np.zeros((10, 28, 28), np.uint8), np.zeros(10, np.uint8))
    good = (train_dir / "part-00000.npz").read_bytes()
    (train_dir / "nested").mkdir()
    (train_dir / "nested" / "part-00001.npz").write_bytes(good[: len(good) // 2])
    job = prepare_job_dir(
        tmp_path / "job",
        job_name="corrupt-job",
        hyperparameters={"epochs": "1"},
        channels={"train": train_dir, "test": quick_lake["test_dir"]},
        entry_point="train.py",
        submit_dir=str(MODEL_CODE),
    )
    returncode, lines = run_job(job)
    assert returncode != 0
    succeeded, reason = collect_result(job)
    assert not succeeded
    assert reason.startswith("AlgorithmError: train shard nested/part-00001.npz: not a readable .npz shard")
    assert list(job.model_dir.iterdir()) == []
    assert any("nested/part-00001.npz" in line for line in lines), "the reason must be in the job log too"


@pytest.mark.parametrize(
    ("images", "labels", "expected"),
    [
        (
            np.zeros((4, 28, 27), np.uint8),
            np.zeros(4, np.uint8),
            "images must have shape [N, 28, 28], got [4, 28, 27]",
        ),
        (np.zeros((4, 28, 28), np.float32), np.zeros(4, np.uint8), "must be uint8, got float32 and uint8"),
        (
            np.zeros((4, 28, 28), np.uint8),
            np.array([1, 2, 10, 3], np.uint8),
            "labels must be digits 0..9, found 10",
        ),
        (np.zeros((4, 28, 28), np.uint8), np.zeros(3, np.uint8), "labels must have shape [4]"),
        (np.array([None] * 4, dtype=object), np.zeros(4, np.uint8), "not a readable .npz shard"),
    ],
    ids=["wrong-shape", "float-pixels", "label-out-of-range", "label-count", "pickled-objects"],
)
def test_a_bad_shard_is_named_in_the_failure_file(quick_lake, tmp_path, images, labels, expected):
    train_dir = tmp_path / "train"
    train_dir.mkdir()
    np.savez(train_dir / "bad.npz", images=images, labels=labels)
    result = run_train_script(tmp_path, train_dir=train_dir, test_dir=quick_lake["test_dir"])
    assert result.returncode == 1
    failure = (tmp_path / "output" / "failure").read_text()
    assert failure.startswith("train shard bad.npz: ")
    assert expected in failure
    assert expected in result.stderr


@pytest.mark.parametrize(
    ("args", "test_channel", "expected"),
    [
        ([], None, "SM_CHANNEL_TEST is not set: the job needs a 'test' input channel"),
        ([], "empty", "holds no .npz shards"),
        (["--epochs", "0"], "holdout", "bad hyperparameters: argument --epochs: must be a positive integer"),
        (["--augment", "maybe"], "holdout", "argument --augment: must be true or false, got 'maybe'"),
        (["--epocs", "3"], "holdout", "unrecognized arguments: --epocs 3"),
    ],
    ids=["no-test-channel", "empty-test-channel", "zero-epochs", "bad-boolean", "misspelt-hyperparameter"],
)
def test_a_misconfigured_job_fails_before_training_with_a_reason(
    quick_lake, tmp_path, args, test_channel, expected
):
    (tmp_path / "empty").mkdir()
    test_dir = {None: None, "empty": tmp_path / "empty", "holdout": quick_lake["test_dir"]}[test_channel]
    result = run_train_script(tmp_path, *args, train_dir=quick_lake["train_dir"], test_dir=test_dir)
    assert result.returncode == 1
    assert expected in (tmp_path / "output" / "failure").read_text()
    assert "METRICS" not in result.stdout


def test_training_on_cpu_is_deterministic_for_a_seed(quick_lake, tmp_path):
    def train(run: str, seed: str) -> tuple[dict, dict]:
        result = run_train_script(
            tmp_path / run,
            *("--epochs", "1", "--max-train-samples", "1000", "--max-test-samples", "300", "--seed", seed),
            train_dir=quick_lake["train_dir"],
            test_dir=quick_lake["test_dir"],
        )
        assert result.returncode == 0, result.stderr
        model_dir = tmp_path / run / "model"
        card = json.loads((model_dir / "model_card.json").read_text())
        return torch.load(model_dir / "model.pt", weights_only=True), card["epochs"][-1]

    weights, metrics = train("first", seed="5")
    again_weights, again_metrics = train("again", seed="5")
    other_weights, _ = train("other", seed="6")
    assert weights.keys() == again_weights.keys()
    assert all(torch.equal(weights[name], again_weights[name]) for name in weights)
    assert {k: v for k, v in metrics.items() if k != "seconds"} == {
        k: v for k, v in again_metrics.items() if k != "seconds"
    }
    assert not torch.equal(weights["features.0.weight"], other_weights["features.0.weight"])


def test_the_quick_model_fixture_is_usefully_accurate(trained_model_dir):
    card = json.loads((trained_model_dir / "model_card.json").read_text())
    assert card["data"]["test"]["samples_used"] == 10_000
    assert card["metrics"]["test_accuracy"] >= 0.97


def test_metric_definitions_parse_the_line_train_py_prints():
    line = format_epoch_line(epoch=2, epochs=3, train_loss=0.25, test_loss=0.03125, test_accuracy=0.9931)
    assert metrics_in([line]) == {"train:loss": [0.25], "test:loss": [0.03125], "test:accuracy": [0.9931]}
    assert metrics_in(["train_loss=nan"])["train:loss"] == []


def test_model_code_imports_only_what_the_training_image_provides():
    """SageMaker ships model_code/ alone onto the PyTorch image plus its requirements.txt."""
    siblings = {path.stem for path in MODEL_CODE.glob("*.py")}
    provided = {"torch", "numpy", "onnx", "onnxscript", "onnxruntime"}
    for path in MODEL_CODE.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                modules = [node.module]
            else:
                continue
            for module in modules:
                top = module.split(".")[0]
                assert top in sys.stdlib_module_names | siblings | provided, f"{path.name} imports {module}"


def test_hyperparameters_must_be_strings_as_in_the_api(tmp_path):
    with pytest.raises(TypeError, match=r"must be strings.*\['epochs'\]"):
        prepare_job_dir(tmp_path / "job", job_name="j", hyperparameters={"epochs": 3})


def test_stop_training_stops_a_script_that_ignores_sigterm(tmp_path):
    code = tmp_path / "code"
    code.mkdir()
    (code / "stubborn.py").write_text(
        "import os, signal, sys, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "open(sys.argv[-1], 'w').write(str(os.getpid()))\n"
        "time.sleep(120)\n"
    )
    pid_file = tmp_path / "script.pid"
    job = prepare_job_dir(
        tmp_path / "job",
        job_name="stubborn",
        hyperparameters={"pid-file": json.dumps(str(pid_file))},
        entry_point="stubborn.py",
        submit_dir=str(code),
    )
    proc = start_training(job)
    deadline = time.monotonic() + 60
    while not pid_file.exists() or not pid_file.read_text():
        assert time.monotonic() < deadline and proc.poll() is None, proc.stdout.read()
        time.sleep(0.1)
    script_pid = int(pid_file.read_text())

    started = time.monotonic()
    returncode = stop_training(proc, grace_s=1)
    proc.stdout.close()
    assert returncode != 0
    assert time.monotonic() - started < 10
    assert not process_running(script_pid)
    assert collect_result(job)[0] is False


def process_running(pid: int) -> bool:
    """True while pid is a live process (a zombie waiting to be reaped does not count)."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return False
        if state in ("Z", "X"):
            return False
        time.sleep(0.05)
    return True
