"""Pipeline end to end: one nightly run of the DAG on localcloud, default hyperparameters, full data.

The lake is the real layout: a 50k-image base, the MNIST test set as holdout, and the first nightly
batch (2k images). localcloud runs as its own process, bootstrapped by ``devtools.bootstrap``;
the DAG runs through ``dag.test()`` (every task, in order, in one process, against a migrated
SQLite DB in a throwaway AIRFLOW_HOME), with the DAG's default Params. The training job polls
every 5 s, as in ``make demo`` (the DAG's default for real nightly jobs is 60 s).

Two runs, each from a fresh lake and a fresh localcloud. Figures: total wall time of the run, the
time inside the training job (DescribeTrainingJob's TrainingStartTime to TrainingEndTime), the
orchestration overhead (total minus the job), and each task's duration (tasks that ran; skipped
ones are left out). Targets (issue 6): total <= 4 minutes, overhead <= 45 s.

Airflow reads its configuration when first imported, so the run happens in a child process
(``python -m benchmarks.bench_pipeline``) whose environment is set before that import.
``BENCH_PIPELINE_MAX_TRAIN_SAMPLES`` (default 0: all) trains on a sample, for a quick trial;
``BENCH_PIPELINE_RUNS`` sets the number of runs.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.harness import Figure

REPO = Path(__file__).resolve().parents[1]
ACCOUNT = "000000000000"
SAGEMAKER_ROLE = f"arn:aws:iam::{ACCOUNT}:role/mnist-sagemaker"
LAMBDA_ROLE = f"arn:aws:iam::{ACCOUNT}:role/mnist-lambda"
BUCKET = "mnist-bench"
TRAINING_IMAGE = "763104351884.dkr.ecr.us-east-1.amazonaws.com/pytorch-training:2.6-cpu-py312"
POKE_INTERVAL_S = 5
RESULT_MARKER = "BENCH_PIPELINE_RESULT "
CHILD_TIMEOUT_S = 900
RUNS = 2  # BENCH_PIPELINE_RUNS overrides; each run takes about 110 s here


def run() -> list[Figure]:
    max_train_samples = int(os.environ.get("BENCH_PIPELINE_MAX_TRAIN_SAMPLES") or 0)
    runs = int(os.environ.get("BENCH_PIPELINE_RUNS") or RUNS)
    return figures([run_once(max_train_samples) for _ in range(runs)])


def run_once(max_train_samples: int) -> dict:
    """One nightly run from a fresh lake and localcloud, in a child process; its result."""
    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as work:
        child = subprocess.run(
            [
                sys.executable,
                "-m",
                "benchmarks.bench_pipeline",
                work,
                "--max-train-samples",
                str(max_train_samples),
            ],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=CHILD_TIMEOUT_S,
        )
    lines = [line for line in child.stdout.splitlines() if line.startswith(RESULT_MARKER)]
    if child.returncode != 0 or not lines:
        raise RuntimeError(
            f"the nightly run failed (exit {child.returncode}):\n{child.stdout[-3000:]}\n{child.stderr[-5000:]}"
        )
    result = json.loads(lines[-1].removeprefix(RESULT_MARKER))
    print(f"  nightly run: {result['total_s']:.0f} s, outcome {result['outcome']}", flush=True)
    return result


def figures(results: list[dict]) -> list[Figure]:
    first = results[0]
    data = f"{first['train_images']} training images" + (
        f" (sample of {first['max_train_samples']})" if first["max_train_samples"] else ""
    )
    outcomes = ", ".join(result["outcome"] for result in results)
    rows = [
        Figure(
            "pipeline",
            "nightly run, total wall time (dag.test on localcloud)",
            "s",
            [result["total_s"] for result in results],
            target="<= 240",
            notes=f"default Params, {data}; outcome {outcomes}; airflow db migrate beforehand "
            f"{statistics.median(result['migrate_s'] for result in results):.1f} s (not counted)",
            extra={"params": first["params"], "outcomes": [result["outcome"] for result in results]},
        ),
        Figure(
            "pipeline",
            "time inside the training job (TrainingStartTime to TrainingEndTime)",
            "s",
            [result["job_s"] for result in results],
            notes=f"job {first['job_name']}",
        ),
        Figure(
            "pipeline",
            "orchestration overhead (total minus the training job)",
            "s",
            [result["total_s"] - result["job_s"] for result in results],
            target="<= 45",
            notes=f"includes up to {POKE_INTERVAL_S} s of the sensor's poke interval",
        ),
    ]
    # Each task that ran, in the first run's start order, over the runs it ran in.
    for task_id, (offset, _) in first["tasks"].items():
        durations = [result["tasks"][task_id][1] for result in results if task_id in result["tasks"]]
        rows.append(
            Figure("pipeline", f"task {task_id}", "s", durations, notes=f"started at +{offset:.1f} s (run 1)")
        )
    return rows


def nightly_run(work: Path, max_train_samples: int) -> dict:
    """Seed, bootstrap, run the DAG once; what ``figures`` needs. Runs in the child process."""
    home = work / "airflow-home"
    os.environ.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING",
        }
    )
    from devtools.airflow_env import host_aws_variables

    for name in host_aws_variables(os.environ):
        del os.environ[name]
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "airflow", "db", "migrate"], check=True, capture_output=True, timeout=300
    )
    migrate_s = time.perf_counter() - started

    from benchmarks.bench_localcloud import serve_localcloud
    from devtools.bootstrap import bootstrap
    from devtools.lake import LakePlan, seed_lake
    from devtools.mnist import load_mnist
    from localcloud.app import make_client
    from mnist_pipeline.audit import read_audit
    from mnist_pipeline.config import PipelineConfig

    plan = LakePlan(batches=1)  # the 50k base and the first nightly batch
    seed_lake(work / "lake", load_mnist(), plan)
    with serve_localcloud() as url:
        client = lambda service: make_client(url, service)  # noqa: E731
        config = PipelineConfig(bucket=BUCKET, region="us-east-1", sagemaker_role_arn=SAGEMAKER_ROLE)
        bootstrap(
            client("s3"),
            client("lambda"),
            client("sagemaker"),
            config,
            work / "lake",
            lambda_role_arn=LAMBDA_ROLE,
        )
        connection = {
            "conn_type": "aws",
            "login": "localcloud",
            "password": "localcloud",
            "extra": {"endpoint_url": url, "region_name": config.region},
        }
        os.environ.update(
            {
                "AIRFLOW_CONN_AWS_DEFAULT": json.dumps(connection),
                "MNIST_BUCKET": config.bucket,
                "MNIST_REGION": config.region,
                "MNIST_SAGEMAKER_ROLE_ARN": SAGEMAKER_ROLE,
                "MNIST_TRAINING_IMAGE_URI": TRAINING_IMAGE,
                "MNIST_TRAINING_POKE_INTERVAL": str(POKE_INTERVAL_S),
            }
        )
        from airflow.dag_processing.dagbag import DagBag

        bag = DagBag(dag_folder=str(REPO / "dags"))
        if bag.import_errors:
            raise RuntimeError(f"the DAG does not parse: {bag.import_errors}")
        dag = bag.dags["mnist_retraining"]
        params = {**copy.deepcopy(dag.params).validate(), "max_train_samples": max_train_samples}
        when = dt.datetime(2026, 1, 1, 2, tzinfo=dt.UTC)

        started = time.perf_counter()
        dag_run = dag.test(run_after=when, logical_date=when, run_conf=params)
        total_s = time.perf_counter() - started

        instances = dag_run.get_task_instances()
        if dag_run.state != "success":
            states = {ti.task_id: str(ti.state) for ti in instances}
            raise RuntimeError(f"the nightly run ended {dag_run.state}: {states}")
        sm = client("sagemaker")
        (summary,) = sm.list_training_jobs(MaxResults=10)["TrainingJobSummaries"]
        job = sm.describe_training_job(TrainingJobName=summary["TrainingJobName"])
        record = read_audit(client("s3"), config, dag_run.run_id)

    # Tasks that ran, in start order, as (seconds after the run started, duration). A deferred
    # sensor's start_date is its last resumption, so the offsets show where the job's wait went.
    run_start = min(ti.start_date for ti in instances if ti.start_date)
    tasks = {}
    for ti in sorted(
        (ti for ti in instances if ti.state in ("success", "failed")), key=lambda ti: ti.start_date
    ):
        name = ti.task_id if ti.map_index < 0 else f"{ti.task_id}[{ti.map_index}]"
        tasks[name] = [
            (ti.start_date - run_start).total_seconds(),
            (ti.end_date - ti.start_date).total_seconds(),
        ]
    return {
        "total_s": total_s,
        "job_s": (job["TrainingEndTime"] - job["TrainingStartTime"]).total_seconds(),
        "job_name": job["TrainingJobName"],
        "migrate_s": migrate_s,
        "tasks": tasks,
        "params": params,
        "outcome": record["result"]["outcome"],
        "max_train_samples": max_train_samples,
        "train_images": plan.base_size + plan.batch_size,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="one nightly run (the child process of bench_pipeline)")
    parser.add_argument("work_dir", type=Path)
    parser.add_argument("--max-train-samples", type=int, default=0)
    args = parser.parse_args(argv)
    result = nightly_run(args.work_dir, args.max_train_samples)
    print(RESULT_MARKER + json.dumps(result, default=str), flush=True)


if __name__ == "__main__":
    main()
