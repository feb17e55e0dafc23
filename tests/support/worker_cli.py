"""Runs `sip-worker` as a command, with only the SIP_WORKER_* variables a test gives it."""

import os
import subprocess
from pathlib import Path

SIP_WORKER = Path(__file__).resolve().parents[2] / ".venv" / "bin" / "sip-worker"


def worker_environment(env: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment without SIP_WORKER_* variables, plus `env`."""
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("SIP_WORKER_")}
    return {**inherited, **(env or {})}


def run_sip_worker(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60.0
) -> tuple[int, str]:
    """(exit code, stdout+stderr) of `sip-worker args...` run to its end."""
    result = subprocess.run(
        [str(SIP_WORKER), *args],
        env=worker_environment(env),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return result.returncode, result.stdout + result.stderr
