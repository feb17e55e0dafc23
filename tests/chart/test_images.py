"""The Dockerfiles pass hadolint and our own rules, and the build context they get (after
.dockerignore) is enough to build the distribution with both console scripts."""

import os
import re
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from tests.chart.dockerfile_rules import stages, violations

REPO = Path(__file__).resolve().parents[2]
IMAGES = {
    "sip-worker": REPO / "worker" / "Dockerfile",
    "sip-operator": REPO / "operator" / "Dockerfile",
}
SIPP_PEER = REPO / "tests" / "e2e" / "sipp-peer" / "Dockerfile"
HADOLINT = Path(sys.executable).parent / "hadolint"


@pytest.mark.parametrize(
    "dockerfile", [*IMAGES.values(), SIPP_PEER], ids=["worker", "operator", "sipp-peer"]
)
def test_hadolint_finds_nothing(dockerfile: Path) -> None:
    result = subprocess.run(
        [str(HADOLINT), "--no-color", "--failure-threshold", "style", str(dockerfile)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_fails_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get install gcc\nUSER root\n")
    result = subprocess.run(
        [str(HADOLINT), "--no-color", str(bad)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0
    assert "DL3007" in result.stdout  # "latest" tag


@pytest.mark.parametrize("image", IMAGES)
def test_dockerfile_follows_the_image_rules(image: str) -> None:
    text = IMAGES[image].read_text()
    assert violations(text) == []
    final = stages(text)[1][-1]
    assert final.commands("ENTRYPOINT") == [f'["{image}"]']


def test_the_entry_points_are_the_console_scripts() -> None:
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert set(IMAGES) <= set(scripts)


def test_the_rules_catch_what_they_forbid() -> None:
    bad = (
        "FROM python:3.11-slim\n"
        "RUN apt-get update && apt-get install -y gcc \\\n    build-essential\n"
        "RUN pip install .\n"
        "COPY . /src\n"
        "HEALTHCHECK CMD curl -f http://localhost/\n"
    )
    problems = violations(bad)
    assert "not multi-stage" in problems
    assert "has a HEALTHCHECK" in problems
    assert any("not a slim Python image pinned" in p for p in problems)
    assert any("runs as 'root'" in p for p in problems)
    assert any("installs build tools" in p for p in problems)
    assert any("runs pip" in p for p in problems)
    assert any("copies sources from the build context" in p for p in problems)
    # The real worker Dockerfile, switched back to root, is refused too.
    as_root = IMAGES["sip-worker"].read_text().replace("USER 10001:10001", "USER 0:0")
    assert violations(as_root) == ["final stage runs as '0', not a non-root numeric uid"]


class DockerIgnore:
    """.dockerignore with Docker's meaning: globs on paths from the context root, a pattern
    matching a directory covers everything below it, `!` re-includes, the last match wins."""

    def __init__(self, text: str) -> None:
        self.rules: list[tuple[bool, str, re.Pattern[str]]] = []
        for raw in text.splitlines():
            line = raw.strip()
            if line and not line.startswith("#"):
                glob = line.lstrip("!").strip("/")
                self.rules.append((line.startswith("!"), glob, re.compile(_glob_regex(glob))))

    def excludes(self, path: str) -> bool:
        parts = path.split("/")
        prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
        excluded = False
        for include, _, pattern in self.rules:
            if any(pattern.fullmatch(prefix) for prefix in prefixes):
                excluded = not include
        return excluded

    def may_include_below(self, directory: str) -> bool:
        """Whether anything under an excluded `directory` could be re-included."""
        return any(
            include and (glob.startswith(directory + "/") or "*" in glob)
            for include, glob, _ in self.rules
        )


def _glob_regex(glob: str) -> str:
    regex, i = "", 0
    while i < len(glob):
        if glob.startswith("**/", i):
            regex, i = regex + "(?:.*/)?", i + 3
        elif glob.startswith("**", i):
            regex, i = regex + ".*", i + 2
        elif glob[i] == "*":
            regex, i = regex + "[^/]*", i + 1
        elif glob[i] == "?":
            regex, i = regex + "[^/]", i + 1
        else:
            regex, i = regex + re.escape(glob[i]), i + 1
    return regex


def build_context() -> list[Path]:
    """The files `docker build .` sends from this checkout (every file .dockerignore keeps)."""
    ignore = DockerIgnore((REPO / ".dockerignore").read_text())
    sent: list[Path] = []
    for root, directories, files in os.walk(REPO):
        here = Path(root).relative_to(REPO).as_posix()
        prefix = "" if here == "." else here + "/"
        directories[:] = [
            d
            for d in directories
            if not ignore.excludes(prefix + d) or ignore.may_include_below(prefix + d)
        ]
        sent.extend(Path(prefix + f) for f in files if not ignore.excludes(prefix + f))
    return sent


def test_the_build_context_is_only_what_the_images_need() -> None:
    tops = {path.parts[0] for path in build_context()}
    assert tops == {"pyproject.toml", "README.md", "protos", "worker", "operator"}
    for path in build_context():
        assert path.parts[:2] in (
            ("pyproject.toml",),
            ("README.md",),
            ("protos", "ondewo"),
            ("protos", "sip_contract"),
            ("worker", "sip_worker"),
            ("operator", "sip_operator"),
        ), path


@pytest.mark.parametrize("image", IMAGES)
def test_every_copied_path_is_in_the_build_context(image: str) -> None:
    context = {str(path) for path in build_context()}
    build = stages(IMAGES[image].read_text())[1][0]
    for copy in build.commands("COPY"):
        for source in copy.split()[:-1]:
            assert source in context or any(p.startswith(source + "/") for p in context), source


def test_the_build_context_builds_the_distribution(tmp_path: Path) -> None:
    """What the build stage's `pip install .` gets is enough for a complete wheel."""
    context = tmp_path / "context"
    for path in build_context():
        target = context / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes((REPO / path).read_bytes())
    pip_wheel = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
    subprocess.run(
        [*pip_wheel, "-w", str(tmp_path / "dist"), str(context)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        entry_points = next(n for n in names if n.endswith("entry_points.txt"))
        scripts = archive.read(entry_points).decode()
    assert "sip_worker/main.py" in names
    assert "sip_operator/main.py" in names
    assert "ondewo/sip/sip_pb2.py" in names
    assert "sip_contract/status.py" in names
    assert "sip-worker = sip_worker.main:main" in scripts
    assert "sip-operator = sip_operator.main:main" in scripts
