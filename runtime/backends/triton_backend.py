"""A model served by Triton Inference Server, behind the same interface as the local backends: ``tritonclient``
over HTTP (``http://HOST:8000``, the default for a bare ``HOST:PORT``) or gRPC (``grpc://HOST:8001``).

Each thread gets its own client: the HTTP client runs on gevent, whose connections belong to the thread that made
them (the pipeline infers in a worker thread). The model's ``ModelInfo`` comes from the ``offseg.*`` parameters
that ``offseg-export --format triton`` writes into config.pbtxt, checked against the config's I/O like a local
file's metadata against its graph.

A server that stops answering mid-run (a restart, a crash, a redeployed pod) is waited for: the failed request is
sent again once the server and the model are ready, within ``RECOVER_SECONDS``; an error of a ready server (a
request it refuses) ends the run at once.
"""
from __future__ import annotations

import contextlib
import logging
import threading
import time
from urllib.parse import urlsplit

import numpy as np

from ..errors import OffsegError
from . import ModelInfo

PROTOCOLS = {"http": "tritonclient.http", "grpc": "tritonclient.grpc"}
NETWORK_TIMEOUT_S = 60.0  # one inference (a server that hangs longer is an error, not a stall of the run)
RECOVER_SECONDS = 120.0  # a server that stopped answering must be ready again within this (a TensorRT model loads)
POLL_SECONDS = 0.5  # how often a stopped server is asked whether it is ready
log = logging.getLogger(__name__)


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


def _first_line(error: Exception) -> str:
    return str(error).splitlines()[0][:200] if str(error) else type(error).__name__


def _models(client, protocol: str) -> list[str]:
    index = client.get_model_repository_index(**({"as_json": True} if protocol == "grpc" else {}))
    models = index.get("models", []) if isinstance(index, dict) else index
    return sorted(m["name"] for m in models)


class TritonBackend:
    def __init__(self, url: str, model_name: str | None = None):
        protocol, self.address = parse_url(url)
        self.url, self.module, self.protocol = url, _client_module(protocol), protocol
        self.clients, self.local = [], threading.local()
        self.cancelled = threading.Event()
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
        try:
            return self._request(batch)
        except Exception as error:  # the server's error (InferenceServerException) or the connection's
            failure = _first_line(error)
        if self._ready(fresh_client=True):  # it answers: the request itself was refused
            raise OffsegError(f"Triton inference of {self.model_name} failed: {failure}")
        log.warning("the Triton server at %s stopped answering (%s): waiting up to %.0f s for it to be ready "
                    "again", self.url, failure, RECOVER_SECONDS)
        started, stopped = time.monotonic(), f"the Triton server at {self.url} stopped answering ({failure})"
        while not self._ready():
            if self.cancelled.wait(POLL_SECONDS):  # the run is stopping
                raise OffsegError(stopped)
            if time.monotonic() - started > RECOVER_SECONDS:
                raise OffsegError(f"{stopped} and was not ready again within {RECOVER_SECONDS:.0f} s")
        log.warning("the Triton server at %s is ready again after %.1f s: the run goes on", self.url,
                    time.monotonic() - started)
        try:
            return self._request(batch)
        except Exception as error:
            raise OffsegError(f"Triton inference of {self.model_name} failed again after the server came back: "
                              f"{_first_line(error)}") from None

    def _request(self, batch: np.ndarray) -> np.ndarray:
        module = self.module
        request = module.InferInput(self.input_name, list(batch.shape), self.input_dtype)
        request.set_data_from_numpy(np.ascontiguousarray(batch))
        wanted = [module.InferRequestedOutput(self.output_name)]
        options = {"client_timeout": NETWORK_TIMEOUT_S} if self.protocol == "grpc" else {}
        result = self.client().infer(self.model_name, [request], outputs=wanted, **options)
        return result.as_numpy(self.output_name)

    def _ready(self, fresh_client: bool = False) -> bool:
        """Whether the server answers and its model is ready; ``fresh_client``: through a new connection (the
        thread's client may hold one the server closed)."""
        if fresh_client and getattr(self.local, "client", None) is not None:
            self.clients.remove(self.local.client)
            with contextlib.suppress(Exception):  # its connection may be broken already
                self.local.client.close()
            self.local.client = None
        try:
            return bool(self.client().is_server_ready() and self.client().is_model_ready(self.model_name))
        except Exception:  # refused, reset, timed out: not ready
            return False

    def cancel(self) -> None:
        """Stop waiting for a server that stopped answering (the run is stopping)."""
        self.cancelled.set()

    def close(self) -> None:
        for client in self.clients:
            client.close()
        self.clients.clear()
