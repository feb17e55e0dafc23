"""Driving a kind cluster from the e2e test: prerequisites, kubectl, port-forwards.

The cluster itself is made by the Makefile (`make deploy`: kind cluster, images built and
loaded, `helm upgrade --install`), so the test and a person at a terminal use the same steps.
Secrets only ever travel through stdin/stdout of kubectl, never through its arguments.
"""

import base64
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

REPO = Path(__file__).resolve().parents[2]
MANIFESTS = Path(__file__).parent / "manifests"
CLUSTER = os.environ.get("KIND_CLUSTER", "sip-operator")
IMAGE_TAG = os.environ.get("IMAGE_TAG", "dev")  # the tag `make deploy` builds and loads
NAMESPACE = "sip-e2e"  # also in manifests/sipsession.yaml (the registrar's host name)
RELEASE = "sip-operator"
TOOLS = ("docker", "kind", "kubectl", "helm")

T = TypeVar("T")


def missing_prerequisites() -> str | None:
    """Why the kind e2e cannot run here, or None when it can."""
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    problems = [f"{', '.join(missing)} not installed"] if missing else []
    if "docker" not in missing:
        try:
            info = subprocess.run(["docker", "info"], capture_output=True, timeout=60)
            reachable = info.returncode == 0
        except subprocess.TimeoutExpired:
            reachable = False
        if not reachable:
            problems.append("no Docker engine reachable (docker info failed)")
    if not problems:
        return None
    return "kind e2e needs docker (with a running engine), kind, kubectl and helm: " + "; ".join(
        problems
    )


def wait_for(what: str, check: Callable[[], T | None], timeout: float, every: float = 2.0) -> T:
    """Polls `check` until it returns something other than None/False."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(every)


class Kubectl:
    """kubectl against the kind cluster's context, in the e2e namespace."""

    def __init__(self, cluster: str = CLUSTER, namespace: str = NAMESPACE) -> None:
        self.base = ["kubectl", "--context", f"kind-{cluster}", "--namespace", namespace]

    def run(self, *args: str, stdin: str | None = None, timeout: float = 120) -> str:
        result = subprocess.run(
            [*self.base, *args], input=stdin, capture_output=True, text=True, timeout=timeout
        )
        if result.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed: {result.stderr.strip()}")
        return result.stdout

    def apply(self, manifest: str) -> None:
        """Applies YAML/JSON given on stdin (so Secret data never shows in a process list)."""
        self.run("apply", "-f", "-", stdin=manifest)

    def get(self, kind: str, name: str) -> dict[str, Any] | None:
        result = subprocess.run(
            [*self.base, "get", kind, name, "-o", "json", "--ignore-not-found"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if result.returncode != 0 or not result.stdout.strip():
            return None
        found: dict[str, Any] = json.loads(result.stdout)
        return found

    def secret_value(self, name: str, key: str) -> str:
        secret = self.get("secret", name)
        assert secret is not None, f"Secret {name} not found"
        return base64.b64decode(secret["data"][key]).decode()

    def pod_ready(self, name: str) -> dict[str, Any] | None:
        pod = self.get("pod", name)
        if pod is None or pod["metadata"].get("deletionTimestamp"):
            return None
        conditions = pod.get("status", {}).get("conditions", [])
        ready = any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)
        return pod if ready else None


_FORWARDING = re.compile(r"Forwarding from 127\.0\.0\.1:(\d+)")


@contextmanager
def port_forward(kubectl: Kubectl, target: str, port: int) -> Iterator[int]:
    """Forwards a free local port to `target` (e.g. svc/x) and yields the local port."""
    process = subprocess.Popen(
        [*kubectl.base, "port-forward", "--address", "127.0.0.1", target, f":{port}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        match = _FORWARDING.search(line)
        if match is None:
            error = process.stderr.read() if process.stderr else ""
            raise AssertionError(f"port-forward to {target} failed: {line}{error}")
        yield int(match.group(1))
    finally:
        process.kill()
        process.wait(timeout=30)


def make(*targets: str, variables: Sequence[str] = ()) -> None:
    """Runs make targets in the repository, output streamed to the test log."""
    subprocess.run(["make", "-C", str(REPO), *targets, *variables], check=True, timeout=3600)
