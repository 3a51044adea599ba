"""Running Lambda functions: worker processes with AWS's runtime client, and the Runtime API they poll.

worker.py       one execution environment: the awslambdaric process, its output, its environment
api_server.py   the Runtime API on each worker's own loopback port (RuntimeApiServer)
pool.py         FunctionPool (one version's workers and queue) and LambdaRuntime (all pools, the launcher)
log_shipper.py  worker output into CloudWatch Logs, in batches, off the invocation path
"""
