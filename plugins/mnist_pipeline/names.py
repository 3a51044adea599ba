"""The one table of names the DAG, the task modules and the tests share: task ids and XCom keys.

Tasks that run whatever happened (the rollback check, the audit) read what earlier tasks returned
by task id, because an upstream that failed or was skipped has no XCom to pass along; branches
return task ids. Both come from :data:`TASK_IDS` ("group.task"); the DAG builds every task with
:func:`task_name`, and its integrity test checks that each id is a task of the DAG.
"""

from __future__ import annotations

TASK_IDS = {
    "settings": "load_settings",
    "live_alias": "check_live_alias",
    "monitoring": "monitor_traffic",
    "discovery": "data.find_new_batches",
    "validation": "data.validate_data",
    "new_data": "data.check_for_new_data",
    "snapshot": "data.snapshot_data",
    "source": "train.upload_training_code",
    "training_config": "train.configure_training_job",
    "training": "train.train_model",
    "training_wait": "train.wait_for_training",
    "evaluation": "evaluate.evaluate_model",
    "not_dry_run": "evaluate.stop_if_dry_run",
    "registration": "register.register_model",
    "approval": "gate.approve_deployment",
    "gate": "gate.quality_gate",
    "reject": "gate.reject_model",
    "lambda_package": "deploy.upload_lambda_package",
    "publish": "deploy.publish_lambda_version",
    "smoke_test": "deploy.smoke_test",
    "rollout": "deploy.choose_rollout",
    "canary_shift": "deploy.shift_canary",
    "canary_check": "deploy.check_canary",
    "promote": "deploy.promote_alias",
    "approve": "deploy.approve_model",
    "consumed": "deploy.mark_batches_consumed",
    "rollback_check": "rollback.check_for_rollback",
    "rollback": "rollback.rollback_alias",
    "rollback_reject": "rollback.reject_rolled_back_model",
    "audit": "audit.record_audit",
    "conclude": "audit.conclude_run",
}
# A failure in one of these means a published version did not make it: roll back.
DEPLOYMENT_STEPS = ("publish", "smoke_test", "canary_shift", "canary_check", "promote")
# The XCom key under which the gate pushes its verdict ({"deploy", "reasons"}).
VERDICT_KEY = "verdict"
FAILED_STATES = {"failed"}


def task_name(name: str) -> str:
    """The task id inside its group: what ``task_id=`` takes within the group's ``TaskGroup``."""
    return TASK_IDS[name].rpartition(".")[2]


def task_states(ti, dag_run) -> dict[str, str]:
    """Every task's state in this run, by task id (``ti`` is the running task instance)."""
    states = ti.get_task_states(dag_id=dag_run.dag_id, run_ids=[dag_run.run_id])
    return {
        task_id: str(getattr(state, "value", state))
        for task_id, state in states.get(dag_run.run_id, {}).items()
    }


def pull(ti, name: str, key: str = "return_value"):
    """What the task :data:`TASK_IDS` ``[name]`` returned, None when it did not run."""
    return ti.xcom_pull(task_ids=TASK_IDS[name], key=key)
