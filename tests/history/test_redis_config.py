"""Redis URLs and start-up checks: every form that works, every bad configuration refused with
a clear error, and the password never shown."""

import logging
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ondewo.sip.sip_pb2 import SipStatus
from sip_contract.status import stream_key
from sip_worker.redis_connection import RedisUrlError, parse_redis_url, redact_url
from sip_worker.redis_history import HistoryConfigError, open_history
from tests.support.redis_server import RedisServer, free_port

PASSWORD = "s3cret-Pa55word"
WAIT = 30.0


def appended_and_read_back(url: str, environ: dict[str, str]) -> None:
    """A status written through `url` is read back by a second history opened on it."""
    history = open_history(url, "alice", 10, environ=environ)
    written = SipStatus(status_type=SipStatus.ready, account_name="alice@pbx.example")
    history.append(written)
    assert history.wait_durable(WAIT)
    history.close()
    reopened = open_history(url, "alice", 10, environ=environ)
    try:
        assert reopened.entries() == [written]
    finally:
        reopened.close()


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://127.0.0.1:6379", "the scheme must be redis://, rediss:// (TLS) or unix://"),
        ("127.0.0.1:6379", "the scheme must be"),
        ("redis://", "the host is missing"),
        ("redis://127.0.0.1:port/0", "the port must be a number from 1 to 65535"),
        ("redis://127.0.0.1:99999/0", "the port must be a number from 1 to 65535"),
        ("redis://[::1/0", "not a valid URL"),
        ("redis://127.0.0.1:6379/first", "the database must be a number"),
        ("redis://127.0.0.1:6379/0?db=1", "give the database as the path"),
        ("redis://127.0.0.1:6379/0?timeout=3", "unknown parameter timeout"),
        ("redis://127.0.0.1:6379/0?cluster=maybe", "cluster must be true or false"),
        ("redis://127.0.0.1:6379/2?cluster=true", "a Redis Cluster has only database 0"),
        ("redis://127.0.0.1:6379/0?ssl_ca_certs=/ca.crt", "ssl_ca_certs needs a rediss:// (TLS)"),
        ("rediss://127.0.0.1:6379/0?ssl_cert_reqs=sometimes", "ssl_cert_reqs must be one of"),
        ("unix://redis.sock", "a unix:// URL has no host"),
        ("unix:///run/redis.sock?cluster=true", "a Redis Cluster is reached over TCP"),
    ],
)
def test_a_malformed_url_is_refused_before_any_connection(url: str, reason: str) -> None:
    started = time.monotonic()
    with pytest.raises(HistoryConfigError, match="Redis URL") as refused:
        open_history(url, "alice", environ={}, startup_timeout=60)
    assert reason in str(refused.value)
    assert time.monotonic() - started < 5  # refused, not waited on


def test_a_malformed_url_does_not_echo_its_password() -> None:
    with pytest.raises(HistoryConfigError) as refused:
        open_history(f"redis://user:{PASSWORD}@127.0.0.1:port/0", "alice", environ={})
    assert PASSWORD not in str(refused.value)
    assert "redis://user:***@127.0.0.1:port/0" in str(refused.value)


def test_redaction_covers_every_place_a_password_can_be() -> None:
    assert redact_url(f"redis://:{PASSWORD}@h:1/0") == "redis://:***@h:1/0"
    assert (
        redact_url(f"rediss://u:{PASSWORD}@h/0?cluster=true") == "rediss://u:***@h/0?cluster=true"
    )
    assert redact_url(f"unix://:{PASSWORD}@/run/r.sock") == "unix://:***@/run/r.sock"
    assert (
        redact_url(f"unix:///run/r.sock?password={PASSWORD}") == "unix:///run/r.sock?password=***"
    )
    assert redact_url("redis://:p@ss@h:1/0") == "redis://:***@h:1/0"
    assert redact_url("redis://h:1/0") == "redis://h:1/0"
    assert PASSWORD not in repr(parse_redis_url(f"redis://:{PASSWORD}@h:1/0", {}))


def test_url_forms_give_the_right_connection_settings() -> None:
    tcp = parse_redis_url("redis://user:p%40ss@db.example:6380/3", {})
    assert tcp.options == {
        "host": "db.example",
        "port": 6380,
        "db": 3,
        "username": "user",
        "password": "p@ss",
    }
    assert not tcp.cluster
    assert parse_redis_url("redis://db.example", {}).options == {
        "host": "db.example",
        "port": 6379,
        "db": 0,
    }
    tls = parse_redis_url("rediss://db.example/0?ssl_ca_certs=/ca.crt&ssl_cert_reqs=required", {})
    assert tls.options["ssl"] is True
    assert tls.options["ssl_ca_certs"] == "/ca.crt"
    unix = parse_redis_url("unix:///run/redis/redis.sock?db=2", {})
    assert unix.options == {"unix_socket_path": "/run/redis/redis.sock", "db": 2}
    cluster = parse_redis_url("redis://node-0.example:7000?cluster=true", {})
    assert cluster.cluster
    assert cluster.options == {"host": "node-0.example", "port": 7000}


def test_the_password_comes_from_redis_password_unless_the_url_has_one() -> None:
    environ = {"REDIS_PASSWORD": "from-env"}
    assert parse_redis_url("redis://h/0", environ).options["password"] == "from-env"
    assert parse_redis_url("redis://:in-url@h/0", environ).options["password"] == "in-url"
    assert "password" not in parse_redis_url("redis://h/0", {}).options
    with pytest.raises(RedisUrlError):
        parse_redis_url("redis://h:x", environ)


