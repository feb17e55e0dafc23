"""The sip-worker process's configuration: --help, env vars, bad values, secrets out of sight."""

import ipaddress
import json
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from google.protobuf.empty_pb2 import Empty

from ondewo.sip import sip_pb2, sip_pb2_grpc
from sip_contract.status import stream_key
from sip_worker.config import parse_config
from tests.support import worker_probes
from tests.support.redis_server import RedisServer
from tests.support.sipp import PHONE_RTP_PORTS, Sipp, free_media_ports, free_tcp_port, free_udp_port
from tests.support.worker_cli import SIP_WORKER, run_sip_worker, worker_environment
from tests.worker.conftest import SIPP_PASSWORD, SIPP_USER, WorkerFactory, account_of

# The flags the worker promises (the contract between the parts and the README's table).
FLAGS = [
    "--grpc-host",
    "--grpc-port",
    "--sip-host",
    "--sip-port",
    "--sip-transport",
    "--tls-ca-file",
    "--tls-cert-file",
    "--tls-key-file",
    "--tls-verify",
    "--srtp",
    "--rtp-port",
    "--rtp-port-count",
    "--public-address",
    "--stun-server",
    "--keepalive-interval",
    "--redis-url",
    "--session-key",
    "--history-max-len",
    "--account",
    "--password-file",
    "--auth-username",
    "--outbound-proxy",
    "--no-register",
    "--register-expiry",
    "--register-retry-max",
    "--auto-answer-interval",
    "--start-session",
    "--auth-token-file",
    "--max-message-bytes",
    "--metrics-port",
    "--log-level",
    "--log-format",
    "--shutdown-grace",
    "--drain-timeout",
    "--drain-deadline-file",
    "--soft-hangup-timeout",
    "--media-timeout",
]


def _env_name(flag: str) -> str:
    return "SIP_WORKER_" + flag.removeprefix("--").replace("-", "_").upper()


def test_help_documents_every_flag_with_its_env_var_and_default() -> None:
    code, output = run_sip_worker("--help")
    assert code == 0
    text = " ".join(output.split())  # argparse wraps lines anywhere
    for flag in FLAGS:
        assert f" {flag} " in text, flag
        assert _env_name(flag) in text, flag
    assert text.count("default:") >= len(FLAGS)
    assert "SIP_WORKER_PASSWORD" in text
    assert "default: 50099" in text
    assert "default: 0.0.0.0" in text


