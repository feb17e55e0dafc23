"""KubeApi's connection to the API server: TLS, client certificates, tokens, failures.

The emulator speaks plain HTTP; here a stand-in API server on 127.0.0.1 speaks TLS with
certificates openssl makes for the test, and records what reaches it.
"""

import asyncio
import http.server
import json
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes.config import kube_config

from sip_operator.kube import KubeApi, KubeError

POD = {"metadata": {"namespace": "ns", "name": "p"}}


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


@pytest.fixture()
def tls(tmp_path: Path) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, all signed by it."""
    files = {n: tmp_path / n for n in ("ca.key", "ca.crt", "server.key", "server.crt")}
    files |= {n: tmp_path / n for n in ("client.key", "client.crt")}
    _openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=test-ca",
        "-keyout", str(files["ca.key"]), "-out", str(files["ca.crt"]),
    )  # fmt: skip
    for who, extension in (("server", "subjectAltName=IP:127.0.0.1"), ("client", None)):
        csr = tmp_path / f"{who}.csr"
        _openssl(
            "req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={who}",
            "-keyout", str(files[f"{who}.key"]), "-out", str(csr),
        )  # fmt: skip
        extensions = ["-extfile", str(tmp_path / f"{who}.ext")] if extension else []
        if extension:
            (tmp_path / f"{who}.ext").write_text(extension + "\n")
        _openssl(
            "x509", "-req", "-in", str(csr), "-CA", str(files["ca.crt"]),
            "-CAkey", str(files["ca.key"]), "-CAcreateserial", "-days", "1",
            "-out", str(files[f"{who}.crt"]), *extensions,
        )  # fmt: skip
    return files


class _TlsApiServer(http.server.ThreadingHTTPServer):
    """Answers every request with POD; records (method, path, Authorization, client CN)."""

    def __init__(self, tls: dict[str, Path]) -> None:
        self.seen: list[tuple[str, str, str | None, str | None]] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                peer: Any = self.connection.getpeercert()  # type: ignore[attr-defined]
                subject = dict(pair[0] for pair in peer["subject"]) if peer else {}
                client = subject.get("commonName")
                authorization = self.headers.get("Authorization")
                server.seen.append((self.command, self.path, authorization, client))
                body = json.dumps(POD).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                return None

        super().__init__(("127.0.0.1", 0), Handler)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=tls["ca.crt"])
        context.load_cert_chain(tls["server.crt"], tls["server.key"])
        context.verify_mode = ssl.CERT_OPTIONAL
        self.socket = context.wrap_socket(self.socket, server_side=True)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.server_address[1]}"


@pytest.fixture()
def api_server(tls: dict[str, Path]) -> Iterator[_TlsApiServer]:
    server = _TlsApiServer(tls)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _use_kubeconfig(
    monkeypatch: pytest.MonkeyPatch, path: Path, server: str, cluster: dict[str, Any], user: Any
) -> None:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": {"server": server, **cluster}}],
        "users": [{"name": "u", "user": user}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "c",
    }
    path.write_text(yaml.safe_dump(config))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(path))


async def _read_pods(times: int) -> list[dict[str, Any] | None]:
    api = KubeApi()
    try:
        return [await api.read_pod("ns", "p") for _ in range(times)]
    finally:
        await api.close()


def test_requests_go_over_tls_with_the_kubeconfigs_ca_client_certificate_and_token(
    tls: dict[str, Path],
    api_server: _TlsApiServer,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    user = {
        "client-certificate": str(tls["client.crt"]),
        "client-key": str(tls["client.key"]),
        "token": "the-token",
    }
    cluster = {"certificate-authority": str(tls["ca.crt"])}
    _use_kubeconfig(monkeypatch, tmp_path / "config", api_server.url, cluster, user)
    assert asyncio.run(_read_pods(1)) == [POD]
    assert api_server.seen == [
        ("GET", "/api/v1/namespaces/ns/pods/p", "Bearer the-token", "client")
    ]


def test_an_api_server_the_ca_does_not_vouch_for_is_a_kube_error(
    api_server: _TlsApiServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # No certificate-authority: the system's CAs, which never signed the test's server.
    _use_kubeconfig(monkeypatch, tmp_path / "config", api_server.url, {}, {"token": "secret"})
    with pytest.raises(KubeError) as raised:
        asyncio.run(_read_pods(1))
    assert raised.value.status == 0
    assert "read pods ns/p: no reply" in str(raised.value)
    assert "secret" not in str(raised.value)
    assert api_server.seen == []


def test_an_unreachable_api_server_is_a_kube_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    with socket.socket() as probe:  # a port nothing listens on once it is released
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    _use_kubeconfig(monkeypatch, tmp_path / "config", f"http://127.0.0.1:{port}", {}, {})
    with pytest.raises(KubeError) as raised:
        asyncio.run(_read_pods(1))
    assert raised.value.status == 0


def test_an_expiring_token_is_renewed_between_requests(
    tls: dict[str, Path],
    api_server: _TlsApiServer,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """A kubeconfig exec plugin's token, expired as soon as it is issued, is asked for again
    for the next request (as a service account's rotating token is re-read)."""
    plugin = tmp_path / "token_plugin.py"
    counter = tmp_path / "issued"
    plugin.write_text(
        "import datetime, json, pathlib\n"
        f"counter = pathlib.Path({str(counter)!r})\n"
        "issued = int(counter.read_text()) + 1 if counter.exists() else 1\n"
        "counter.write_text(str(issued))\n"
        "now = datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%dT%H:%M:%SZ')\n"
        "print(json.dumps({'apiVersion': 'client.authentication.k8s.io/v1beta1',\n"
        "    'kind': 'ExecCredential',\n"
        "    'status': {'token': f'token-{issued}', 'expirationTimestamp': now}}))\n"
    )
    user = {
        "exec": {
            "apiVersion": "client.authentication.k8s.io/v1beta1",
            "command": sys.executable,
            "args": [str(plugin)],
            "interactiveMode": "Never",
        }
    }
    cluster = {"certificate-authority": str(tls["ca.crt"])}
    _use_kubeconfig(monkeypatch, tmp_path / "config", api_server.url, cluster, user)
    asyncio.run(_read_pods(2))
    tokens = [authorization for _, _, authorization, _ in api_server.seen]
    assert len(tokens) == 2 and tokens[0] != tokens[1]
    assert all(t and t.startswith("Bearer token-") for t in tokens)
