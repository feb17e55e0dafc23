"""`sip-worker`: one SIP user agent serving ondewo.sip.Sip over gRPC until SIGTERM/SIGINT.

Exit codes: 0 after a clean shutdown, 1 when the worker could not come up (SIP transport,
gRPC port, a boot account the phone refuses), 2 for bad configuration. Nothing is served
before the configuration has been checked. A registrar that refuses or does not answer at
boot is no reason to exit: the worker stays up, NOT_SERVING, and REGISTERs again with
back-off until it is accepted (a crash loop would only add the kubelet's back-off to the
registrar's outage).
"""

import contextlib
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from types import FrameType
from urllib.parse import unquote, urlsplit

from sip_worker.config import (
    PASSWORD_ENV,
    ConfigError,
    WorkerConfig,
    parse_config,
    read_auth_token,
    read_password,
)
from sip_worker.drain import Drain
from sip_worker.errors import InvalidArgument, PhoneError
from sip_worker.history import StatusHistory
from sip_worker.logging_setup import configure_logging
from sip_worker.phone import Phone
from sip_worker.phone.registration_retry import RetryBackoff
from sip_worker.redis_connection import PASSWORD_ENV as REDIS_PASSWORD_ENV
from sip_worker.redis_history import HistoryConfigError, RedisHistory, open_history
from sip_worker.server import ServerError, WorkerServer
from sip_worker.servicer import SipServicer

logger = logging.getLogger("sip_worker")

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CONFIG = 2
# Part of --shutdown-grace kept back from the soft call end for unregistering, stopping the
# gRPC server and flushing the history.
SHUTDOWN_RESERVE = 2.0
GRPC_STOP_GRACE = 1.0