BAD_CONFIGS = {
    "unknown transport": (["--sip-transport", "foo"], {}, "--sip-transport='foo': must be one of"),
    "negative auto answer": (
        ["--auto-answer-interval", "-1"],
        {},
        "--auto-answer-interval='-1': must be an integer >= 0",
    ),
    "port out of range": (["--grpc-port", "70000"], {}, "--grpc-port='70000': must be a port"),
    "too few RTP ports": (["--rtp-port-count", "4"], {}, "--rtp-port-count='4': must be 0"),
    "RTP ports beyond 65535": (
        ["--rtp-port", "65500", "--rtp-port-count", "100"],
        {},
        "--rtp-port 65500 with --rtp-port-count 100 goes beyond port 65535",
    ),
    "not a number": (["--history-max-len", "many"], {}, "--history-max-len='many': must be a"),
    "bad env value": (
        [],
        {"SIP_WORKER_SIP_TRANSPORT": "carrier-pigeon"},
        "SIP_WORKER_SIP_TRANSPORT='carrier-pigeon': must be one of udp, tcp",
    ),
    "bad switch value": (
        [],
        {"SIP_WORKER_START_SESSION": "perhaps"},
        "SIP_WORKER_START_SESSION='perhaps'",
    ),
    "bad no-register value": (
        [],
        {"SIP_WORKER_NO_REGISTER": "maybe"},
        "SIP_WORKER_NO_REGISTER='maybe': must be one of 1, true, yes, on or 0, false, no, off",
    ),
    "bad log format": (["--log-format", "xml"], {}, "--log-format='xml': must be one of"),
    "zero grace": (["--shutdown-grace", "0"], {}, "--shutdown-grace='0': must be a positive"),
    "negative drain": (
        [],
        {"SIP_WORKER_DRAIN_TIMEOUT": "-1"},
        "SIP_WORKER_DRAIN_TIMEOUT='-1': must be 0 or a positive number of seconds",
    ),
    "retry max below 1 s": (
        ["--register-retry-max", "0.5"],
        {},
        "--register-retry-max='0.5': must be a number of seconds between 1 and 3600",
    ),
    "expiry too short": (
        [],
        {"SIP_WORKER_REGISTER_EXPIRY": "5"},
        "SIP_WORKER_REGISTER_EXPIRY='5': must be an integer >= 10",
    ),
    "negative media timeout": (
        ["--media-timeout", "-5"],
        {},
        "--media-timeout='-5': must be 0 or a positive number of seconds",
    ),
    "media timeout not a number": (
        [],
        {"SIP_WORKER_MEDIA_TIMEOUT": "30s"},
        "SIP_WORKER_MEDIA_TIMEOUT='30s': must be a number",
    ),
    "password as a flag": (["--password", "hunter22"], {}, "--password is not accepted"),
    "session without account": (["--start-session"], {}, "--start-session needs --account"),
    "session without password": (
        ["--start-session", "--account", "alice@127.0.0.1"],
        {},
        "--start-session needs the SIP password",
    ),
    "unknown flag": (["--colour", "blue"], {}, "unrecognized arguments: --colour"),
    "STUN server as a URI": (
        ["--stun-server", "stun:stun.example.com"],
        {},
        "--stun-server='stun:stun.example.com': 'stun:stun.example.com' is not host[:port]",
    ),
    "STUN port out of range": (
        [],
        {"SIP_WORKER_STUN_SERVERS": "stun.example.com, 198.51.100.7:70000"},
        "'198.51.100.7:70000' is not host[:port]",
    ),
    "empty STUN list item": (
        [],
        {"SIP_WORKER_STUN_SERVERS": "stun.example.com,,stun2.example.com"},
        "SIP_WORKER_STUN_SERVERS='stun.example.com,,stun2.example.com': '' is not host[:port]",
    ),
    "trusted source not a CIDR": (
        ["--trusted-source", "203.0.113.0/24", "--trusted-source", "pbx.example.com"],
        {},
        "'pbx.example.com' is not a CIDR such as 203.0.113.0/24",
    ),
    "trusted source with host bits set": (
        [],
        {"SIP_WORKER_TRUSTED_SOURCES": "203.0.113.5/24"},
        "SIP_WORKER_TRUSTED_SOURCES='203.0.113.5/24': '203.0.113.5/24' is not a CIDR",
    ),
    "unknown untrusted policy": (
        [],
        {"SIP_WORKER_UNTRUSTED_POLICY": "ignore"},
        "SIP_WORKER_UNTRUSTED_POLICY='ignore': must be one of reject, drop",
    ),
    "user agent with a line break": (
        [],
        {"SIP_WORKER_USER_AGENT": "pbx\r\nX-Injected: 1"},
        "must be 1 to 128 printable ASCII characters",
    ),
    "TLS file without TLS": (
        ["--tls-ca-file", "/etc/ssl/certs/ca-certificates.crt"],
        {},
        "--tls-ca-file: only with --sip-transport tls",
    ),
    "SRTP without TLS": (
        [],
        {"SIP_WORKER_SRTP": "mandatory"},
        "--srtp mandatory needs --sip-transport tls: its keys travel in the SDP",
    ),
    "unknown SRTP mode": (["--srtp", "sdes"], {}, "--srtp='sdes': must be one of off, optional"),
    "TLS certificate without its key": (
        ["--sip-transport", "tls", "--tls-cert-file", "/etc/hostname"],
        {},
        "--tls-cert-file and --tls-key-file go together (mutual TLS)",
    ),
    "missing CA file": (
        ["--sip-transport", "tls", "--tls-ca-file", "/nonexistent/ca.crt"],
        {},
        "--tls-ca-file /nonexistent/ca.crt: no such file",
    ),
    "TLS verify not a boolean": (
        ["--sip-transport", "tls", "--tls-verify", "sometimes"],
        {},
        "--tls-verify='sometimes': must be one of",
    ),
    "keep-alive beyond an hour": (
        ["--keepalive-interval", "86400"],
        {},
        "--keepalive-interval='86400': must be an integer between 0 and 3600",
    ),
}


