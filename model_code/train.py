"""Train the MNIST digit classifier: a SageMaker script-mode entry point.

SageMaker's training toolkit runs ``python train.py --epochs 3 ...`` with the job's hyperparameters
as arguments and the job's layout in SM_* variables:

- SM_CHANNEL_TRAIN: training shards, every ``*.npz`` below it in sorted order.
- SM_CHANNEL_TEST: holdout shards, never trained on; the reported metrics come from them.
- SM_MODEL_DIR: receives model.onnx, model.pt and model_card.json.
- SM_OUTPUT_DATA_DIR: receives evaluation.json (the holdout's confusion matrix).
- SM_OUTPUT_DIR: receives ``failure`` with the reason when the job fails (SageMaker's FailureReason).
- SM_NUM_GPUS: a GPU is used when there is one.

A shard is an ``.npz`` holding ``images`` uint8 [N, 28, 28] and ``labels`` uint8 [N], read and
checked by ``shards.py`` (the lake's own reader). Only this directory is shipped to SageMaker, so nothing outside it is imported.
"""

import argparse
import hashlib
import json
import math
import os
import platform
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

import numpy as np
import onnxruntime
import torch
import torch.nn.functional as F
from metric_definitions import format_epoch_line
from net import IMAGE_SIDE, NUM_CLASSES, PIXELS, MnistNet, ServingGraph
from shards import ShardError, load_shard_bytes, sha256_file

PARITY_TOLERANCE = 1e-4
EVAL_BATCH = 1000
# Augmentation: the small rotations, scalings and shifts that handwriting varies by.
MAX_ROTATION_DEGREES = 10.0
MAX_SCALE_CHANGE = 0.1
MAX_SHIFT_PIXELS = 2.0
ONNX_INPUT = "pixels"
ONNX_OUTPUTS = ["logits", "probabilities"]


class TrainingError(Exception):
    """A problem the job's owner can fix; the message becomes the job's FailureReason."""


def log(message: str) -> None:
    print(message, flush=True)


# --- hyperparameters ---------------------------------------------------------------------------


class _ArgumentParser(argparse.ArgumentParser):
    def error(self, message: str):
        raise TrainingError(f"bad hyperparameters: {message}")


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text!r}")
    return value


def boolean(text: str) -> bool:
    # SageMaker hands JSON true/false to the script as "True"/"False".
    lowered = text.lower()
    if lowered not in ("true", "false", "1", "0"):
        raise argparse.ArgumentTypeError(f"must be true or false, got {text!r}")
    return lowered in ("true", "1")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = _ArgumentParser(description="Train the MNIST classifier (SageMaker script mode).")
    parser.add_argument("--epochs", type=positive_int, default=3)
    parser.add_argument("--batch-size", type=positive_int, default=128)
    parser.add_argument("--lr", type=float, default=3e-3, help="peak learning rate of the one-cycle schedule")
    parser.add_argument("--weight-decay", type=float, default=1e-2)
    parser.add_argument("--label-smoothing", type=float, default=0.1)
    parser.add_argument("--augment", type=boolean, default=True, help="random rotation, scale and shift")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--max-train-samples",
        type=non_negative_int,
        default=0,
        help="quick mode: train on a sample (0 = all)",
    )
    parser.add_argument(
        "--max-test-samples",
        type=non_negative_int,
        default=0,
        help="quick mode: evaluate on a sample (0 = all)",
    )
    args = parser.parse_args(argv)
    if not (math.isfinite(args.lr) and args.lr > 0):
        parser.error(f"argument --lr: must be a positive number, got {args.lr}")
    if not (math.isfinite(args.weight_decay) and args.weight_decay >= 0):
        parser.error(f"argument --weight-decay: must be 0 or more, got {args.weight_decay}")
    if not 0 <= args.label_smoothing < 1:
        parser.error(f"argument --label-smoothing: must be in [0, 1), got {args.label_smoothing}")
    return args


# --- data --------------------------------------------------------------------------------------


