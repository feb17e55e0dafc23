"""Redis URLs: parsing, redaction, and building a client for a server or a Redis Cluster.

Accepted forms (the password may instead come from the environment variable REDIS_PASSWORD):

    redis://[[user]:password@]host[:port][/db]
    rediss://[[user]:password@]host[:port][/db][?ssl_ca_certs=PATH&ssl_cert_reqs=required|none
                                               &ssl_certfile=PATH&ssl_keyfile=PATH]
    unix://[[user]:password@]/path/to/redis.sock[?db=N]

A Redis Cluster is selected by `?cluster=true` on a redis:// or rediss:// URL naming any one
node; the client discovers the others. Passwords never appear in what this module returns as
text: `redact_url` and `RedisTarget.display` replace them with `***`.
"""

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import redis
from redis.backoff import NoBackoff
from redis.cluster import RedisCluster
from redis.retry import Retry

PASSWORD_ENV = "REDIS_PASSWORD"
DEFAULT_PORT = 6379
# A stalled server must not stall a writer forever; a dead one is noticed within this.
CONNECT_TIMEOUT = 2.0
COMMAND_TIMEOUT = 5.0

_SCHEMES = ("redis", "rediss", "unix")
_TLS_PARAMETERS = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_cert_reqs")
_PARAMETERS = ("db", "cluster", *_TLS_PARAMETERS)
_CERT_REQS = ("required", "optional", "none")
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")
# Greedy to the last "@" of the authority, as URL parsing splits it there.
_USERINFO_PASSWORD = re.compile(r"(//[^/?#@]*?:)[^/?#]*@")
_QUERY_PASSWORD = re.compile(r"(?i)(password=)[^&#]*")

RedisClient = redis.Redis | RedisCluster
_Refuse = Callable[[str], "RedisUrlError"]


class RedisUrlError(ValueError):
    """The Redis URL cannot be used; the message shows the URL with its password redacted."""


def redact_url(url: str) -> str:
    """`url` with any password replaced by `***`, safe for logs and error messages."""
    return _QUERY_PASSWORD.sub(r"\1***", _USERINFO_PASSWORD.sub(r"\1***@", url))


@dataclass(frozen=True)
class RedisTarget:
    """Where and how to connect; built by `parse_redis_url`."""

    display: str  # the URL, redacted
    cluster: bool
    options: dict[str, Any] = field(repr=False)  # keyword arguments of redis.Redis/RedisCluster
    password: str | None = field(default=None, repr=False)

    def scrub(self, text: str) -> str:
        """`text` (an error message, say) with the password replaced by `***`."""
        return text.replace(self.password, "***") if self.password else text

    def connect(
        self,
        connect_timeout: float = CONNECT_TIMEOUT,
        command_timeout: float = COMMAND_TIMEOUT,
    ) -> RedisClient:
        """A client; a cluster client contacts the cluster at once (and may raise RedisError)."""
        options = dict(
            self.options,
            socket_connect_timeout=connect_timeout,
            socket_timeout=command_timeout,
            socket_keepalive=True,
            # One immediate retry on a fresh connection covers a pooled connection that a
            # server restart closed; longer outages are the caller's to handle.
            retry=Retry(NoBackoff(), 1),
        )
        if self.cluster:
            return RedisCluster(**options)
        return redis.Redis(**options)


def parse_redis_url(url: str, environ: Mapping[str, str]) -> RedisTarget:
    """Checks `url` and returns the connection settings; raises RedisUrlError when unusable."""
    display = redact_url(url)

    def refuse(reason: str) -> RedisUrlError:
        return RedisUrlError(f"Redis URL {display!r}: {reason}")

    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as error:
        raise refuse(_url_problem(error)) from None
    if parts.scheme not in _SCHEMES:
        raise refuse(
            "the scheme must be redis://, rediss:// (TLS) or unix:// "
            "(a Redis Cluster: redis://host:port?cluster=true)"
        )
    query = _query(parts.query, refuse)
    options: dict[str, Any] = {}
    password = unquote(parts.password) if parts.password else environ.get(PASSWORD_ENV) or None
    if parts.username:
        options["username"] = unquote(parts.username)
    if password:
        options["password"] = password
    cluster = _flag(query.get("cluster", "false"), "cluster", refuse)
    db = _db(parts.scheme, parts.path, query.get("db"), refuse)

    if parts.scheme == "unix":
        if parts.hostname or port:
            raise refuse("a unix:// URL has no host: unix:///path/to/redis.sock")
        if not parts.path.startswith("/"):
            raise refuse("a unix:// URL needs the socket's absolute path: unix:///path/to/sock")
        if cluster:
            raise refuse("a Redis Cluster is reached over TCP (redis:// or rediss://)")
        options["unix_socket_path"] = unquote(parts.path)
    else:
        if not parts.hostname:
            raise refuse("the host is missing: redis://host:6379/0")
        options["host"] = unquote(parts.hostname)
        options["port"] = port or DEFAULT_PORT
    if cluster and db != 0:
        raise refuse("a Redis Cluster has only database 0")
    if not cluster:
        options["db"] = db

    tls_options = {name: query[name] for name in _TLS_PARAMETERS if name in query}
    if parts.scheme == "rediss":
        options["ssl"] = True
        options.update(tls_options)
        if options.get("ssl_cert_reqs", "required") not in _CERT_REQS:
            raise refuse(f"ssl_cert_reqs must be one of {', '.join(_CERT_REQS)}")
    elif tls_options:
        raise refuse(f"{', '.join(tls_options)} needs a rediss:// (TLS) URL")
    return RedisTarget(display=display, cluster=cluster, options=options, password=password)


def _url_problem(error: ValueError) -> str:
    if "port" in str(error).lower():
        return "the port must be a number from 1 to 65535"
    return "not a valid URL"


def _query(text: str, refuse: _Refuse) -> dict[str, str]:
    try:
        values = parse_qs(text, keep_blank_values=True, strict_parsing=bool(text))
    except ValueError:
        raise refuse("the query string is malformed") from None
    unknown = sorted(set(values) - set(_PARAMETERS))
    if unknown:
        raise refuse(
            f"unknown parameter {', '.join(unknown)} (known: {', '.join(_PARAMETERS)}; "
            f"a password goes before the host or into {PASSWORD_ENV})"
        )
    repeated = sorted(name for name, given in values.items() if len(given) > 1)
    if repeated:
        raise refuse(f"parameter {', '.join(repeated)} given more than once")
    return {name: given[0] for name, given in values.items()}


def _flag(text: str, name: str, refuse: _Refuse) -> bool:
    if text.lower() in _TRUE:
        return True
    if text.lower() in _FALSE:
        return False
    raise refuse(f"{name} must be true or false")


def _db(scheme: str, path: str, query_db: str | None, refuse: _Refuse) -> int:
    if scheme == "unix":
        text = query_db or "0"
    elif query_db is not None:
        raise refuse("give the database as the path (redis://host:6379/0), not as ?db=")
    else:
        text = path.strip("/") or "0"
    if not text.isdigit():
        raise refuse("the database must be a number (redis://host:6379/0)")
    return int(text)