@pytest.mark.parametrize(("args", "env", "message"), BAD_CONFIGS.values(), ids=BAD_CONFIGS.keys())
def test_bad_configuration_is_a_clear_error_before_serving(
    redis_server: RedisServer, args: list[str], env: dict[str, str], message: str
) -> None:
    grpc_port = free_tcp_port()
    code, output = run_sip_worker(
        "--redis-url", redis_server.url, "--grpc-port", str(grpc_port), *args, env=env
    )
    assert code == 2, output
    assert message in output
    assert output.startswith("sip-worker: error: ")
    assert "serving" not in output
    assert "hunter22" not in output


def test_no_redis_url_is_a_clear_error() -> None:
    code, output = run_sip_worker("--grpc-port", str(free_tcp_port()))
    assert code == 2
    assert "--redis-url (env SIP_WORKER_REDIS_URL) is required" in output


@pytest.mark.parametrize("what", ["grpc", "sip"])
def test_a_taken_port_stops_the_worker_with_a_clear_error(
    redis_server: RedisServer, what: str
) -> None:
    kind = socket.SOCK_STREAM if what == "grpc" else socket.SOCK_DGRAM
    with socket.socket(socket.AF_INET, kind) as taken:
        taken.bind(("127.0.0.1", 0))
        if what == "grpc":
            taken.listen()
        port = taken.getsockname()[1]
        grpc_port = port if what == "grpc" else free_tcp_port()
        sip_port = port if what == "sip" else free_udp_port()
        code, output = run_sip_worker(
            *("--redis-url", redis_server.url, "--grpc-host", "127.0.0.1"),
            *("--grpc-port", str(grpc_port), "--sip-port", str(sip_port)),
        )
    assert code == 1, output
    expected = (
        f"cannot listen for gRPC on 127.0.0.1:{port}" if what == "grpc" else "cannot bind SIP"
    )
    assert expected in output
    assert "serving ondewo.sip.Sip" not in output


