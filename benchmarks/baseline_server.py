"""The inference baseline: a bare FastAPI + uvicorn (httptools) + onnxruntime server for POST /mnist.

It answers with the Lambda handler's own validation and model (imported, not copied), so the
difference from the local endpoint (HTTP API → alias → Lambda runtime) is what API Gateway, Lambda
and their runtime add, not a different amount of work.

python -m benchmarks.baseline_server --port 8001 --model-dir DIR   # DIR holds model.onnx, model_card.json
"""

from __future__ import annotations

import argparse
import json
import os

from fastapi import FastAPI, Request, Response


def create_app():
    # MODEL_DIR must be set before this import: the handler loads its model at import time.
    from lambda_package import handler

    app = FastAPI()

    def answer(status: int, payload: dict, headers: dict | None = None) -> Response:
        body = json.dumps(payload, separators=(",", ":"), allow_nan=False)
        return Response(body, status_code=status, media_type="application/json", headers=headers)

    @app.post(handler.ROUTE_PATH)
    async def predict(request: Request) -> Response:
        try:
            handler._check_content_type(dict(request.headers))
            raw = await request.body()
            try:
                text = raw.decode()
            except UnicodeDecodeError as error:
                raise handler.ClientError(
                    400, "malformed_json", f"the request body is not UTF-8: {error}"
                ) from None
            pixels, is_batch = handler._pixels_from_request(handler._parse_body(text, False))
        except handler.ClientError as error:
            return answer(
                error.status, {"error": {"code": error.code, "message": error.message}}, error.headers
            )
        probabilities = handler.MODEL.probabilities(pixels)
        predictions = probabilities.argmax(axis=1).tolist()
        if is_batch:
            payload = {"predictions": predictions, "probabilities": probabilities.tolist()}
        else:
            payload = {"prediction": predictions[0], "probabilities": probabilities[0].tolist()}
        return answer(200, {**payload, "model": handler.MODEL.info})

    return app


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model-dir", required=True)
    args = parser.parse_args(argv)
    os.environ["MODEL_DIR"] = args.model_dir
    uvicorn.run(
        create_app(),
        host="127.0.0.1",
        port=args.port,
        http="httptools",
        log_level="warning",
        access_log=False,
    )


if __name__ == "__main__":
    main()
