"""Hostile requests get a small 4xx: never a 500, never a large answer, never the input echoed back.

Every field of the event the handler reads is attacked (the body, ``isBase64Encoded``, ``headers``,
``requestContext.http``) in API Gateway events and in direct invocations. Every error answer must
stay under 4 KB, both its JSON body and the whole returned dict serialized, and quote only short
excerpts of what was sent.
"""

import base64
import json
import random
import sys

import pytest

from tests.lambda_package.test_handler import CONTEXT, api_event, load_handler

ERROR_ANSWER_LIMIT = 4096
DEPTH = 100_000


@pytest.fixture(scope="module")
def lambda_fn(trained_model_dir):
    return load_handler(trained_model_dir)


def rejected(handler_module, event) -> tuple[int, str, str]:
    """Call the handler, check the answer is a small error; (status, code, message)."""
    response = handler_module.handler(event, CONTEXT)
    assert len(response["body"]) < ERROR_ANSWER_LIMIT, response["body"][:300]
    assert len(json.dumps(response)) < ERROR_ANSWER_LIMIT
    body = json.loads(response["body"])
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    return response["statusCode"], body["error"]["code"], body["error"]["message"]


# fmt: off
DEEP_BODIES = [
    ("arrays", "[" * DEPTH),
    ("objects", '{"a":' * DEPTH),
    ("closed arrays", "[" * DEPTH + "]" * DEPTH),
    ("inside input", '{"input": ' + "[" * DEPTH),
    ("inside inputs", '{"inputs": [' + "[" * DEPTH),
    ("objects inside input", '{"input": [' + '{"a": ' * DEPTH),
]
# fmt: on


@pytest.mark.parametrize("body", [case[1] for case in DEEP_BODIES], ids=[case[0] for case in DEEP_BODIES])
@pytest.mark.parametrize("base64_body", [False, True], ids=["text", "base64"])
def test_a_deeply_nested_body_is_a_400_not_a_500(lambda_fn, body, base64_body):
    status, code, message = rejected(lambda_fn, api_event(body, base64_body=base64_body))
    assert (status, code) == (400, "nesting_too_deep")
    assert "nests" in message


@pytest.mark.parametrize("mode", ["api_gateway", "direct"])
def test_a_million_character_key_is_not_echoed_back(lambda_fn, mode):
    request = {"k" * 1_000_000: 1}
    event = api_event(json.dumps(request)) if mode == "api_gateway" else request
    status, code, message = rejected(lambda_fn, event)
    assert (status, code) == (400, "missing_field")
    assert "got 1 key: 'kkkk" in message and "(1000000 characters)" in message


@pytest.mark.parametrize(
    "mode, keys", [("api_gateway", 100_000), ("direct", 1_000_000)], ids=["api_gateway", "direct"]
)
def test_many_keys_are_counted_and_only_the_first_few_quoted(lambda_fn, mode, keys):
    request = dict.fromkeys(map(str, range(keys)), 0)
    event = api_event(json.dumps(request)) if mode == "api_gateway" else request
    status, code, message = rejected(lambda_fn, event)
    assert (status, code) == (400, "missing_field")
    assert f"got {keys} keys, the first 3: '0', '1', '2'" in message


def test_long_keys_of_emoji_are_cut_short(lambda_fn):
    # 12 bytes a character once JSON-escaped: the worst case for the size of a quoted excerpt.
    request = {str(index) + "\N{GRINNING FACE}" * 1000: index for index in range(1000)}
    status, code, message = rejected(lambda_fn, api_event(json.dumps(request, ensure_ascii=False)))
    assert (status, code) == (400, "missing_field")
    assert "got 1000 keys, the first 3: '0\N{GRINNING FACE}" in message and "(1001 characters)" in message


def base64_event(text: str) -> dict:
    """An API Gateway event that says its body is base64, with text as that body."""
    return {**api_event(None, base64_body=True), "body": text}


# fmt: off
BAD_BASE64_BODIES = [
    ("non-ASCII text", "\N{LATIN SMALL LETTER E WITH ACUTE}" * 12, "invalid_base64"),
    ("emoji after valid base64", base64.b64encode(b'{"input": []}').decode() + "\N{GRINNING FACE}",
     "invalid_base64"),
    ("a lone surrogate", "eyJ9\ud800", "invalid_base64"),
    ("missing padding", "YQ", "invalid_base64"),
    ("one character past a multiple of 4", "YWJjZ", "invalid_base64"),
    ("base64 of Latin-1 text", base64.b64encode('{"\N{LATIN SMALL LETTER E WITH ACUTE}": 1}'.encode("latin-1"))
     .decode(), "malformed_json"),
]
# fmt: on


