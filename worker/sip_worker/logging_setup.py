"""Process logging: human text or one JSON object a line, to stderr, with secrets masked.

The masking is a last line of defence: no code logs a password or token on purpose, but a
library echoing a config value, or an exception message quoting one, must not leak it either.
"""

import json
import logging
import sys
from collections.abc import Iterable
from datetime import UTC, datetime

MASK = "***"
# Masking a very short secret would garble ordinary words in every log line.
_MIN_MASKED_LENGTH = 4


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=False)


class SecretMasker(logging.Formatter):
    """Formats with `inner`, then replaces every known secret in the finished line."""

    def __init__(self, inner: logging.Formatter, secrets: Iterable[str]) -> None:
        super().__init__()
        self._inner = inner
        self._secrets = sorted(
            {secret for secret in secrets if len(secret) >= _MIN_MASKED_LENGTH},
            key=len,
            reverse=True,
        )

    def format(self, record: logging.LogRecord) -> str:
        line = self._inner.format(record)
        for secret in self._secrets:
            line = line.replace(secret, MASK)
        return line


def configure_logging(level: str, log_format: str, secrets: Iterable[str] = ()) -> None:
    """Replaces the root logger's handlers with one stderr handler in the given format."""
    if log_format == "json":
        formatter: logging.Formatter = JsonFormatter()
    else:
        formatter = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(SecretMasker(formatter, secrets))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
