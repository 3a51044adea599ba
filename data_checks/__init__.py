"""Great Expectations data checks for MNIST batches.

    reference = compute_reference(base_images, base_labels)       # once, saved next to the base set
    Path("reference.json").write_text(reference.to_json())
    result = validate_batch(images, labels, Reference.from_json(text), batch_name="batch-0001")
    if not result.success:
        raise ValueError(result.summary())                           # failures are named checks
    render_data_docs(result, "data-docs/batch-0001")                 # GX Data Docs HTML

Importing this package is cheap (numpy only): Great Expectations and pandas load on first use.
"""

from data_checks.reference import Reference, compute_reference
from data_checks.validation import ValidationResult, render_data_docs, validate_batch

__all__ = ["Reference", "ValidationResult", "compute_reference", "render_data_docs", "validate_batch"]
