"""The OTLP/gRPC receiver: ``TraceService/Export`` and ``LogsService/Export`` on their own port
(4317, OTLP's gRPC default), beside the HTTP API, in the server process.

It needs ``grpcio`` (``pip install 'assay[grpc]'``). ``otlp_grpc_port`` (``assay server
--otlp-grpc-port``): None (the default) listens on 4317 when grpcio is installed and says so
at WARNING when that port is taken; a port number must be served (the server does not start
otherwise); 0 turns it off.

Requests take the same path as OTLP/HTTP (:class:`~assay.server.otlp_ingest.OtlpIngest`): the
caller is authenticated from the ``authorization`` metadata (``Bearer <token>``) before the
message is decoded, the experiment comes from the resource or the ``x-assay-experiment-id`` /
``x-mlflow-experiment-id`` metadata, and the raw message bytes go to the same decoder (gRPC
has already undone its own compression; its message size limit is ``max_request_bytes``).
Errors are gRPC status codes (INVALID_ARGUMENT, UNAUTHENTICATED, PERMISSION_DENIED,
NOT_FOUND, UNAVAILABLE...) with the reason as the message, and logged at WARNING.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

from assay.config import Settings
from assay.errors import AssayError, ConfigError
from assay.server.auth import require_some_scope
from assay.server.errors import status_for
from assay.server.otlp_ingest import OtlpIngest, Signal, experiment_header, log_rejected
from assay.tracing.otlp import PROTOBUF

if TYPE_CHECKING:
    import grpc

__all__ = ["DEFAULT_PORT", "OtlpGrpcReceiver", "grpc_available", "start_receiver"]

log = logging.getLogger("assay.server.otlp")

DEFAULT_PORT = 4317
_WORKERS = 8
TRACE_SERVICE = trace_service_pb2.DESCRIPTOR.services_by_name["TraceService"].full_name
LOGS_SERVICE = logs_service_pb2.DESCRIPTOR.services_by_name["LogsService"].full_name


def grpc_available() -> bool:
    try:
        import grpc  # noqa: F401
    except ImportError:
        return False
    return True


def start_receiver(state: Any, settings: Settings) -> OtlpGrpcReceiver | None:
    """Start the receiver as ``settings.otlp_grpc_port`` says (see the module); None when off.
    ``state`` is the app's state, with the runtime and authenticator made."""
    port = settings.otlp_grpc_port
    if port == 0:
        return None
    if not grpc_available():
        if port is None:
            log.info("otlp.grpc off: grpcio is not installed (pip install 'assay[grpc]')")
            return None
        raise ConfigError(
            f"otlp_grpc_port {port} needs grpcio: pip install 'assay[grpc]' (or set it to 0)"
        )
    receiver = OtlpGrpcReceiver(state, settings.host, port or DEFAULT_PORT, settings)
    try:
        receiver.start()
    except OSError as exc:
        if port is not None:
            raise ConfigError(f"cannot serve OTLP/gRPC: {exc}") from None
        log.warning("otlp.grpc off: %s (choose one with --otlp-grpc-port, 0 for none)", exc)
        return None
    return receiver


class OtlpGrpcReceiver:
    """A grpcio server with the two OTLP export methods, on ``host:port``."""

    def __init__(self, state: Any, host: str, port: int, settings: Settings) -> None:
        self.state = state
        self.address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.max_bytes = settings.max_request_bytes
        self.shared = settings.server_processes > 1
        self.port: int | None = None
        self._server: grpc.Server | None = None

    def start(self) -> None:
        """Bind and serve (OSError when the address cannot be bound)."""
        import grpc

        server = grpc.server(
            ThreadPoolExecutor(max_workers=_WORKERS, thread_name_prefix="assay-otlp-grpc"),
            options=[
                ("grpc.max_receive_message_length", self.max_bytes),
                # Share the port only among this server's own processes (--processes);
                # otherwise never (gRPC's default on Linux would share it with anyone's).
                ("grpc.so_reuseport", int(self.shared)),
            ],
        )
        server.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler(
                    TRACE_SERVICE, {"Export": grpc.unary_unary_rpc_method_handler(self._traces)}
                ),
                grpc.method_handlers_generic_handler(
                    LOGS_SERVICE, {"Export": grpc.unary_unary_rpc_method_handler(self._logs)}
                ),
            )
        )
        try:
            bound = server.add_insecure_port(self.address)
        except RuntimeError as exc:  # newer grpcio raise, older ones return 0
            raise OSError(f"cannot listen on {self.address}: {exc}") from None
        if not bound:
            raise OSError(f"cannot listen on {self.address}: the address is in use or invalid")
        server.start()
        self._server, self.port = server, bound
        log.info("otlp.grpc listening=%s", self.address)

    def stop(self, grace_s: float = 5.0) -> None:
        if self._server is not None:
            self._server.stop(grace_s).wait(grace_s + 1)
            self._server = None

    # Handlers: with no (de)serializers, requests and answers are the raw message bytes.

    def _traces(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        return self._export("traces", request, context)

    def _logs(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        return self._export("logs", request, context)

    def _export(self, signal: Signal, request: bytes, context: grpc.ServicerContext) -> bytes:
        metadata = {key.lower(): value for key, value in context.invocation_metadata()}

        def header(name: str) -> str | None:
            value = metadata.get(name)
            return value if isinstance(value, str) else None

        try:
            caller = self.state.auth.authenticate(header("authorization"))
            require_some_scope(caller, "experiment_id", f"send {signal}")
            return OtlpIngest.of(self.state).export(
                signal,
                caller,
                request,
                media=PROTOBUF,
                encoding=None,
                experiment=experiment_header(header),
                transport="grpc",
            )
        except AssayError as exc:
            status, message = status_for(exc), str(exc)
            log_rejected(signal, "grpc", status, message)
        except Exception:
            log.exception("otlp.grpc failed signal=%s", signal)
            status, message = 500, "internal error (see the server's log)"
        context.abort(_grpc_code(status), message)
        raise AssertionError("context.abort returns by raising")  # pragma: no cover


_GRPC_NAMES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ABORTED",
    413: "RESOURCE_EXHAUSTED",
    415: "INVALID_ARGUMENT",
    422: "INVALID_ARGUMENT",
    429: "RESOURCE_EXHAUSTED",
    503: "UNAVAILABLE",
}
"""HTTP statuses of assay's errors as gRPC codes (OTLP exporters retry UNAVAILABLE)."""


def _grpc_code(status: int) -> grpc.StatusCode:
    import grpc

    return grpc.StatusCode[_GRPC_NAMES.get(status, "INTERNAL")]
