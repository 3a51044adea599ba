"""MNIST digit inference on AWS Lambda: validate the request, run the ONNX model, answer in JSON.

Lambda handler setting: ``handler.handler``. Runtime dependencies: numpy and onnxruntime only.

Two kinds of caller, one response shape:

- API Gateway HTTP API events (payload format 2.0, ``POST /mnist``; the body may be base64-encoded);
- direct ``lambda:Invoke`` calls, whose event is the request object itself.

Both get an API Gateway proxy response, ``{"statusCode": int, "headers": {...}, "body": "<json>"}``:
API Gateway turns it into the HTTP response, and a direct caller checks ``statusCode`` and parses
``body`` the same way.

Request (a JSON object)::

    {"input": [784 numbers in 0..255]}                one 28x28 image, row-major grayscale
    {"inputs": [[784 numbers], ...]}                  1..MAX_BATCH images

Response::

    200 {"prediction": d, "probabilities": [10 floats], "model": MODEL_INFO}
    200 {"predictions": [d, ...], "probabilities": [[10 floats], ...], "model": MODEL_INFO}
    4xx {"error": {"code": "...", "message": "..."}}

MODEL_INFO is ``{"version": $AWS_LAMBDA_FUNCTION_VERSION, "training_job": model_card.json's
"training_job", "model_sha256": sha256 of model.onnx}``. Bad input is always a 4xx (400; 404 wrong
route; 405 wrong method; 413 body over MAX_BODY_BYTES; 415 a Content-Type other than JSON, while a
missing one is accepted). Among the 400s, ``invalid_event`` names an event field of the wrong type
(``headers`` not an object; ``isBase64Encoded`` not a boolean; ``requestContext.http.path`` or
``.method`` or the Content-Type not a string), ``nesting_too_deep`` a body nested beyond the JSON
parser's recursion limit, and ``out_of_range`` also a number of more digits than Python reads
(``sys.get_int_max_str_digits()``). A fault in the function itself is raised, not answered, so that
Lambda counts it in its Errors metric and API Gateway answers 500.

Error messages quote what was sent only in excerpts: EXCERPT_CHARS characters of a value (with a
long string's length), at most KEYS_QUOTED keys (with the key count). So an error answer stays under
4 KB whatever the request, and never echoes it back in bulk.

The model is ``model.onnx`` with ``model_card.json`` next to this file (or in ``$MODEL_DIR``). It
is loaded once, at import, which is Lambda's init phase. Its input is raw pixels, float32
``[N, 784]``: preprocessing is inside the graph. The card's ``"output": {"name", "kind"}`` picks the
output and says whether it holds ``"logits"`` (the default; softmax is applied here) or
``"probabilities"``.

Every request writes one JSON line to stdout: request id, status, latency, predictions or error
code, function version, source (``"http"``: through API Gateway; ``"invoke"``: a direct Invoke),
and for an answered request the model sha and, per image, the features
the drift monitor compares with the training data (``feature_record``). Never pixel data.
"""

import base64
import hashlib
import json
import math
import os
import sys
import time
from itertools import chain, islice
from pathlib import Path
from typing import NoReturn

import numpy as np
import onnxruntime as ort

PIXELS = 28 * 28
MAX_BATCH = 256
# Room for MAX_BATCH images written as integers with any spacing ("255, " is 5 bytes a pixel),
# or as floats of up to 8 characters; far below Lambda's 6 MB synchronous payload limit.
MAX_BODY_BYTES = 2 * 1024 * 1024
ROUTE_PATH = "/mnist"
OUTPUT_KINDS = ("logits", "probabilities")

# Error messages quote what was sent only in excerpts: so many characters of a value, so many keys.
EXCERPT_CHARS = 24
KEYS_QUOTED = 3

_NUMBER_TYPES = {int, float}  # exact types: bool is an int subclass and must not pass as a pixel
_JSON_HEADERS = {"Content-Type": "application/json"}