@dataclass
class Channel:
    images: np.ndarray  # uint8 [N, 28, 28]
    labels: np.ndarray  # uint8 [N]
    shards: list[dict]  # file (relative to the channel), sha256, samples


def required_dir(variable: str, what: str) -> Path:
    value = os.environ.get(variable)
    if not value:
        raise TrainingError(f"{variable} is not set: the job needs {what}")
    return Path(value)


def parse_shard(data: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
    """The shard's arrays, checked as the lake checks them (:mod:`shards`); a bad one fails the job."""
    try:
        return load_shard_bytes(data, where=where)
    except ShardError as error:
        raise TrainingError(str(error)) from error


def read_channel(name: str) -> Channel:
    root = required_dir(f"SM_CHANNEL_{name.upper()}", f"a '{name}' input channel of .npz shards")
    if not root.is_dir():
        raise TrainingError(f"the '{name}' channel directory {root} does not exist")
    paths = sorted(root.rglob("*.npz"))
    if not paths:
        raise TrainingError(f"the '{name}' channel ({root}) holds no .npz shards")
    images, labels, shards = [], [], []
    for path in paths:
        data = path.read_bytes()
        relative = str(path.relative_to(root))
        shard_images, shard_labels = parse_shard(data, where=f"{name} shard {relative}")
        images.append(shard_images)
        labels.append(shard_labels)
        shards.append(
            {"file": relative, "sha256": hashlib.sha256(data).hexdigest(), "samples": len(shard_labels)}
        )
    channel = Channel(np.concatenate(images), np.concatenate(labels), shards)
    if not len(channel.labels):
        raise TrainingError(f"the '{name}' channel ({root}) has {len(paths)} shard(s) but no images")
    return channel


def sample(channel: Channel, limit: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A seeded random subset of at most ``limit`` images (all of them when limit is 0)."""
    if not limit or limit >= len(channel.labels):
        return channel.images, channel.labels
    keep = np.sort(np.random.default_rng(seed).permutation(len(channel.labels))[:limit])
    return channel.images[keep], channel.labels[keep]


# --- training ----------------------------------------------------------------------------------


def augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Randomly rotate, scale and shift raw-pixel images [N, 1, 28, 28]; the border fills with 0."""
    count = len(images)

    def uniform(limit: float) -> torch.Tensor:
        return (torch.rand(count, generator=generator) * 2 - 1) * limit

    angle = uniform(math.radians(MAX_ROTATION_DEGREES))
    scale = 1 + uniform(MAX_SCALE_CHANGE)
    # affine_grid measures shifts in half-widths of the image.
    shift_x, shift_y = uniform(2 * MAX_SHIFT_PIXELS / IMAGE_SIDE), uniform(2 * MAX_SHIFT_PIXELS / IMAGE_SIDE)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift_x], 1), torch.stack([sin, cos, shift_y], 1)], 1)
    grid = F.affine_grid(theta.to(images.device), list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, align_corners=False)


