"""Amazon SageMaker (json protocol): training jobs that really run, the model registry, and tags.

jobs.py       CreateTrainingJob ... StopTrainingJob: request checks, each job's stored state and
              status machine, training slots, restarts after an interruption
runner.py     JobRun, the thread that runs one job, and the job dir + official sagemaker-training
              toolkit it runs on (prepare, start, stop, collect the result, pack the model)
transfer.py   what moves between localcloud's S3 and a job dir: channels, checkpoints, model.tar.gz
registry.py   model package groups and versioned model packages
backend.py    SageMakerBackend: both of them plus tags, the in-process API
service.py    SageMakerService: the wire operations
common.py     ARNs, AWS-shaped validation errors, tags, sorting and paging, how a job ends
"""

from localcloud.sagemaker.backend import SageMakerBackend
from localcloud.sagemaker.service import SageMakerService

__all__ = ["SageMakerBackend", "SageMakerService"]