class ClientError(Exception):
    """A request the caller must fix; answered with ``status`` and an error body, never raised out."""

    def __init__(self, status: int, code: str, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


class Model:
    """The ONNX classifier, loaded and checked once, and the facts every response carries."""

    def __init__(self, model_dir: Path):
        model_path, card_path = model_dir / "model.onnx", model_dir / "model_card.json"
        for path in (model_path, card_path):
            if not path.is_file():
                raise FileNotFoundError(
                    f"{path} not found: the Lambda package needs model.onnx and model_card.json "
                    "next to handler.py (or set MODEL_DIR)"
                )
        model_bytes = model_path.read_bytes()
        card = json.loads(card_path.read_text())

        self.session = ort.InferenceSession(
            model_bytes, _session_options(), providers=["CPUExecutionProvider"]
        )
        self.input_name = _checked_input(self.session, model_path)
        self.output_name, kind = _checked_output(self.session, card.get("output") or {}, model_path)
        self.outputs_logits = kind == "logits"
        self.info = {
            "version": os.environ.get("AWS_LAMBDA_FUNCTION_VERSION"),
            "training_job": card.get("training_job"),
            "model_sha256": hashlib.sha256(model_bytes).hexdigest(),
        }
        # One run now, in the init phase, so the first request does not pay for lazy allocations,
        # and a model with the wrong output shape fails the deployment instead of a request.
        scores = self.probabilities(np.zeros((1, PIXELS), dtype=np.float32))
        if scores.shape != (1, 10):
            raise ValueError(
                f"{model_path}: output {self.output_name!r} has shape {scores.shape}, expected [N, 10]"
            )

    def probabilities(self, pixels: np.ndarray) -> np.ndarray:
        """Class probabilities, float64 [N, 10], for raw pixels float32 [N, 784]."""
        (scores,) = self.session.run([self.output_name], {self.input_name: pixels})
        if not self.outputs_logits:
            return scores.astype(np.float64)
        shifted = scores.astype(np.float64) - scores.max(axis=1, keepdims=True)  # exp cannot overflow
        exp = np.exp(shifted)
        return exp / exp.sum(axis=1, keepdims=True)


def _session_options() -> ort.SessionOptions:
    options = ort.SessionOptions()
    # Lambda gives one vCPU below 1,769 MB; extra threads would only spin on it and bill for it.
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only: warnings would be noise in every cold start's log
    return options


def _checked_input(session: ort.InferenceSession, model_path: Path) -> str:
    inputs = session.get_inputs()
    if len(inputs) != 1:
        raise ValueError(f"{model_path}: expected one input (raw pixels [N, 784]), found {len(inputs)}")
    (graph_input,) = inputs
    if graph_input.type != "tensor(float)" or len(graph_input.shape) != 2 or graph_input.shape[1] != PIXELS:
        raise ValueError(
            f"{model_path}: input {graph_input.name!r} is {graph_input.type} {graph_input.shape}, "
            f"expected tensor(float) [N, {PIXELS}] of raw pixels"
        )
    return graph_input.name


def _checked_output(session: ort.InferenceSession, declared: dict, model_path: Path) -> tuple[str, str]:
    names = [output.name for output in session.get_outputs()]
    name = declared.get("name", names[0])
    kind = declared.get("kind", "logits")
    if name not in names:
        raise ValueError(f"model_card.json names output {name!r}, but {model_path} has outputs {names}")
    if kind not in OUTPUT_KINDS:
        raise ValueError(f"model_card.json output kind is {kind!r}; expected one of {list(OUTPUT_KINDS)}")
    return name, kind


def handler(event, context):
    """Lambda entry point: answer one request (see the module docstring for the contract)."""
    started = time.perf_counter()
    log = {
        "request_id": getattr(context, "aws_request_id", None),
        "version": MODEL.info["version"],
        "source": event_source(event),
    }
    try:
        request = _request_from_event(event)
        pixels, is_batch = _pixels_from_request(request)
        probabilities = MODEL.probabilities(pixels)
        predictions = probabilities.argmax(axis=1).tolist()
        if is_batch:
            payload = {"predictions": predictions, "probabilities": probabilities.tolist()}
        else:
            payload = {"prediction": predictions[0], "probabilities": probabilities[0].tolist()}
        payload["model"] = MODEL.info
        response = _response(200, payload)
        log.update(status=200, images=len(predictions), predictions=predictions)
        log.update(features=feature_record(pixels, probabilities), model_sha256=MODEL.info["model_sha256"])
    except ClientError as error:
        response = _response(
            error.status, {"error": {"code": error.code, "message": error.message}}, error.headers
        )
        log.update(status=error.status, error=error.code)  # the message may quote input values: not logged
    except Exception:
        _log_line(log, started, status=500, error="internal_error")
        raise
    _log_line(log, started)
    return response


def event_source(event) -> str:
    """``"http"`` for a request through API Gateway (a client), ``"invoke"`` for a direct Invoke
    (the pipeline's smoke test and canary): the drift monitor watches clients only."""
    if isinstance(event, dict) and isinstance(event.get("requestContext"), dict):
        return "http"
    return "invoke"


def feature_record(pixels: np.ndarray, probabilities: np.ndarray) -> dict:
    """What the drift monitor (mnist_pipeline.monitor) reads of each image, never its pixels: the
    confidence (the top probability), the mean intensity (0..255) and the share of nonzero pixels,
    defined as data_checks' ``pixel_mean`` and ``nonzero_fraction``, as parallel lists."""
    return {
        "confidence": np.round(probabilities.max(axis=1), 4).tolist(),
        "pixel_mean": np.round(pixels.mean(axis=1, dtype=np.float64), 3).tolist(),
        "nonzero_fraction": np.round(np.count_nonzero(pixels, axis=1) / PIXELS, 4).tolist(),
    }


def _response(status: int, payload: dict, headers: dict | None = None) -> dict:
    # allow_nan=False: a model that emits NaN is a fault to raise, never invalid JSON to send.
    body = json.dumps(payload, separators=(",", ":"), allow_nan=False)
    return {"statusCode": status, "headers": {**_JSON_HEADERS, **(headers or {})}, "body": body}


def _log_line(fields: dict, started: float, **more) -> None:
    latency_ms = round((time.perf_counter() - started) * 1000, 3)
    line = json.dumps({"message": "mnist request", **fields, **more, "latency_ms": latency_ms})
    # One write, not print's two: the Lambda runtime's stdout flushes (a syscall) on every write.
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _request_from_event(event):
    """The request object: the parsed body of an API Gateway event, or a direct invocation's event."""
    if not isinstance(event, dict):
        raise ClientError(
            400,
            "invalid_body",
            f'the request must be a JSON object like {{"input": [...]}}, got {_json_type(event)}',
        )
    context = event.get("requestContext")
    http = context.get("http") if isinstance(context, dict) else None
    if not isinstance(http, dict):
        return event
    _check_route(http)
    _check_content_type(event.get("headers"))
    is_base64 = event.get("isBase64Encoded")
    if not isinstance(is_base64, bool | None):  # bool("false") is True: a guess could decode either way
        raise ClientError(
            400, "invalid_event", f"isBase64Encoded must be true or false, got {_json_type(is_base64)}"
        )
    return _parse_body(event.get("body"), is_base64 is True)


def _check_route(http: dict) -> None:
    path, method = http.get("path", ""), http.get("method", "")
    for name, value in (("path", path), ("method", method)):
        if not isinstance(value, str):
            raise ClientError(
                400, "invalid_event", f"requestContext.http.{name} must be a string, got {_json_type(value)}"
            )
    # endswith: a named stage or a custom-domain mapping prefixes the path (/prod/mnist).
    if not path.rstrip("/").endswith(ROUTE_PATH):
        raise ClientError(404, "not_found", f"no route {_short(path)}; send POST {ROUTE_PATH}")
    if method != "POST":
        raise ClientError(
            405,
            "method_not_allowed",
            f"{_short(method)} is not allowed on {ROUTE_PATH}; use POST",
            {"Allow": "POST"},
        )


def _check_content_type(headers) -> None:
    if headers is None:  # a hand-made event without the field
        return
    if not isinstance(headers, dict):
        raise ClientError(
            400, "invalid_event", f"the event's headers must be an object, got {_json_type(headers)}"
        )
    name = next((name for name in headers if isinstance(name, str) and name.lower() == "content-type"), None)
    if name is None:
        return  # many clients omit it; the body must still be JSON
    content_type = headers[name]
    if not isinstance(content_type, str):
        raise ClientError(
            400, "invalid_event", f"the Content-Type header must be a string, got {_json_type(content_type)}"
        )
    media_type = content_type.split(";")[0].strip().lower()
    if media_type != "application/json" and not media_type.endswith("+json"):
        raise ClientError(
            415,
            "unsupported_media_type",
            f"Content-Type {_short(content_type)} is not supported; send application/json",
        )


def _parse_body(body, is_base64: bool):
    if body is None or body == "":
        raise ClientError(
            400, "empty_body", 'the request body is empty; send {"input": [784 numbers 0..255]}'
        )
    if not isinstance(body, str):
        raise ClientError(400, "invalid_body", f"the event body must be a string, got {_json_type(body)}")
    # Checked before decoding so a huge body costs nothing; base64 carries 3 bytes in 4 characters.
    if len(body) * (3 / 4 if is_base64 else 1) > MAX_BODY_BYTES:
        raise ClientError(
            413,
            "payload_too_large",
            f"the request body is over {MAX_BODY_BYTES} bytes; send at most {MAX_BATCH} images per request",
        )
    if is_base64:
        try:
            body = base64.b64decode(body, validate=True)
        except ValueError as error:  # binascii.Error, or a str with non-ASCII characters
            raise ClientError(
                400, "invalid_base64", f"isBase64Encoded is true but the body is not base64: {error}"
            ) from None
    try:
        return json.loads(body, parse_constant=_reject_constant)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:  # the latter: bytes that are not UTF-8
        raise ClientError(400, "malformed_json", f"the request body is not valid JSON: {error}") from None
    except ValueError:  # int() refuses numbers of more than sys.get_int_max_str_digits() digits
        raise ClientError(
            400,
            "out_of_range",
            f"the request body has a number of more than {sys.get_int_max_str_digits()} digits; "
            "pixels are numbers 0..255",
        ) from None
    except RecursionError:  # the parser recurses once per nested array or object: '[' * 100000
        raise ClientError(
            400,
            "nesting_too_deep",
            "the request body nests arrays or objects too deeply; 'input' is a flat array of "
            f"{PIXELS} numbers and 'inputs' an array of such arrays",
        ) from None


def _reject_constant(name: str):
    # Python's json accepts NaN and Infinity, which are not JSON and not pixels.
    raise ClientError(
        400, "non_finite_number", f"{name} is not a valid JSON number; pixels are numbers 0..255"
    )


def _pixels_from_request(request) -> tuple[np.ndarray, bool]:
    """Validated pixels, float32 [N, 784], and whether the request was the batch form."""
    if not isinstance(request, dict):
        raise ClientError(
            400,
            "invalid_body",
            f'the request must be a JSON object like {{"input": [...]}}, got {_json_type(request)}',
        )
    if "input" in request and "inputs" in request:
        raise ClientError(
            400, "conflicting_fields", "send either 'input' (one image) or 'inputs' (a batch), not both"
        )
    if "input" in request:
        image = request["input"]
        if not isinstance(image, list):
            raise ClientError(
                400, "invalid_type", f"'input' must be an array of {PIXELS} numbers, got {_json_type(image)}"
            )
        return _checked_pixels([image], "input"), False
    if "inputs" in request:
        images = request["inputs"]
        if not isinstance(images, list):
            raise ClientError(
                400, "invalid_type", f"'inputs' must be an array of images, got {_json_type(images)}"
            )
        if not images:
            raise ClientError(400, "empty_batch", f"'inputs' is empty; send 1 to {MAX_BATCH} images")
        if len(images) > MAX_BATCH:
            raise ClientError(
                400, "too_many_images", f"'inputs' has {len(images)} images; at most {MAX_BATCH} per request"
            )
        for row, image in enumerate(images):
            if not isinstance(image, list):
                raise ClientError(
                    400,
                    "invalid_type",
                    f"inputs[{row}] must be an array of {PIXELS} numbers, got {_json_type(image)}",
                )
        return _checked_pixels(images, "inputs"), True
    raise ClientError(
        400,
        "missing_field",
        f"the request needs 'input' ({PIXELS} numbers 0..255) or 'inputs' "
        f"(an array of such arrays); {_keys_excerpt(request)}",
    )


def _checked_pixels(images: list[list], field: str) -> np.ndarray:
    """float32 [N, 784] from the lists in request[field], or a ClientError naming the first bad value."""
    # The common, valid case stays in C: one pass collecting the element types, one min, one max.
    if not set(map(type, chain.from_iterable(images))) <= _NUMBER_TYPES:
        _raise_first_bad_value(images, field)
    for row, image in enumerate(images):
        if len(image) != PIXELS:
            raise ClientError(
                400,
                "wrong_length",
                f"{_image_name(field, row)} has {len(image)} values; "
                f"expected {PIXELS} (28x28 pixels, row-major)",
            )
    try:
        pixels = np.array(images, dtype=np.float64)
    except OverflowError:  # an integer beyond any float
        _raise_first_bad_value(images, field)
    # Also false for NaN, which the runtime's JSON parser lets through in a direct invocation.
    if not (pixels.min() >= 0 and pixels.max() <= 255):
        _raise_first_bad_value(images, field)
    return pixels.astype(np.float32)


def _raise_first_bad_value(images: list[list], field: str) -> NoReturn:
    """The slow path, for rejected requests only: find the first bad pixel and say what it is."""
    for row, image in enumerate(images):
        for col, value in enumerate(image):
            name = f"{_image_name(field, row)}[{col}]"
            if type(value) not in _NUMBER_TYPES:
                hint = (
                    "; 'input' is one flat image, send several as 'inputs'" if isinstance(value, list) else ""
                )
                raise ClientError(
                    400, "invalid_type", f"{name} is {_json_type(value)}; pixels are numbers 0..255{hint}"
                )
            if isinstance(value, float) and not math.isfinite(value):
                raise ClientError(
                    400, "non_finite_number", f"{name} is {value}; pixels are finite numbers 0..255"
                )
            if not 0 <= value <= 255:
                raise ClientError(400, "out_of_range", f"{name} is {_short(value)}; pixels are in 0..255")
    raise RuntimeError(f"{field} was rejected but no bad pixel was found")  # a bug here, not bad input


def _image_name(field: str, row: int) -> str:
    return field if field == "input" else f"{field}[{row}]"


def _json_type(value) -> str:
    """What a JSON client sent, in JSON's words."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return f"a string ({_short(value)})"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _keys_excerpt(request: dict) -> str:
    """How many keys the request has and the first few, cut short: never all of them."""
    count = len(request)
    if count == 0:
        return "got no keys"
    quoted = ", ".join(_short(key) for key in islice(request, KEYS_QUOTED))
    if count == 1:
        return f"got 1 key: {quoted}"
    if count <= KEYS_QUOTED:
        return f"got {count} keys: {quoted}"
    return f"got {count} keys, the first {KEYS_QUOTED}: {quoted}"


def _short(value) -> str:
    """An excerpt of value for an error message: the start of its repr, and a cut string's length."""
    is_long_string = isinstance(value, str) and len(value) > EXCERPT_CHARS
    try:
        shown = repr(value[: EXCERPT_CHARS + 1] if is_long_string else value)  # never repr a huge string
    except ValueError:  # an int too long to write out: only a Python caller has one, json.loads refuses it
        return f"an integer of more than {sys.get_int_max_str_digits()} digits"
    if len(shown) > EXCERPT_CHARS:
        shown = shown[: EXCERPT_CHARS - 4] + "..."
    return f"{shown} ({len(value)} characters)" if is_long_string else shown


MODEL = Model(Path(os.environ.get("MODEL_DIR") or Path(__file__).resolve().parent))
