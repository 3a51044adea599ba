"""Amazon SageMaker (json protocol): training jobs that really run, the model registry, and tags.

training.py   CreateTrainingJob ... StopTrainingJob, and the runner that executes each job with
              the official sagemaker-training toolkit (see its docstring for what a job sees)
registry.py   model package groups and versioned model packages
backend.py    SageMakerBackend: both of them plus tags, the in-process API
service.py    SageMakerService: the wire operations
common.py     ARNs, AWS-shaped validation errors, tags, sorting and paging
"""

from localcloud.sagemaker.backend import SageMakerBackend
from localcloud.sagemaker.service import SageMakerService

__all__ = ["SageMakerBackend", "SageMakerService"]