def test_an_unreachable_server_is_refused_after_a_bounded_wait() -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    started = time.monotonic()
    with pytest.raises(HistoryConfigError) as refused:
        open_history(url, "alice", environ={}, startup_timeout=1.5)
    waited = time.monotonic() - started
    assert 1.5 <= waited < 15
    assert f"cannot reach Redis at {url} within 1.5 s" in str(refused.value)


@pytest.fixture()
def password_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis", password=PASSWORD)
    server.start()
    yield server
    server.stop()


def test_a_wrong_password_is_refused_at_once_without_showing_it(
    password_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    url = f"redis://:wrong-{PASSWORD}@127.0.0.1:{password_server.port}/0"
    started = time.monotonic()
    with pytest.raises(HistoryConfigError) as refused:
        open_history(url, "alice", environ={}, startup_timeout=60)
    assert time.monotonic() - started < 30
    message = str(refused.value)
    assert "refused the credentials" in message
    assert "check the password in the URL or REDIS_PASSWORD" in message
    assert f"wrong-{PASSWORD}" not in message
    assert PASSWORD not in caplog.text


def test_a_missing_password_is_refused_with_what_to_do(password_server: RedisServer) -> None:
    url = f"redis://127.0.0.1:{password_server.port}/0"
    with pytest.raises(HistoryConfigError, match="REDIS_PASSWORD"):
        open_history(url, "alice", environ={}, startup_timeout=60)


def test_the_password_never_shows_in_logs_even_through_an_outage(
    password_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    url = f"redis://127.0.0.1:{password_server.port}/0"
    history = open_history(url, "alice", 10, environ={"REDIS_PASSWORD": PASSWORD})
    try:
        password_server.stop()
        history.append(SipStatus(status_type=SipStatus.ready))
        deadline = time.monotonic() + WAIT
        while "still unavailable" not in caplog.text:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        password_server.start()
        assert history.wait_durable(WAIT)
    finally:
        history.close()
    assert "is unavailable" in caplog.text
    assert "reachable again" in caplog.text
    assert PASSWORD not in caplog.text


def test_the_password_from_the_url_works(password_server: RedisServer) -> None:
    appended_and_read_back(password_server.url, {})


def test_a_key_that_is_not_a_stream_is_refused(redis_server: RedisServer) -> None:
    redis_server.client().set(stream_key("alice"), "something else")
    with pytest.raises(HistoryConfigError, match="exists but is not a stream"):
        open_history(redis_server.url, "alice", environ={})


def test_an_empty_session_key_or_length_is_refused(redis_server: RedisServer) -> None:
    with pytest.raises(HistoryConfigError, match="session key"):
        open_history(redis_server.url, "", environ={})
    with pytest.raises(HistoryConfigError, match="at least 1"):
        open_history(redis_server.url, "alice", 0, environ={})


def test_a_unix_socket_url_works(tmp_path: Path) -> None:
    # Socket paths are limited to ~107 bytes; pytest's tmp_path can be longer.
    socket_dir = Path(tempfile.mkdtemp(prefix="sip-redis-"))
    socket_path = socket_dir / "redis.sock"
    server = RedisServer(
        tmp_path / "redis", extra_args=("--unixsocket", str(socket_path), "--unixsocketperm", "700")
    )
    server.start()
    try:
        appended_and_read_back(f"unix://{socket_path}?db=0", {})
        assert server.client().xlen(stream_key("alice")) == 1
    finally:
        server.stop()
        shutil.rmtree(socket_dir, ignore_errors=True)


@pytest.fixture()
def certificates(tmp_path: Path) -> Path:
    """A CA and a server certificate for 127.0.0.1 signed by it."""
    if shutil.which("openssl") is None:
        pytest.fail("openssl is needed to make the TLS test's certificates (.ci/run installs it)")
    folder = tmp_path / "tls"
    folder.mkdir()

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True)

    key = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    openssl(
        "req", "-x509", *key, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
        "-subj", "/CN=sip-test-ca",
    )  # fmt: skip
    openssl("req", *key, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1")
    (folder / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    openssl(
        "x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "server.crt", "-days", "2", "-extfile", "san.ext",
    )  # fmt: skip
    return folder


@pytest.fixture()
def tls_server(tmp_path: Path, certificates: Path) -> Iterator[tuple[RedisServer, int]]:
    tls_port = free_port()
    server = RedisServer(
        tmp_path / "redis",
        extra_args=(
            "--tls-port", str(tls_port),
            "--tls-cert-file", str(certificates / "server.crt"),
            "--tls-key-file", str(certificates / "server.key"),
            "--tls-ca-cert-file", str(certificates / "ca.crt"),
            "--tls-auth-clients", "no",
        ),
    )  # fmt: skip
    server.start()
    yield server, tls_port
    server.stop()


def test_a_rediss_url_talks_tls_and_checks_the_certificate(
    tls_server: tuple[RedisServer, int], certificates: Path
) -> None:
    server, tls_port = tls_server
    ca = certificates / "ca.crt"
    appended_and_read_back(f"rediss://127.0.0.1:{tls_port}/0?ssl_ca_certs={ca}", {})
    assert server.client().xlen(stream_key("alice")) == 1

    # Without the CA the server's certificate is not trusted: refused, not used blindly.
    with pytest.raises(HistoryConfigError, match="cannot reach Redis"):
        open_history(f"rediss://127.0.0.1:{tls_port}/0", "alice", environ={}, startup_timeout=1)
