"""The Lambda handler answers real MNIST digits and rejects every bad request with a 4xx.

Requests go through the same paths as in production: API Gateway HTTP API events (payload format
2.0) and direct invocations. The handler module is imported afresh for each model, as Lambda's
init phase does, serving a model trained on real MNIST (fixture ``trained_model_dir``).
"""

import base64
import hashlib
import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import pytest

REPO = Path(__file__).resolve().parents[2]
HANDLER_FILE = REPO / "lambda_package" / "handler.py"
CONTEXT = SimpleNamespace(aws_request_id="req-0001")


def load_handler(model_dir: Path, version: str = "7"):
    """handler.py imported fresh (Lambda's init phase) with the model in model_dir."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MODEL_DIR", str(model_dir))
        patch.setenv("AWS_LAMBDA_FUNCTION_VERSION", version)
        spec = importlib.util.spec_from_file_location("handler_under_test", HANDLER_FILE)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return module


def api_event(body, *, method="POST", path="/mnist", content_type="application/json", base64_body=False):
    """An API Gateway HTTP API event, payload format 2.0, as the service sends it."""
    headers = {"host": "abc123.execute-api.eu-west-1.amazonaws.com", "user-agent": "pytest"}
    if content_type is not None:
        headers["content-type"] = content_type
    event = {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": path,
        "rawQueryString": "",
        "headers": headers,
        "requestContext": {
            "http": {"method": method, "path": path, "protocol": "HTTP/1.1", "sourceIp": "127.0.0.1"},
            "requestId": "JKJaXmPLvHcESHA=",
            "routeKey": "$default",
            "stage": "$default",
        },
        "isBase64Encoded": base64_body,
    }
    if body is not None:
        event["body"] = base64.b64encode(body.encode()).decode() if base64_body else body
    return event


def invoke(handler_module, event) -> tuple[int, dict]:
    """Call the handler and check the response is a well-formed proxy response; (status, body)."""
    response = handler_module.handler(event, CONTEXT)
    assert set(response) == {"statusCode", "headers", "body"}
    assert response["headers"]["Content-Type"] == "application/json"
    return response["statusCode"], json.loads(response["body"])


def pixels(image: np.ndarray) -> list[int]:
    return image.reshape(784).tolist()


@pytest.fixture(scope="module")
def lambda_fn(trained_model_dir):
    return load_handler(trained_model_dir)


@pytest.fixture(scope="module")
def digits(mnist):
    """300 MNIST test digits (never trained on), a fixed random sample."""
    chosen = np.random.default_rng(0).choice(len(mnist.test_labels), size=300, replace=False)
    return mnist.test_images[chosen], mnist.test_labels[chosen]


def model_info(model_dir: Path) -> dict:
    """What every answer must say about the model: the deployed version, its job, its exact bytes."""
    card = json.loads((model_dir / "model_card.json").read_text())
    return {
        "version": "7",
        "training_job": card["training_job"],
        "model_sha256": hashlib.sha256((model_dir / "model.onnx").read_bytes()).hexdigest(),
    }


def check_probabilities(probabilities: list[float], prediction: int) -> None:
    assert prediction in range(10)
    assert len(probabilities) == 10 and all(0 <= p <= 1 for p in probabilities)
    assert sum(probabilities) == pytest.approx(1, abs=1e-6)
    assert probabilities.index(max(probabilities)) == prediction


def test_real_test_digits_are_classified_through_api_gateway(lambda_fn, digits, trained_model_dir):
    images, labels = digits
    expected_model = model_info(trained_model_dir)
    predicted = []
    for image in images:
        status, body = invoke(lambda_fn, api_event(json.dumps({"input": pixels(image)})))
        assert status == 200, body
        assert set(body) == {"prediction", "probabilities", "model"}
        check_probabilities(body["probabilities"], body["prediction"])
        assert body["model"] == expected_model
        predicted.append(body["prediction"])
    accuracy = np.mean(np.array(predicted) == labels)
    assert accuracy >= 0.95, f"accuracy {accuracy:.3f} on {len(labels)} test digits"


def test_direct_invocation_and_base64_body_get_the_same_answer(lambda_fn, digits):
    request = {"input": pixels(digits[0][0])}
    via_api = lambda_fn.handler(api_event(json.dumps(request)), CONTEXT)
    via_base64 = lambda_fn.handler(api_event(json.dumps(request), base64_body=True), CONTEXT)
    direct = lambda_fn.handler(request, CONTEXT)
    assert via_api["statusCode"] == via_base64["statusCode"] == direct["statusCode"] == 200
    assert via_api["body"] == via_base64["body"] == direct["body"]


def test_a_batch_gets_the_answers_of_its_images_one_by_one(lambda_fn, digits, trained_model_dir):
    images, labels = digits[0][:64], digits[1][:64]
    status, batch = invoke(lambda_fn, api_event(json.dumps({"inputs": [pixels(image) for image in images]})))
    assert status == 200, batch
    assert set(batch) == {"predictions", "probabilities", "model"}
    assert len(batch["predictions"]) == len(batch["probabilities"]) == 64
    for image, prediction, probabilities in zip(
        images, batch["predictions"], batch["probabilities"], strict=True
    ):
        check_probabilities(probabilities, prediction)
        _, single = invoke(lambda_fn, {"input": pixels(image)})
        assert prediction == single["prediction"]
        np.testing.assert_allclose(probabilities, single["probabilities"], atol=1e-5)
    assert np.mean(np.array(batch["predictions"]) == labels) >= 0.9
    assert batch["model"] == model_info(trained_model_dir)


@pytest.mark.parametrize(
    "path, content_type",
    [("/prod/mnist", "application/json"), ("/mnist", "application/json; charset=utf-8"), ("/mnist", None)],
)
def test_stage_prefix_charset_and_a_missing_content_type_are_accepted(lambda_fn, digits, path, content_type):
    event = api_event(json.dumps({"input": pixels(digits[0][0])}), path=path, content_type=content_type)
    status, body = invoke(lambda_fn, event)
    assert status == 200, body


ZEROS = [0] * 784


def with_pixel(index, value):
    image = list(ZEROS)
    image[index] = value
    return image


# (id, request object, status, error code, text the message must contain). Sent both as an API
# Gateway body and as a direct invocation.
# fmt: off
BAD_REQUESTS = [
    ("body is an array", [ZEROS], 400, "invalid_body", "got an array"),
    ("body is a string", "0,0,0", 400, "invalid_body", "got a string"),
    ("missing field", {"image": ZEROS}, 400, "missing_field", "'input'"),
    ("both fields", {"input": ZEROS, "inputs": [ZEROS]}, 400, "conflicting_fields", "not both"),
    ("input is null", {"input": None}, 400, "invalid_type", "got null"),
    ("input is a string", {"input": "0 0 0"}, 400, "invalid_type", "got a string"),
    ("input too short", {"input": [0] * 783}, 400, "wrong_length", "input has 783 values; expected 784"),
    ("input too long", {"input": [0] * 785}, 400, "wrong_length", "785 values"),
    ("input is 28x28 nested", {"input": [[0] * 28] * 28}, 400, "invalid_type", "input[0] is an array"),
    ("string pixel", {"input": with_pixel(5, "12")}, 400, "invalid_type", "input[5] is a string ('12')"),
    ("boolean pixel", {"input": with_pixel(3, True)}, 400, "invalid_type", "input[3] is a boolean (true)"),
    ("null pixel", {"input": with_pixel(0, None)}, 400, "invalid_type", "input[0] is null"),
    ("object pixel", {"input": with_pixel(9, {})}, 400, "invalid_type", "input[9] is an object"),
    ("negative pixel", {"input": with_pixel(10, -1)}, 400, "out_of_range", "input[10] is -1"),
    ("pixel over 255", {"input": with_pixel(783, 255.5)}, 400, "out_of_range", "input[783] is 255.5"),
    ("pixel beyond any float", {"input": with_pixel(7, 10**400)}, 400, "out_of_range", "input[7] is"),
    ("inputs is an object", {"inputs": {"a": ZEROS}}, 400, "invalid_type", "got an object"),
    ("empty batch", {"inputs": []}, 400, "empty_batch", "'inputs' is empty"),
    ("too many images", {"inputs": [ZEROS] * 257}, 400, "too_many_images", "257 images; at most 256"),
    ("batch image not a list", {"inputs": [ZEROS, 5]}, 400, "invalid_type", "inputs[1] must be an array"),
    ("batch image too long", {"inputs": [ZEROS, [0] * 785]}, 400, "wrong_length", "inputs[1] has 785 values"),
    ("batch pixel out of range", {"inputs": [ZEROS, ZEROS, with_pixel(4, 300)]}, 400, "out_of_range",
     "inputs[2][4] is 300"),
    ("batch boolean pixel", {"inputs": [with_pixel(1, False)]}, 400, "invalid_type",
     "inputs[0][1] is a boolean"),
]
# fmt: on


def check_rejected(status, body, expected_status, code, fragment):
    assert (status, body["error"]["code"]) == (expected_status, code), body
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}
    assert fragment in body["error"]["message"]


@pytest.mark.parametrize(
    "request_object, expected_status, code, fragment",
    [case[1:] for case in BAD_REQUESTS],
    ids=[case[0] for case in BAD_REQUESTS],
)
@pytest.mark.parametrize("mode", ["api_gateway", "direct"])
def test_bad_requests_are_rejected_with_a_4xx_naming_the_problem(
    lambda_fn, mode, request_object, expected_status, code, fragment
):
    event = api_event(json.dumps(request_object)) if mode == "api_gateway" else request_object
    check_rejected(*invoke(lambda_fn, event), expected_status, code, fragment)


MAX_BODY = 2 * 1024 * 1024
# Raw API Gateway bodies that are not JSON for the handler to accept, and HTTP-level mistakes.
# fmt: off
BAD_EVENTS = [
    ("malformed JSON", api_event('{"input": [0, 0'), 400, "malformed_json", "not valid JSON"),
    ("trailing garbage", api_event('{"input": []} x'), 400, "malformed_json", "not valid JSON"),
    ("empty body", api_event(""), 400, "empty_body", "empty"),
    ("no body", api_event(None), 400, "empty_body", "empty"),
    ("NaN literal", api_event('{"input": [NaN' + ", 0" * 783 + "]}"), 400, "non_finite_number", "NaN"),
    ("Infinity literal", api_event('{"input": [0, Infinity]}'), 400, "non_finite_number", "Infinity"),
    ("-Infinity literal", api_event('{"input": [-Infinity]}'), 400, "non_finite_number", "-Infinity"),
    ("number overflowing to inf", api_event('{"input": [1e999' + ", 0" * 783 + "]}"), 400,
     "non_finite_number", "input[0] is inf"),
    ("form content type", api_event('{"input": []}', content_type="application/x-www-form-urlencoded"), 415,
     "unsupported_media_type", "application/json"),
    ("text content type", api_event('{"input": []}', content_type="text/plain"), 415,
     "unsupported_media_type", "'text/plain'"),
    ("oversized body", api_event(" " * (MAX_BODY + 1)), 413, "payload_too_large", "2097152 bytes"),
    ("oversized base64 body", api_event(" " * (MAX_BODY + 3), base64_body=True), 413, "payload_too_large",
     "2097152"),
    ("bad base64", {**api_event(None, base64_body=True), "body": "not base64!"}, 400, "invalid_base64",
     "not base64"),
    ("base64 of non-UTF-8", {**api_event(None, base64_body=True), "body": "//79"}, 400, "malformed_json",
     "not valid JSON"),
    ("GET", api_event(None, method="GET"), 405, "method_not_allowed", "use POST"),
    ("PUT", api_event('{"input": []}', method="PUT"), 405, "method_not_allowed", "'PUT' is not allowed"),
    ("unknown path", api_event('{"input": []}', path="/predict"), 404, "not_found", "'/predict'"),
]
# fmt: on


@pytest.mark.parametrize(
    "event, expected_status, code, fragment",
    [case[1:] for case in BAD_EVENTS],
    ids=[case[0] for case in BAD_EVENTS],
)
def test_bad_http_requests_are_rejected_with_a_4xx(lambda_fn, event, expected_status, code, fragment):
    check_rejected(*invoke(lambda_fn, event), expected_status, code, fragment)


def test_wrong_method_answer_says_which_method_is_allowed(lambda_fn):
    response = lambda_fn.handler(api_event(None, method="GET"), CONTEXT)
    assert response["headers"]["Allow"] == "POST"


def test_direct_invocation_rejects_what_the_runtime_json_parser_lets_through(lambda_fn):
    # The Lambda runtime parses the event itself and accepts NaN; an event need not be an object.
    check_rejected(
        *invoke(lambda_fn, {"input": with_pixel(2, float("nan"))}),
        400,
        "non_finite_number",
        "input[2] is nan",
    )
    check_rejected(
        *invoke(lambda_fn, {"input": with_pixel(2, float("inf"))}),
        400,
        "non_finite_number",
        "input[2] is inf",
    )
    check_rejected(*invoke(lambda_fn, None), 400, "invalid_body", "got null")


def test_a_biggest_batch_with_every_pixel_spelled_out_fits_the_body_limit(lambda_fn):
    body = json.dumps({"inputs": [[255] * 784] * 256})
    status, answer = invoke(lambda_fn, api_event(body))
    assert status == 200, answer
    assert len(answer["predictions"]) == 256


def test_one_json_log_line_per_request_without_pixel_data(lambda_fn, digits, capsys):
    image = pixels(digits[0][0])
    image[100] = 254.123456  # a value that must not show up in any log line
    answer = json.loads(lambda_fn.handler(api_event(json.dumps({"input": image})), CONTEXT)["body"])
    lambda_fn.handler({"inputs": [image, image]}, CONTEXT)
    lambda_fn.handler({"input": with_pixel(3, 987654)}, CONTEXT)

    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3
    records = [json.loads(line) for line in lines]
    assert [record["status"] for record in records] == [200, 200, 400]
    for record in records:
        assert record["request_id"] == "req-0001"
        assert record["version"] == "7"
        assert 0 < record["latency_ms"] < 10_000
    assert records[0]["predictions"] == [answer["prediction"]]
    assert records[1]["predictions"] == [answer["prediction"]] * 2
    assert records[2]["error"] == "out_of_range" and "predictions" not in records[2]
    assert "254.123456" not in "".join(lines) and "987654" not in "".join(lines)


def test_model_is_loaded_once_at_init_and_never_read_again(trained_model_dir, tmp_path, digits):
    for name in ("model.onnx", "model_card.json"):
        shutil.copy(trained_model_dir / name, tmp_path / name)
    fresh = load_handler(tmp_path)
    session = fresh.MODEL.session
    (tmp_path / "model.onnx").unlink()
    (tmp_path / "model_card.json").unlink()
    for image in digits[0][:3]:
        status, body = invoke(fresh, {"input": pixels(image)})
        assert status == 200, body
    assert fresh.MODEL.session is session


def with_the_other_output_kind(model_dir: Path, out_dir: Path) -> Path:
    """A copy of the model that ends in Softmax if it gave logits, or in Log if it gave probabilities.

    Either way the copy's card says what it outputs now, and the classes' probabilities are the same.
    """
    model = onnx.load(model_dir / "model.onnx")
    card = json.loads((model_dir / "model_card.json").read_text())
    declared = card.get("output", {})
    old = next(
        out for out in model.graph.output if out.name == declared.get("name", model.graph.output[0].name)
    )
    if declared.get("kind", "logits") == "logits":
        node, kind = onnx.helper.make_node("Softmax", [old.name], ["converted"], axis=1), "probabilities"
    else:
        node, kind = onnx.helper.make_node("Log", [old.name], ["converted"]), "logits"
    model.graph.node.append(node)
    new = onnx.ValueInfoProto()
    new.CopyFrom(old)
    new.name = "converted"
    model.graph.output.append(new)
    onnx.save(model, out_dir / "model.onnx")
    card["output"] = {"name": "converted", "kind": kind}
    (out_dir / "model_card.json").write_text(json.dumps(card))
    return out_dir


def test_softmax_is_applied_to_logits_and_only_to_logits(lambda_fn, trained_model_dir, tmp_path, digits):
    converted_fn = load_handler(with_the_other_output_kind(trained_model_dir, tmp_path))
    request = {"inputs": [pixels(image) for image in digits[0][:20]]}
    _, original = invoke(lambda_fn, request)
    _, converted = invoke(converted_fn, request)
    assert converted["predictions"] == original["predictions"]
    np.testing.assert_allclose(converted["probabilities"], original["probabilities"], atol=1e-6)


def write_model_dir(model_dir: Path, out_dir: Path, **card_changes) -> Path:
    shutil.copy(model_dir / "model.onnx", out_dir / "model.onnx")
    card = json.loads((model_dir / "model_card.json").read_text())
    (out_dir / "model_card.json").write_text(json.dumps({**card, **card_changes}))
    return out_dir


@pytest.mark.parametrize(
    "card_changes, message",
    [
        ({"output": {"kind": "log_probabilities"}}, "output kind is 'log_probabilities'"),
        ({"output": {"name": "no_such_output", "kind": "logits"}}, "names output 'no_such_output'"),
    ],
)
def test_a_model_card_that_does_not_match_the_model_fails_init(
    trained_model_dir, tmp_path, card_changes, message
):
    with pytest.raises(ValueError, match=message):
        load_handler(write_model_dir(trained_model_dir, tmp_path, **card_changes))


def test_a_package_without_a_model_fails_init_saying_what_is_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="model.onnx not found.*MODEL_DIR"):
        load_handler(tmp_path)


def test_handler_runs_without_torch(trained_model_dir):
    # numpy + onnxruntime only: torch is neither in the Lambda package nor worth its import time.
    script = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('handler', {str(HANDLER_FILE)!r})\n"
        "module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module)\n"
        "assert module.handler({'input': [0] * 784}, None)['statusCode'] == 200\n"
        "print(sorted(name for name in sys.modules if name.split('.')[0] in ('torch', 'onnx')))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        env={"MODEL_DIR": str(trained_model_dir), "PATH": ""},
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_lambda_requirements_pin_what_the_tests_ran_with():
    lock = dict(
        line.split("==") for line in (REPO / "requirements/lock.txt").read_text().split() if "==" in line
    )
    lines = (REPO / "lambda_package/requirements.txt").read_text().splitlines()
    pins = dict(line.split("==") for line in lines if line and not line.startswith("#"))
    assert {"numpy", "onnxruntime"} <= set(pins) and "torch" not in pins
    assert {name: lock.get(name) for name in pins} == pins