@pytest.mark.parametrize(
    "text, code", [case[1:] for case in BAD_BASE64_BODIES], ids=[case[0] for case in BAD_BASE64_BODIES]
)
def test_a_body_that_is_not_base64_when_the_event_says_so_is_a_400(lambda_fn, text, code):
    status, got_code, message = rejected(lambda_fn, base64_event(text))
    assert (status, got_code) == (400, code)
    assert "\N{GRINNING FACE}" not in message and "\N{LATIN SMALL LETTER E WITH ACUTE}" not in message


@pytest.mark.parametrize("flag", ["false", "true", 1, 0, [], {"a": 1}])
def test_is_base64_encoded_must_be_a_boolean(lambda_fn, flag):
    # bool("false") is True: a string flag would decode a plain body as base64, or the other way round.
    event = {**api_event('{"input": []}'), "isBase64Encoded": flag}
    status, code, message = rejected(lambda_fn, event)
    assert (status, code) == (400, "invalid_event")
    assert "isBase64Encoded must be true or false" in message


def test_a_null_or_missing_is_base64_encoded_means_a_plain_body(lambda_fn):
    event = api_event(json.dumps({"input": [0] * 784}))
    for flag_field in ({"isBase64Encoded": None}, {}):
        plain = {key: value for key, value in event.items() if key != "isBase64Encoded"}
        assert lambda_fn.handler({**plain, **flag_field}, CONTEXT)["statusCode"] == 200


VALID_BODY = json.dumps({"input": [0] * 784})


@pytest.mark.parametrize("headers", [["content-type", "text/plain"], "content-type: text/plain", 5, True])
def test_headers_that_are_not_an_object_are_a_400(lambda_fn, headers):
    status, code, message = rejected(lambda_fn, {**api_event(VALID_BODY), "headers": headers})
    assert (status, code) == (400, "invalid_event")
    assert "headers must be an object" in message


@pytest.mark.parametrize("value", [5, None, ["application/json"], {"type": "application/json"}])
def test_a_content_type_that_is_not_a_string_is_a_400(lambda_fn, value):
    event = {**api_event(VALID_BODY), "headers": {"Content-Type": value}}
    status, code, message = rejected(lambda_fn, event)
    assert (status, code) == (400, "invalid_event")
    assert "Content-Type header must be a string" in message


@pytest.mark.parametrize(
    "headers", [None, {}, {5: "a key a Python caller can send", "content-type": "application/json"}]
)
def test_null_empty_and_odd_keyed_headers_are_read_as_far_as_they_go(lambda_fn, headers):
    response = lambda_fn.handler({**api_event(VALID_BODY), "headers": headers}, CONTEXT)
    assert response["statusCode"] == 200, response["body"]


def test_a_huge_number_of_headers_is_read_without_echoing_them(lambda_fn):
    headers = {f"x-header-{index}": "v" * 20 for index in range(100_000)}
    assert lambda_fn.handler({**api_event(VALID_BODY), "headers": headers}, CONTEXT)["statusCode"] == 200
    headers["content-type"] = "text/" + "x" * 1_000_000
    status, code, message = rejected(lambda_fn, {**api_event(VALID_BODY), "headers": headers})
    assert (status, code) == (415, "unsupported_media_type")
    assert "'text/xxxx" in message and "(1000005 characters)" in message


def with_http(**http) -> dict:
    """A valid API Gateway event whose requestContext.http is http (method and path included)."""
    event = api_event(VALID_BODY)
    return {**event, "requestContext": {**event["requestContext"], "http": http}}


@pytest.mark.parametrize(
    "http, status, code, fragment",
    [
        ({"method": "POST", "path": "/" + "p" * 1_000_000}, 404, "not_found", "(1000001 characters)"),
        ({"method": "P" * 1_000_000, "path": "/mnist"}, 405, "method_not_allowed", "(1000000 characters)"),
        ({"method": "POST", "path": ["/mnist"] * 100_000}, 400, "invalid_event", "path must be a string"),
        ({"method": "POST", "path": 404}, 400, "invalid_event", "path must be a string"),
        ({"method": {"POST": ["/mnist"] * 100_000}, "path": "/mnist"}, 400, "invalid_event",
         "method must be a string"),
        ({"method": None, "path": "/mnist"}, 400, "invalid_event", "method must be a string"),
    ],
    ids=["long path", "long method", "path is an array", "path is a number", "method is an object",
         "method is null"],
)  # fmt: skip
def test_a_route_of_odd_type_or_size_is_a_small_4xx(lambda_fn, http, status, code, fragment):
    got_status, got_code, message = rejected(lambda_fn, with_http(**http))
    assert (got_status, got_code) == (status, code)
    assert fragment in message


