"""What runs the project on this machine: the demo (``python -m devtools``, the Makefile's demo,
endpoint, feed, status, down and audit targets), the MNIST fetcher, the lake seeder and the local
cloud's bootstrap. Never imported by ``plugins/`` or ``dags/``: it is not shipped to Airflow.

- :mod:`devtools.layout`: where the demo keeps its state, its names and ports;
- :mod:`devtools.processes`: start and stop process groups, pid files;
- :mod:`devtools.airflow_env`: Airflow's environment, its admin password, PostgreSQL;
- :mod:`devtools.bootstrap`: bucket, lake, reference, placeholder Lambda, HTTP API, localcloud;
- :mod:`devtools.airflow_api`: a client for Airflow's REST API;
- :mod:`devtools.follow`: follow a run (task states, training epochs);
- :mod:`devtools.cli`: the commands;
- :mod:`devtools.mnist`: fetch and verify MNIST; :mod:`devtools.lake`: seed the data lake.
"""
