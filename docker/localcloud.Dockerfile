# localcloud, the local AWS, with what it needs to really run the work: the SageMaker training
# toolkit + torch (CPU) for training jobs, the Lambda runtime client + onnxruntime for invocations.
# Versions come from requirements/lock.txt, the same pins the tests ran against.
FROM python:3.11.14-slim-bookworm

# sagemaker-training ships a small C extension, built from source at install time.
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*

COPY requirements/lock.txt /tmp/lock.txt
# The CPU build of the pinned torch (2.14.1+cpu satisfies ==2.14.1) instead of the CUDA one.
RUN pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu \
      torch==2.14.1 torchvision==0.29.1 \
 && pip install --no-cache-dir -c /tmp/lock.txt \
      awslambdaric \
      boto3 \
      botocore \
      numpy \
      onnx \
      onnxruntime \
      onnxscript \
      sagemaker-training

WORKDIR /opt/project
COPY localcloud/ /opt/project/localcloud/
ENV PYTHONPATH=/opt/project \
    PYTHONUNBUFFERED=1

# Inside the container it must listen on every interface to be reachable from Airflow; the host
# publishes the port on 127.0.0.1 only (docker-compose.yaml), so it stays loopback-only outside.
EXPOSE 4566
ENTRYPOINT ["python", "-m", "localcloud", "serve", "--host", "0.0.0.0", "--port", "4566", \
            "--data-dir", "/var/lib/localcloud", "--allow-non-loopback"]