@pytest.mark.parametrize("request_context", [None, "http", ["http"], {"http": None}, {"http": "POST /mnist"}])
def test_an_event_without_an_http_object_is_read_as_a_direct_invocation(lambda_fn, request_context):
    event = {**api_event(VALID_BODY), "requestContext": request_context}
    status, code, message = rejected(lambda_fn, event)
    assert (status, code) == (400, "missing_field")
    assert "got 8 keys, the first 3: 'version', 'routeKey', 'rawPath'" in message


MILLION_XS = "x" * 1_000_000
# fmt: off
HUGE_VALUES = [
    ("input is a huge string", {"input": MILLION_XS}, "invalid_type", "(1000000 characters)"),
    ("a pixel is a huge string", {"input": [MILLION_XS] + [0] * 783}, "invalid_type", "(1000000 characters)"),
    ("a batch image is a huge string", {"inputs": [[0] * 784, MILLION_XS]}, "invalid_type",
     "inputs[1] must be an array"),
    ("a pixel of 4000 digits", {"input": [10**4000] + [0] * 783}, "out_of_range", "input[0] is 1000"),
]
# fmt: on


@pytest.mark.parametrize(
    "request_object, code, fragment",
    [case[1:] for case in HUGE_VALUES],
    ids=[case[0] for case in HUGE_VALUES],
)
@pytest.mark.parametrize("mode", ["api_gateway", "direct"])
def test_huge_values_are_quoted_cut_short(lambda_fn, mode, request_object, code, fragment):
    event = api_event(json.dumps(request_object)) if mode == "api_gateway" else request_object
    status, got_code, message = rejected(lambda_fn, event)
    assert (status, got_code) == (400, code)
    assert fragment in message


def test_a_number_of_more_digits_than_python_reads_is_out_of_range(lambda_fn):
    limit = sys.get_int_max_str_digits()
    status, code, message = rejected(lambda_fn, api_event('{"input": [' + "9" * (limit + 1) + "]}"))
    assert (status, code) == (400, "out_of_range")
    assert f"more than {limit} digits" in message and "set_int_max_str_digits" not in message


def test_an_int_too_long_to_write_out_is_out_of_range_not_a_500(lambda_fn):
    # Only a Python caller can hand one over (JSON cannot carry it), and repr() of it raises.
    limit = sys.get_int_max_str_digits()
    status, code, message = rejected(lambda_fn, {"input": [10**limit] + [0] * 783})
    assert (status, code) == (400, "out_of_range")
    assert f"input[0] is an integer of more than {limit} digits" in message


@pytest.mark.parametrize("event", [None, True, 0, 1.5, float("nan"), "x" * 1_000_000, [], [{"input": []}]])
def test_a_direct_invocation_of_any_json_type_but_an_object_is_invalid_body(lambda_fn, event):
    status, code, message = rejected(lambda_fn, event)
    assert (status, code) == (400, "invalid_body")
    assert "must be a JSON object" in message


@pytest.mark.parametrize(
    "body", [b'{"input": []}', bytearray(b"{}"), memoryview(b"{}"), 5, ["{}"], {"input": []}]
)
def test_an_event_body_that_is_not_a_string_is_invalid_body(lambda_fn, body):
    status, code, message = rejected(lambda_fn, {**api_event(None), "body": body})
    assert (status, code) == (400, "invalid_body")
    assert "the event body must be a string" in message


# -- a deterministic fuzz loop (hypothesis is not among the project's pinned dependencies) -------------

ODD_TEXT = ["", "x", "input", "inputs", "/mnist", "POST", "application/json", "\N{GRINNING FACE}", "\ud800",
            "\x00", '"', "\\", "NaN", "[", "{", "é" * 50, "k" * 5000]  # fmt: skip


def random_text(rng: random.Random) -> str:
    if rng.random() < 0.5:
        return rng.choice(ODD_TEXT)
    alphabet = 'ab/{}[]",:0123456789 \\é\N{GRINNING FACE}\ud800\x00'
    return "".join(rng.choice(alphabet) for _ in range(rng.choice([1, 5, 40, 3000])))


