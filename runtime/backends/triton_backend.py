"""A model served by Triton Inference Server, behind the same interface as the local backends: ``tritonclient``
over HTTP (``http://HOST:8000``, the default for a bare ``HOST:PORT``) or gRPC (``grpc://HOST:8001``).

Each thread gets its own client: the HTTP client runs on gevent, whose connections belong to the thread that made
them (the pipeline infers in a worker thread). The model's ``ModelInfo`` comes from the ``offseg.*`` parameters
that ``offseg-export --format triton`` writes into config.pbtxt, checked against the config's I/O like a local
file's metadata against its graph.
"""
from __future__ import annotations

import threading
from urllib.parse import urlsplit

import numpy as np

from ..errors import OffsegError
from . import ModelInfo

PROTOCOLS = {"http": "tritonclient.http", "grpc": "tritonclient.grpc"}
NETWORK_TIMEOUT_S = 60.0  # one inference (a server that hangs longer is an error, not a stall of the run)


def parse_url(url: str) -> tuple[str, str]:
    """(protocol, ``host:port``) of a Triton URL; OffsegError for another scheme or no port."""
    parts = urlsplit(url if "://" in url else f"http://{url}")
    if parts.scheme not in PROTOCOLS:
        raise OffsegError(f"--triton {url}: the scheme must be http:// or grpc://, got {parts.scheme}://")
    try:
        port = parts.port
    except ValueError:
        port = None
    if not parts.hostname or port is None or parts.path not in ("", "/"):
        raise OffsegError(f"--triton {url}: give the server as http://HOST:PORT (default port 8000) or "
                          "grpc://HOST:PORT (8001)")
    return parts.scheme, f"{parts.hostname}:{port}"


def _client_module(protocol: str):
    import importlib
    try:
        return importlib.import_module(PROTOCOLS[protocol])
    except ImportError:
        raise OffsegError(f"the Triton client for {protocol.upper()} is not installed: pip install "
                          "'offseg-deploy[triton]'") from None


def _config(client, protocol: str, model_name: str) -> dict:
    """The model's config as the JSON dict of Triton's model_config.proto."""
    if protocol == "grpc":
        return client.get_model_config(model_name, as_json=True)["config"]
    return client.get_model_config(model_name)


def _models(client, protocol: str) -> list[str]:
    index = client.get_model_repository_index(**({"as_json": True} if protocol == "grpc" else {}))
    models = index.get("models", []) if isinstance(index, dict) else index
    return sorted(m["name"] for m in models)


class TritonBackend:
    def __init__(self, url: str, model_name: str | None = None):
        protocol, self.address = parse_url(url)
        self.module, self.protocol = _client_module(protocol), protocol
        self.clients, self.local = [], threading.local()
        try:
            live = self.client().is_server_live()
        except Exception as error:  # refused, unreachable, not a Triton server: the clients raise various types
            raise OffsegError(f"no Triton server answers at {url} ({str(error).splitlines()[0][:160]})") from None
        if not live:
            raise OffsegError(f"the Triton server at {url} is not live")
        models = _models(self.client(), protocol)
        if model_name is None:
            if len(models) != 1:
                raise OffsegError(f"the Triton server at {url} serves {len(models)} models "
                                  f"({', '.join(models) or 'none'}): choose one with --model-name")
            model_name = models[0]
        if model_name not in models or not self.client().is_model_ready(model_name):
            raise OffsegError(f"the Triton server at {url} has no ready model {model_name!r} (it serves: "
                              f"{', '.join(models) or 'nothing'})")
        self.model_name = model_name
        self.info = self._model_info(_config(self.client(), protocol, model_name), f"Triton model {model_name}")
        self.description = f"Triton Inference Server at {url} ({protocol.upper()}), model {model_name}"

    def client(self):
        """This thread's client (made on first use)."""
        if getattr(self.local, "client", None) is None:
            options = {"network_timeout": NETWORK_TIMEOUT_S} if self.protocol == "http" else {}
            self.local.client = self.module.InferenceServerClient(self.address, **options)
            self.clients.append(self.local.client)
        return self.local.client

    def _model_info(self, config: dict, source: str) -> ModelInfo:
        """ModelInfo from the config's offseg parameters, checked against its input and output."""
        meta = {key: value.get("string_value") for key, value in config.get("parameters", {}).items()}
        max_batch = int(config.get("max_batch_size", 0))
        graph_input, graph_output = config["input"][0], config["output"][0]
        batch = [-1] if max_batch > 0 else []
        input_shape = [*batch, *map(int, graph_input["dims"])]
        output_shape = [*batch, *map(int, graph_output["dims"])]
        fixed = input_shape[0] if max_batch == 0 else None
        info = ModelInfo.from_metadata(meta, source, max_batch=max_batch or (fixed if fixed and fixed > 0 else None))
        info.check_graph([d if d > 0 else None for d in input_shape], output_shape, source)
        self.input_name, self.output_name = graph_input["name"], graph_output["name"]
        self.input_dtype = graph_input["data_type"].removeprefix("TYPE_")
        return info

    def infer(self, batch: np.ndarray) -> np.ndarray:
        module = self.module
        request = module.InferInput(self.input_name, list(batch.shape), self.input_dtype)
        request.set_data_from_numpy(np.ascontiguousarray(batch))
        wanted = [module.InferRequestedOutput(self.output_name)]
        options = {"client_timeout": NETWORK_TIMEOUT_S} if self.protocol == "grpc" else {}
        try:
            result = self.client().infer(self.model_name, [request], outputs=wanted, **options)
        except Exception as error:  # the server's error (InferenceServerException) or the connection's
            raise OffsegError(f"Triton inference of {self.model_name} failed: {str(error).splitlines()[0][:200]}") \
                from None
        return result.as_numpy(self.output_name)

    def close(self) -> None:
        for client in self.clients:
            client.close()
        self.clients.clear()
