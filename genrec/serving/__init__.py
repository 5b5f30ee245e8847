"""Serving genrec over HTTP (the ``serve`` extra: fastapi, uvicorn, prometheus-client).

- `genrec.serving.config`: `ServeConfig`, the server's settings, and `load_api_key`;
- `genrec.serving.batcher`: `MicroBatcher`, concurrent requests gathered into one model call on one thread;
- `genrec.serving.app`: `create_app`, the FastAPI app factory, and its routes;
- `genrec.serving.answers`: request/response models, `ItemIndex` (history resolution and answers), `check_query`;
- `genrec.serving.middleware`: `RequestError`, the JSON error handlers, Prometheus `Metrics`, `RequestContext`;
- `genrec.serving.engine`: `ProcessRecommender`, the model in a child process (the default engine);
- `genrec.serving.server`: `genrec serve CHECKPOINT` (uvicorn) and `serve_in_thread`;
- `genrec.serving.vllm_backend`: the optional ``--backend vllm`` (GPU only).

The client is `genrec.client.GenrecClient` (``genrec recommend``).

Example:
    $ genrec serve runs/demo/checkpoints/sft --port 8000
    $ genrec recommend --server http://127.0.0.1:8000 --history 12 40 --k 5
"""