def test_env_vars_configure_the_worker_as_the_flags_do(
    redis_server: RedisServer, registrar: Sipp, tmp_path: Path
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("env-token-123456")
    grpc_port, metrics_port = free_tcp_port(), free_tcp_port()
    env = {
        "SIP_WORKER_GRPC_HOST": "127.0.0.1",
        "SIP_WORKER_GRPC_PORT": str(grpc_port),
        "SIP_WORKER_SIP_HOST": "127.0.0.1",
        "SIP_WORKER_SIP_PORT": "0",
        "SIP_WORKER_RTP_PORT": str(free_media_ports(PHONE_RTP_PORTS)),
        "SIP_WORKER_REDIS_URL": redis_server.url,
        "SIP_WORKER_SESSION_KEY": "env-session",
        "SIP_WORKER_ACCOUNT": account_of(registrar),
        "SIP_WORKER_PASSWORD": SIPP_PASSWORD,
        "SIP_WORKER_START_SESSION": "true",
        "SIP_WORKER_AUTO_ANSWER_INTERVAL": "3",
        "SIP_WORKER_AUTH_TOKEN_FILE": str(token_file),
        "SIP_WORKER_METRICS_PORT": str(metrics_port),
        "SIP_WORKER_LOG_FORMAT": "json",
        "SIP_WORKER_LOG_LEVEL": "info",
    }
    log_path = tmp_path / "env-worker.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [str(SIP_WORKER)],
            env=worker_environment(env),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            worker_probes.wait_health(channel, "SERVING", timeout=30)
            stub = sip_pb2_grpc.SipStub(channel)
            with pytest.raises(grpc.RpcError) as refused:
                stub.GetSipStatus(Empty(), timeout=10)
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
            token = (("authorization", "Bearer env-token-123456"),)
            status = stub.GetSipStatus(Empty(), metadata=token, timeout=10)
            assert sip_pb2.SipStatus.StatusType.Name(status.status_type) == "ready"
            assert status.account_name == account_of(registrar)
        samples = worker_probes.scrape(metrics_port)
        assert worker_probes.sample(samples, "sip_worker_registered") == 1
        assert redis_server.client().exists(stream_key("env-session")) == 1
    finally:
        process.terminate()
        process.wait(timeout=30)
    lines = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    assert any("serving ondewo.sip.Sip on 127.0.0.1" in line["message"] for line in lines)
    assert {"time", "level", "logger", "message"} <= set(lines[0])
    assert process.returncode == 0


def test_a_flag_wins_over_its_env_var(worker_factory: WorkerFactory) -> None:
    # The fixture passes --grpc-port; the env var names a port nothing listens on.
    unused = free_tcp_port()
    worker = worker_factory(env={"SIP_WORKER_GRPC_PORT": str(unused)})
    assert worker_probes.health(worker.channel) == "SERVING"
    assert f":{worker.grpc_port} " in worker.log()


def test_stun_servers_repeat_as_flags_or_come_comma_separated_in_their_env_var() -> None:
    base = ["--redis-url", "redis://127.0.0.1:6379/0"]
    flags = [*base, "--stun-server", "stun.example.com", "--stun-server", "[2001:db8::1]:3478"]
    env = {"SIP_WORKER_STUN_SERVERS": " 198.51.100.7:3478 , stun2.example.com "}
    assert parse_config(flags, env).stun_servers == ("stun.example.com", "[2001:db8::1]:3478")
    assert parse_config(base, env).stun_servers == ("198.51.100.7:3478", "stun2.example.com")
    assert parse_config(base, {"SIP_WORKER_STUN_SERVERS": ""}).stun_servers == ()
    assert parse_config(base, {}).stun_servers == ()
    assert parse_config(base, {}).keepalive_interval == 15
    assert parse_config(base, {"SIP_WORKER_KEEPALIVE_INTERVAL": "0"}).keepalive_interval == 0


def test_trusted_sources_repeat_as_flags_or_come_comma_separated_in_their_env_var() -> None:
    base = ["--redis-url", "redis://127.0.0.1:6379/0"]
    flags = [*base, "--trusted-source", "203.0.113.0/24", "--trusted-source", "2001:db8::/32"]
    env = {"SIP_WORKER_TRUSTED_SOURCES": " 198.51.100.7 , 10.0.0.0/8 "}
    assert parse_config(flags, env).trusted_sources == (
        ipaddress.ip_network("203.0.113.0/24"),
        ipaddress.ip_network("2001:db8::/32"),
    )
    assert parse_config(base, env).trusted_sources == (
        ipaddress.ip_network("198.51.100.7/32"),
        ipaddress.ip_network("10.0.0.0/8"),
    )
    assert parse_config(base, {}).trusted_sources == ()
    assert parse_config(base, {}).user_agent == "sip-worker"


def test_the_untrusted_policy_is_reject_unless_told_drop() -> None:
    base = ["--redis-url", "redis://127.0.0.1:6379/0"]
    assert parse_config(base, {}).untrusted_policy == "reject"
    assert parse_config(base, {"SIP_WORKER_UNTRUSTED_POLICY": "DROP"}).untrusted_policy == "drop"
    assert parse_config([*base, "--untrusted-policy", "drop"], {}).untrusted_policy == "drop"


SECRET = "Pw-7Qz!unique-9f3e"


@pytest.mark.parametrize("source", ["env", "file"])
def test_the_password_is_never_in_argv_nor_in_the_logs(
    worker_factory: WorkerFactory,
    sipp_factory: Callable[..., Sipp],
    tmp_path: Path,
    source: str,
) -> None:
    registrar = sipp_factory(
        "registrar_auth.xml", variables={"user": SIPP_USER, "pass": SECRET}, args=["-m", "1"]
    )
    args = ["--start-session", "--account", f"{SIPP_USER}@{registrar.address}"]
    # DEBUG logs every SIP message PJSUA2 sends and receives.
    args += ["--log-level", "DEBUG"]
    env: dict[str, str] = {}
    if source == "env":
        env["SIP_WORKER_PASSWORD"] = SECRET
    else:
        password_file = tmp_path / "sip-password"
        password_file.write_text(SECRET + "\n")
        args += ["--password-file", str(password_file)]
    worker = worker_factory(*args, env=env)
    worker_probes.wait_health(worker.channel, "SERVING")
    assert len(registrar.received("REGISTER")) == 2  # challenged, then answered

    argv = Path(f"/proc/{worker.process.pid}/cmdline").read_bytes().replace(b"\0", b" ")
    assert SECRET.encode() not in argv
    listing = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert SECRET not in listing
    log = worker.log()
    assert "REGISTER sip:" in log, "the DEBUG log holds the SIP messages"
    assert SECRET not in log
    # Nor did anything try to log it: the last-line masking would have left its mark.
    assert "***" not in log
    assert SECRET not in registrar.messages()
