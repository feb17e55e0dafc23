"""Our own rules for the production Dockerfiles, beyond what hadolint checks.

Multi-stage; a slim Python base pinned to a patch release; the final stage runs as a non-root
numeric user, builds nothing (no compilers, no pip) and only copies the built virtualenv;
no HEALTHCHECK (Kubernetes probes do that).
"""

import re
from dataclasses import dataclass, field

COMPILERS = re.compile(
    r"\b(gcc|g\+\+|cc|c\+\+|clang|make|build-essential|python3?-dev|libc6?-dev|"
    r"cmake|autoconf|automake|libtool|pkg-config|swig)\b"
)
PINNED_SLIM_PYTHON = re.compile(r"^(docker\.io/library/)?python:\d+\.\d+\.\d+-slim-[a-z]+$")


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def commands(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]


def instructions(text: str) -> list[tuple[str, str]]:
    """(KEYWORD, arguments) per instruction, continuation lines joined, comments dropped."""
    result: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = pending + line
        pending = ""
        keyword, _, args = full.partition(" ")
        result.append((keyword.upper(), args.strip()))
    return result


def stages(text: str) -> tuple[dict[str, str], list[Stage]]:
    """Build arguments declared before the first FROM (with defaults), and the stages."""
    global_args: dict[str, str] = {}
    found: list[Stage] = []
    for keyword, args in instructions(text):
        if keyword == "FROM":
            parts = args.split()
            base = parts[0]
            for name, value in global_args.items():
                base = base.replace("${" + name + "}", value).replace("$" + name, value)
            alias = parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else None
            found.append(Stage(base=base, name=alias))
        elif not found:
            if keyword == "ARG":
                name, _, default = args.partition("=")
                global_args[name] = default
        else:
            found[-1].instructions.append((keyword, args))
    return global_args, found


def violations(text: str) -> list[str]:
    """Every rule the Dockerfile breaks (empty when it follows them all)."""
    _, found = stages(text)
    problems: list[str] = []
    if len(found) < 2:
        problems.append("not multi-stage")
    if not found:
        return problems
    final = found[-1]
    for stage in found:
        if not PINNED_SLIM_PYTHON.match(stage.base):
            problems.append(f"base {stage.base!r} is not a slim Python image pinned to a patch")
    everything = [kw for stage in found for kw, _ in stage.instructions]
    if "HEALTHCHECK" in everything:
        problems.append("has a HEALTHCHECK")
    users = final.commands("USER")
    user = users[-1].split(":")[0] if users else "root"
    if not user.isdigit() or int(user) == 0:
        problems.append(f"final stage runs as {user!r}, not a non-root numeric uid")
    for run in final.commands("RUN"):
        if COMPILERS.search(run):
            problems.append(f"final stage installs build tools: {run}")
        if re.search(r"\bpip3?\b|\bpython3? -m pip\b", run):
            problems.append(f"final stage runs pip: {run}")
    copies = final.commands("COPY")
    if not any(c.startswith("--from=") for c in copies):
        problems.append("final stage copies nothing from the build stage")
    if [c for c in copies if not c.startswith("--from=")]:
        problems.append("final stage copies sources from the build context")
    return problems
