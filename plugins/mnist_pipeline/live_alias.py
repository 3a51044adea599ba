"""Where the Lambda alias points, and whether this run may move it (the ``check_live_alias`` task).

The deployment (:mod:`mnist_pipeline.deploy`) and the rollback (:mod:`mnist_pipeline.rollback`)
move the alias only from the state this run last recorded for it: :func:`alias_state` is that
state (version, weights, RevisionId), :func:`last_recorded_state` finds the latest one an earlier
step of the run recorded, and :func:`revision_condition` makes the update conditional on it.
"""

from __future__ import annotations

from collections.abc import Sequence

from botocore.exceptions import ClientError

from mnist_pipeline.config import PipelineConfig
from mnist_pipeline.endpoint import DeploymentCheckFailed
from mnist_pipeline.sagemaker_hook import find_package_for_lambda_version, model_data_url

# The infrastructure's first version (the handler without a model: nothing serves yet) says so in
# its description; infra/terraform/lambda.tf sets it. An alias on it is a first deployment.
PLACEHOLDER_DESCRIPTION = "placeholder: no model deployed yet"


class AliasChangedElsewhere(DeploymentCheckFailed):
    """The alias is not where this run expected it: someone or something else moved it since."""


def alias_state(alias: dict | None) -> dict:
    """The part of an alias that matters: ``{"exists", "version", "weights", "revision_id"}``."""
    if alias is None:
        return {"exists": False, "version": None, "weights": {}, "revision_id": None}
    weights = (alias.get("RoutingConfig") or {}).get("AdditionalVersionWeights") or {}
    return {
        "exists": True,
        "version": alias["FunctionVersion"],
        "weights": dict(weights),
        "revision_id": alias.get("RevisionId"),
    }


def get_alias(conn, function_name: str, alias: str) -> dict | None:
    try:
        return conn.get_alias(FunctionName=function_name, Name=alias)
    except ClientError as error:
        if error.response["Error"]["Code"] == "ResourceNotFoundException":
            return None
        raise


def revision_condition(response: dict) -> dict:
    """``RevisionId=`` of a Lambda response, to condition an update on it (moto reports none)."""
    return {"RevisionId": response["RevisionId"]} if response.get("RevisionId") else {}


def same_state(a: dict, b: dict) -> bool:
    """Whether two :func:`alias_state` dicts are the same state of the alias, revision included."""
    return (a["exists"], a["version"], a["weights"], a["revision_id"]) == (
        b["exists"],
        b["version"],
        b["weights"],
        b["revision_id"],
    )


def describe_state(state: dict) -> str:
    """An alias state for a person: ``version 3 + {'4': 0.1} (revision 8f2c...)``, or ``absent``."""
    if not state["exists"]:
        return "absent"
    weights = f" + {state['weights']}" if state["weights"] else ""
    return f"version {state['version']}{weights} (revision {state['revision_id']})"


def recorded_state(result: dict | None) -> dict | None:
    """The alias state an earlier step of the run recorded: a shift's or rollback's ``after``, or
    the ``alias`` that :func:`inspect_live_alias` found at the start of the run."""
    if not result:
        return None
    return result.get("after") or result.get("alias")


def last_recorded_state(ti, task_ids: Sequence[str]) -> dict | None:
    """The latest state that the tasks ``task_ids`` (in run order) recorded; None when none ran."""
    found = None
    for task_id in task_ids:
        state = recorded_state(ti.xcom_pull(task_ids=task_id))
        if state is not None:
            found = state
    return found


def inspect_live_alias(lambda_conn, sm, config: PipelineConfig) -> dict:
    """Where the alias points at the start of a run, and whether the pipeline may move it.

    The champion is the alias's version when an Approved model package records it. Deploying is
    unsafe, and ``problems`` says why, when the alias still routes weights to another version (a
    deployment that did not finish) or points at a version no Approved package records (deployed
    by hand, or rejected since): such a version is not treated as the champion, and the gate
    refuses to move the alias away from it until a person has looked. The infrastructure's
    placeholder version (description starting with :data:`PLACEHOLDER_DESCRIPTION`) serves
    nothing, so an alias on it is a first deployment.

    :return: ``{"alias": alias_state, "champion_version", "champion_package_arn",
        "champion_model_uri", "placeholder", "problems"}``.
    """
    function, name = config.lambda_function, config.lambda_alias
    state = alias_state(get_alias(lambda_conn, function, name))
    found = {
        "alias": state,
        "champion_version": None,
        "champion_package_arn": None,
        "champion_model_uri": None,
        "placeholder": False,
        "problems": [],
    }
    if not state["exists"]:
        return found
    version, problems = state["version"], found["problems"]
    if state["weights"]:
        problems.append(
            f"alias {name} still routes {state['weights']} beside version {version}: a deployment did not "
            "finish; point the alias at one version before the next deployment"
        )
    if not str(version).isdigit():
        problems.append(f"alias {name} points at {version}, not a published version")
        return found
    package = find_package_for_lambda_version(sm, config.model_package_group, function, version)
    if package is not None:
        found.update(
            champion_version=version,
            champion_package_arn=package["ModelPackageArn"],
            champion_model_uri=model_data_url(package),
        )
        return found
    described = lambda_conn.get_function_configuration(FunctionName=function, Qualifier=version)
    if described.get("Description", "").startswith(PLACEHOLDER_DESCRIPTION):
        found["placeholder"] = True
    else:
        problems.append(
            f"alias {name} points at version {version}, which no Approved model package in "
            f"{config.model_package_group} records (deployed by hand, or rejected since): it is not "
            "treated as the champion, and the pipeline will not move the alias away from it"
        )
    return found
