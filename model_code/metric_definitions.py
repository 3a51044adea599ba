"""The per-epoch metrics line and the SageMaker ``MetricDefinitions`` that read it.

train.py prints one line per epoch with :func:`format_epoch_line`; SageMaker (or localcloud) scans
the job's log with the regexes below. Both sides import this module, so the line and the regexes
cannot drift apart. Standard library only: the DAG imports it without torch.
"""

EPOCH_LINE_FORMAT = (
    "METRICS epoch={epoch}/{epochs} train_loss={train_loss:.6f} test_loss={test_loss:.6f} "
    "test_accuracy={test_accuracy:.6f}"
)

# A fixed-point number as the format above writes it. SageMaker regexes are not Python's, so keep to
# the syntax both understand; the first group is the value.
_NUMBER = r"([0-9]+\.[0-9]+)"

METRIC_DEFINITIONS = [
    {"Name": "train:loss", "Regex": rf"train_loss={_NUMBER}"},
    {"Name": "test:loss", "Regex": rf"test_loss={_NUMBER}"},
    {"Name": "test:accuracy", "Regex": rf"test_accuracy={_NUMBER}"},
]


def format_epoch_line(
    *, epoch: int, epochs: int, train_loss: float, test_loss: float, test_accuracy: float
) -> str:
    """The metrics line for one epoch; test_accuracy is a fraction in 0..1."""
    return EPOCH_LINE_FORMAT.format(
        epoch=epoch, epochs=epochs, train_loss=train_loss, test_loss=test_loss, test_accuracy=test_accuracy
    )
