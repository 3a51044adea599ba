# Airflow 3.3 (the official image) plus what the DAG's tasks import: the amazon provider at the
# project's pin, Great Expectations (data checks), onnx + onnxruntime (evaluation), sagemaker-core.
# Versions come from requirements/lock.txt, the same pins the tests ran against. No torch: training
# runs in SageMaker (locally: in localcloud), never in an Airflow worker.
FROM apache/airflow:3.3.2-python3.11

COPY requirements/lock.txt /tmp/lock.txt
RUN pip install --no-cache-dir -c /tmp/lock.txt \
      apache-airflow==3.3.2 \
      apache-airflow-providers-amazon \
      great_expectations \
      numpy \
      onnx \
      onnxruntime \
      sagemaker-core

COPY --chmod=0755 docker/airflow-init.sh /opt/airflow/airflow-init.sh
# Created here, owned by the airflow user, so the named volume mounted on it starts out writable.
RUN mkdir -p /opt/airflow/auth