class _Stop:
    """Set once by a signal, by a failed boot session or by the caller; records the reason.
    Its watchdog ends the process if the stop takes longer than it promised."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._watchdog: threading.Timer | None = None
        self.reason = ""
        self.exit_code = EXIT_OK

    def request(self, reason: str, exit_code: int = EXIT_OK) -> None:
        if not self._event.is_set():
            self.reason = reason
            self.exit_code = exit_code
            self._event.set()

    def wait(self, timeout: float | None = None) -> bool:
        """True once a stop is requested; False when `timeout` seconds passed first."""
        return self._event.wait(timeout)

    def is_requested(self) -> bool:
        return self._event.is_set()

    def bound(self, seconds: float) -> None:
        """The process ends within `seconds` from now, whatever the shutdown is stuck on."""
        if self._watchdog is not None:
            self._watchdog.cancel()
        self._watchdog = threading.Timer(seconds, _force_exit, args=(seconds,))
        self._watchdog.daemon = True
        self._watchdog.start()


def _install_signal_handlers(stop: _Stop, drain: Drain, config: WorkerConfig) -> None:
    def on_signal(signum: int, _frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if stop.is_requested():
            drain.interrupt(name)
            return
        stop.request(name)
        stop.bound(config.drain_timeout + config.shutdown_grace)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)


def _force_exit(seconds: float) -> None:
    logger.error("shutdown did not finish within %.1f s; exiting now", seconds)
    _exit(EXIT_FAILED)


def _exit(code: int) -> None:
    # os._exit: PJSUA2 objects still referenced at interpreter teardown abort the process.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _start_boot_session(
    config: WorkerConfig, password: str, phone: Phone, server: WorkerServer, stop: _Stop
) -> None:
    """Registers --account (with --no-register: without a REGISTER), trying again with
    back-off while the registrar refuses or does not answer, and starts the session; off the
    main thread, so that a signal during a slow REGISTER is still handled at once."""
    account = config.account or ""

    def register() -> bool:
        """True once registered; False when a stop came first."""
        backoff = RetryBackoff(config.register_retry_max)
        while True:
            try:
                phone.register_account(account, password, record_failure=True)
                return True
            except InvalidArgument:
                raise
            except PhoneError as error:
                delay = backoff.next_delay()
                logger.warning(
                    "could not register %s: %s; trying again in %.1f s", account, error, delay
                )
            if stop.wait(delay):
                return False

    def run() -> None:
        try:
            if not register():
                return
            phone.start_session(account, config.auto_answer_interval)
        except PhoneError as error:
            logger.error("could not start the session of %s: %s", account, error)
            stop.request("boot session failed", EXIT_FAILED)
            return
        logger.info("session started for %s", account)
        if not stop.is_requested():
            server.set_serving()

    threading.Thread(target=run, name="boot-session", daemon=True).start()


def _shutdown(
    config: WorkerConfig,
    phone: Phone,
    server: WorkerServer,
    stop_metrics: Callable[[], None] | None,
    history: RedisHistory,
    hang_up_reason: str,
) -> None:
    """Ends a call still up softly (`hang_up_reason` on its status), unregisters, then stops
    serving: all within --shutdown-grace (the stop's watchdog enforces it)."""
    deadline = time.monotonic() + config.shutdown_grace
    phone.stop(
        max(config.shutdown_grace - SHUTDOWN_RESERVE, config.shutdown_grace / 2), hang_up_reason
    )
    server.stop(min(GRPC_STOP_GRACE, max(0.0, deadline - time.monotonic())))
    if stop_metrics is not None:
        stop_metrics()
    history.close(timeout=max(0.1, deadline - time.monotonic() - 0.5))


def run(config: WorkerConfig, password: str | None, auth_token: str | None) -> int:
    """Serves until a stop is requested; returns the exit code."""
    stop = _Stop()
    drain = Drain(config.drain_timeout, config.drain_deadline_file)
    _install_signal_handlers(stop, drain, config)
    serve_metrics: Callable[[str, int], Callable[[], None]] | None = None
    observe_history_writes: Callable[[list[float]], None] | None = None
    if config.metrics_port:
        # Imported only when served: prometheus_client costs ~35 ms of start-up and ~3 MB.
        from sip_worker import metrics

        serve_metrics = metrics.serve_metrics
        observe_history_writes = metrics.observe_history_writes
    try:
        durable_history = open_history(
            config.redis_url,
            config.history_session_key,
            config.history_max_len,
            on_written=observe_history_writes,
        )
    except HistoryConfigError as error:
        logger.error("status history: %s", error)
        return EXIT_CONFIG
    history: StatusHistory = durable_history
    if config.metrics_port:
        metrics.watch_history_buffer(lambda: durable_history.buffer_depth)
        history = metrics.MetricsHistory(durable_history)
    phone = Phone(config, history)
    try:
        phone.start()
    except PhoneError as error:
        logger.error("SIP could not start: %s", error)
        durable_history.close()
        return EXIT_FAILED
    try:
        server = WorkerServer(
            SipServicer(phone, history),
            config.grpc_host,
            config.grpc_port,
            config.max_message_bytes,
            auth_token,
            measure_rpcs=serve_metrics is not None,
        )
        stop_metrics = (
            serve_metrics(config.grpc_host, config.metrics_port) if serve_metrics else None
        )
    except (ServerError, OSError) as error:
        logger.error("%s", error)
        phone.stop(0.0)
        durable_history.close()
        return EXIT_FAILED
    logger.info(
        "serving ondewo.sip.Sip on %s:%d (auth %s, metrics %s); SIP %s on %s:%d",
        config.grpc_host,
        server.port,
        "on" if auth_token else "off",
        f"on port {config.metrics_port}" if stop_metrics else "off",
        config.sip_transport,
        config.sip_host,
        phone.sip_port,
    )
    if config.start_session:
        _start_boot_session(config, password or "", phone, server, stop)
    elif phone.is_ready():
        server.set_serving()
    stop.wait()
    logger.info("shutting down (%s)", stop.reason)
    server.enter_shutdown()  # NOT_SERVING at once: no new clients while a call drains
    why = drain.run(phone)
    stop.bound(config.shutdown_grace)
    hang_up_reason = f"the worker is shutting down ({stop.reason}): {why}" if why else ""
    _shutdown(config, phone, server, stop_metrics, durable_history, hang_up_reason)
    logger.info("stopped")
    return stop.exit_code


def _secrets(config: WorkerConfig, password: str | None, auth_token: str | None) -> list[str]:
    """Every secret this process knows, for the log masking."""
    candidates = [password, auth_token, os.environ.get(REDIS_PASSWORD_ENV)]
    # A malformed URL is reported by the history, without echoing it.
    with contextlib.suppress(ValueError):
        url_password = urlsplit(config.redis_url).password
        if url_password:
            candidates += [url_password, unquote(url_password)]
    return [secret for secret in candidates if secret]


def main(argv: Sequence[str] | None = None) -> None:
    try:
        config = parse_config(sys.argv[1:] if argv is None else argv, os.environ)
        password = read_password(config, os.environ)
        auth_token = read_auth_token(config)
        if config.start_session and password is None and not config.no_register:
            raise ConfigError(
                f"--start-session needs the SIP password: set {PASSWORD_ENV} or --password-file"
            )
    except ConfigError as error:
        print(f"sip-worker: error: {error}", file=sys.stderr)
        sys.exit(EXIT_CONFIG)
    # Read once; child processes need not inherit it.
    os.environ.pop(PASSWORD_ENV, None)
    configure_logging(config.log_level, config.log_format, _secrets(config, password, auth_token))
    _exit(run(config, password, auth_token))


if __name__ == "__main__":
    main()
