"""AWS Lambda (rest-json): functions, versions, aliases and Invoke, executed by real worker processes.

service.py     LambdaService: the wire operations, a thin dispatcher onto the backend
backend.py     LambdaBackend: functions, versions, aliases and permissions, the in-process API
validation.py  names, ARNs, settings, payload limits and paging, checked as Lambda checks them
exceptions.py  Lambda's errors in its codes and words
state.py       how functions, versions and aliases sit in the store
code_store.py  deployment packages: stored once per zip, unpacked once, checked before they run
deployer.py    the thread that turns Pending functions and versions Active or Failed
invoke.py      Invoke's routing: qualifier and alias weights to a warm pool; the Event queue
runtime/       the workers (awslambdaric), their Runtime API ports, the pools and the log shipper
"""

from localcloud.awslambda.backend import LambdaBackend
from localcloud.awslambda.service import LambdaService

__all__ = ["LambdaBackend", "LambdaService"]
