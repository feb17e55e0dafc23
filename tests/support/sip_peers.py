"""Fixtures for the SIP far ends every SIP test area uses: sipp scenarios and a registrar."""

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.sipp import Sipp

SIPP_USER = "alice"
SIPP_PASSWORD = "s3cret-pw"
SippFactory = Callable[..., Sipp]


@pytest.fixture()
def sipp_factory(tmp_path: Path) -> Iterator[Callable[..., Sipp]]:
    """Starts sipp scenarios (see Sipp); kills them all in teardown."""
    started: list[Sipp] = []

    def factory(scenario: str, **kwargs: object) -> Sipp:
        sipp = Sipp(scenario, tmp_path / "sipp", **kwargs)  # type: ignore[arg-type]
        started.append(sipp)
        return sipp.start()

    yield factory
    for sipp in started:
        sipp.stop()


@pytest.fixture()
def registrar(sipp_factory: Callable[..., Sipp]) -> Sipp:
    """A sipp registrar with MD5 digest auth for alice/SIPP_PASSWORD (one registration dialog)."""
    return sipp_factory(
        "registrar_auth.xml",
        variables={"user": SIPP_USER, "pass": SIPP_PASSWORD},
        args=["-m", "1"],
    )


def account_of(registrar: Sipp) -> str:
    return f"{SIPP_USER}@{registrar.address}"