def random_json(rng: random.Random, depth: int = 0):
    """Any JSON value the Lambda runtime could hand over (NaN included: its parser accepts it)."""
    kind = rng.choice(
        ["null", "bool", "int", "float", "text", "list", "dict"] if depth < 4 else ["int", "text"]
    )
    if kind == "null":
        return None
    if kind == "bool":
        return rng.random() < 0.5
    if kind == "int":
        return rng.choice([0, 1, 255, 256, -1, 10**400, rng.randrange(-(10**30), 10**30)])
    if kind == "float":
        return rng.choice([0.5, 255.0, 255.5, -0.0, 1e308, float("nan"), float("inf"), float("-inf")])
    if kind == "text":
        return random_text(rng)
    if kind == "list":
        return [random_json(rng, depth + 1) for _ in range(rng.choice([0, 1, 3, 20]))]
    return {random_text(rng): random_json(rng, depth + 1) for _ in range(rng.choice([0, 1, 3, 20]))}


def random_image(rng: random.Random):
    image = [rng.choice([0, 17, 255, 12.5]) for _ in range(784)]
    mutation = rng.random()
    if mutation < 0.3:
        image[rng.randrange(784)] = random_json(rng, 3)
    elif mutation < 0.4:
        del image[rng.randrange(784) :]
    elif mutation < 0.5:
        return random_json(rng, 2)
    return image


def random_request(rng: random.Random):
    shape = rng.random()
    if shape < 0.35:
        return {"input": random_image(rng)}
    if shape < 0.6:
        if rng.random() < 0.1:
            return {"inputs": [random_image(rng)] * 257}
        return {"inputs": [random_image(rng) for _ in range(rng.choice([0, 1, 2, 5]))]}
    if shape < 0.7:
        return {"input": random_image(rng), "inputs": [random_image(rng)], random_text(rng): 1}
    return random_json(rng)


def random_body(rng: random.Random, request) -> object:
    """A body as API Gateway (or a confused direct caller) could put it in the event."""
    text = json.dumps(request)
    choice = rng.random()
    if choice < 0.1:
        text = text[: rng.randrange(len(text) + 1)]
    elif choice < 0.2:
        opener = rng.choice(["[", '{"a":', '{"input":[', '{"inputs":['])
        text = opener * rng.choice([10, 1000, 100_000])
    elif choice < 0.25:
        return rng.choice([None, b'{"input": []}', bytearray(b"[]"), 5, [text], {"input": []}])
    elif choice < 0.3:
        text = random_text(rng)
    return text


def random_event(rng: random.Random):
    request = random_request(rng)
    if rng.random() < 0.3:
        return request  # a direct invocation
    event = api_event(None)
    body = random_body(rng, request)
    if isinstance(body, str) and rng.random() < 0.2:
        event["isBase64Encoded"] = True
        as_bytes = body.encode("utf-8", "surrogatepass")
        body = rng.choice(
            [base64.b64encode(as_bytes).decode(), body, base64.b64encode(as_bytes).decode()[1:]]
        )
    if body is not None:
        event["body"] = body
    if rng.random() < 0.15:
        http = event["requestContext"]["http"]
        http[rng.choice(["method", "path"])] = rng.choice([random_json(rng, 2), random_text(rng)])
    for field, odd in (
        ("isBase64Encoded", lambda: random_json(rng, 3)),
        ("headers", lambda: rng.choice([random_json(rng, 2), {"content-type": random_json(rng, 3)}])),
        ("requestContext", lambda: random_json(rng, 2)),
    ):
        if rng.random() < 0.1:
            event[field] = odd()
    return event


EVENTS_PER_SEED = 400


@pytest.mark.parametrize("seed", range(4))
def test_any_event_gets_a_prediction_or_a_small_4xx_never_an_exception(lambda_fn, seed, capsys):
    rng = random.Random(seed)
    answered = set()  # 200, or the error codes
    for attempt in range(EVENTS_PER_SEED):
        event = random_event(rng)
        response = lambda_fn.handler(event, CONTEXT)  # raising here is the failure this test looks for
        status, body = response["statusCode"], json.loads(response["body"])
        if status == 200:
            assert {"prediction", "model"} <= set(body) or {"predictions", "model"} <= set(body), (
                seed,
                attempt,
            )
            answered.add(200)
            continue
        assert 400 <= status < 500, (seed, attempt, body)
        assert set(body["error"]) == {"code", "message"}, (seed, attempt)
        answered.add(body["error"]["code"])
        assert len(response["body"]) < ERROR_ANSWER_LIMIT, (seed, attempt, response["body"][:300])
        assert len(json.dumps(response)) < ERROR_ANSWER_LIMIT, (seed, attempt)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == EVENTS_PER_SEED
    assert max(map(len, lines)) < ERROR_ANSWER_LIMIT  # the log line is bounded too: no input in it
    # The loop reaches the model and each layer of checks, so it can find what they miss.
    assert {200, "invalid_event", "invalid_base64", "nesting_too_deep", "malformed_json", "invalid_body",
            "missing_field", "invalid_type"} <= answered  # fmt: skip