def train_epoch(net, images, labels, optimizer, scheduler, args, generator) -> float:
    net.train()
    order = torch.randperm(len(labels), generator=generator)
    total_loss = 0.0
    for start in range(0, len(order), args.batch_size):
        batch = order[start : start + args.batch_size].to(images.device)
        pixels = images[batch].float().unsqueeze(1)
        if args.augment:
            pixels = augment(pixels, generator)
        loss = F.cross_entropy(net(pixels.flatten(1)), labels[batch], label_smoothing=args.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        total_loss += loss.item() * len(batch)
    return total_loss / len(order)


@torch.no_grad()
def evaluate(net, images, labels) -> tuple[float, float, torch.Tensor]:
    """Mean cross-entropy, accuracy (0..1) and the predicted digits on a held-out set."""
    net.eval()
    total_loss, predictions = 0.0, []
    for start in range(0, len(labels), EVAL_BATCH):
        logits = net(images[start : start + EVAL_BATCH].float().flatten(1))
        total_loss += F.cross_entropy(logits, labels[start : start + EVAL_BATCH], reduction="sum").item()
        predictions.append(logits.argmax(1))
    predicted = torch.cat(predictions)
    return total_loss / len(labels), (predicted == labels).sum().item() / len(labels), predicted


# --- export ------------------------------------------------------------------------------------


def export_onnx(net: MnistNet, path: Path) -> None:
    """Write the serving graph as one self-contained file with a dynamic batch dimension."""
    torch.onnx.export(
        ServingGraph(net).eval(),
        (torch.zeros(2, PIXELS),),
        str(path),
        dynamo=True,
        external_data=False,  # the dynamo exporter would otherwise put the weights in a side file
        input_names=[ONNX_INPUT],
        output_names=ONNX_OUTPUTS,
        dynamic_shapes=({0: torch.export.Dim("batch")},),
        verbose=False,
    )


@torch.no_grad()
def check_parity(net: MnistNet, onnx_path: Path, images: np.ndarray) -> float:
    """Max abs difference between onnxruntime and torch on the holdout; fails the job above tolerance."""
    serving = ServingGraph(net).eval()
    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    worst = 0.0
    for start in range(0, len(images), EVAL_BATCH):
        pixels = images[start : start + EVAL_BATCH].reshape(-1, PIXELS).astype(np.float32)
        expected = [output.numpy() for output in serving(torch.from_numpy(pixels))]
        actual = session.run(ONNX_OUTPUTS, {ONNX_INPUT: pixels})
        worst = max(worst, *(float(np.abs(a - e).max()) for a, e in zip(actual, expected, strict=True)))
    if not worst <= PARITY_TOLERANCE:
        raise TrainingError(
            f"ONNX/torch parity failed: max abs difference {worst:.3g} on {len(images)} holdout images "
            f"exceeds {PARITY_TOLERANCE}; model.onnx does not compute what was trained"
        )
    return worst


# --- the job -----------------------------------------------------------------------------------


def job_name() -> str | None:
    training_env = json.loads(os.environ.get("SM_TRAINING_ENV") or "{}")
    return training_env.get("job_name") or os.environ.get("TRAINING_JOB_NAME")


def library_versions() -> dict:
    versions = {"python": platform.python_version()}
    for package in ("torch", "numpy", "onnx", "onnxscript", "onnxruntime"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return versions


def confusion_matrix(labels: np.ndarray, predicted: np.ndarray) -> list[list[int]]:
    counts = np.bincount(labels.astype(np.int64) * NUM_CLASSES + predicted, minlength=NUM_CLASSES**2)
    return counts.reshape(NUM_CLASSES, NUM_CLASSES).tolist()


def run(args: argparse.Namespace) -> None:
    model_dir = required_dir("SM_MODEL_DIR", "a directory for the model artifacts")
    train_channel, test_channel = read_channel("train"), read_channel("test")
    train_images, train_labels = sample(train_channel, args.max_train_samples, args.seed)
    test_images, test_labels = sample(test_channel, args.max_test_samples, args.seed)

    use_gpu = int(os.environ.get("SM_NUM_GPUS", torch.cuda.device_count())) > 0 and torch.cuda.is_available()
    device = torch.device("cuda" if use_gpu else "cpu")
    torch.manual_seed(args.seed)
    if not use_gpu:
        torch.use_deterministic_algorithms(True)
    generator = torch.Generator().manual_seed(args.seed)
    log(
        f"training on {len(train_labels)} images from {len(train_channel.shards)} shard(s), "
        f"evaluating on {len(test_labels)} holdout images, device {device}, "
        f"{torch.get_num_threads()} CPU thread(s)"
    )

    train_x, train_y = (
        torch.from_numpy(train_images).to(device),
        torch.from_numpy(train_labels).long().to(device),
    )
    test_x, test_y = torch.from_numpy(test_images).to(device), torch.from_numpy(test_labels).long().to(device)
    net = MnistNet().to(device)
    optimizer = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    steps_per_epoch = math.ceil(len(train_labels) / args.batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=args.lr, total_steps=args.epochs * steps_per_epoch, pct_start=0.25
    )

    history = []
    started = time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        epoch_started = time.perf_counter()
        train_loss = train_epoch(net, train_x, train_y, optimizer, scheduler, args, generator)
        if not math.isfinite(train_loss):
            raise TrainingError(
                f"training diverged: the train loss is {train_loss} in epoch {epoch}; lower --lr"
            )
        test_loss, test_accuracy, predicted = evaluate(net, test_x, test_y)
        seconds = time.perf_counter() - epoch_started
        metrics = {"train_loss": train_loss, "test_loss": test_loss, "test_accuracy": test_accuracy}
        history.append({"epoch": epoch, **metrics, "seconds": round(seconds, 2)})
        log(f"{format_epoch_line(epoch=epoch, epochs=args.epochs, **metrics)} seconds={seconds:.1f}")
    training_seconds = time.perf_counter() - started

    net = net.cpu().eval()
    model_dir.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), model_dir / "model.pt")
    onnx_path = model_dir / "model.onnx"
    export_onnx(net, onnx_path)
    parity = check_parity(net, onnx_path, test_images)
    log(f"exported {onnx_path.name}; ONNX/torch max abs difference on the holdout: {parity:.2e}")

    card = {
        "training_job": job_name(),
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "metrics": {**history[-1], "training_seconds": round(training_seconds, 2)},
        "epochs": history,
        "hyperparameters": vars(args),
        "data": {
            name: {"shards": channel.shards, "samples_available": len(channel.labels), "samples_used": used}
            for name, channel, used in (
                ("train", train_channel, len(train_labels)),
                ("test", test_channel, len(test_labels)),
            )
        },
        "onnx": {
            "file": onnx_path.name,
            "sha256": sha256_file(onnx_path),
            "input": {
                "name": ONNX_INPUT,
                "dtype": "float32",
                "shape": ["batch", PIXELS],
                "range": [0, 255],
                "layout": "row-major 28x28 grayscale, raw pixel values; scaling happens inside the graph",
            },
            "outputs": {
                "logits": "float32 [batch, 10], unnormalised scores per digit",
                "probabilities": "float32 [batch, 10], softmax of the logits",
            },
            "parity_max_abs_diff": parity,
        },
        # The output a server should answer with (lambda_package/handler.py reads this).
        "output": {"name": "probabilities", "kind": "probabilities"},
        "state_dict": {"file": "model.pt", "architecture": f"{MnistNet.__module__}.{MnistNet.__name__}"},
        "device": str(device),
        "libraries": library_versions(),
    }
    (model_dir / "model_card.json").write_text(json.dumps(card, indent=2) + "\n")

    output_data_dir = os.environ.get("SM_OUTPUT_DATA_DIR")
    if output_data_dir:
        evaluation = {
            "test_accuracy": test_accuracy,
            "confusion_matrix": confusion_matrix(test_labels, predicted.cpu().numpy()),
        }
        Path(output_data_dir).mkdir(parents=True, exist_ok=True)
        (Path(output_data_dir) / "evaluation.json").write_text(json.dumps(evaluation) + "\n")


def report_failure(message: str) -> None:
    """Say why the job failed, on stderr and in SM_OUTPUT_DIR/failure.

    The toolkit only writes its own, generic failure file when there is none, so the reason a
    person reads in FailureReason is this one.
    """
    print(f"TrainingError: {message}", file=sys.stderr, flush=True)
    output_dir = os.environ.get("SM_OUTPUT_DIR")
    if output_dir:
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        (Path(output_dir) / "failure").write_text(message + "\n")


def main(argv: list[str] | None = None) -> int:
    try:
        run(parse_args(argv))
    except TrainingError as error:
        report_failure(str(error))
        return 1
    except Exception as error:
        report_failure(
            f"{type(error).__name__}: {error} (an unexpected error; the job log has the traceback)"
        )
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
