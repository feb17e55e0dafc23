"""`sip-operator`: runs the kopf operator that turns SipSessions into worker pods.

Where to watch, how to peer, where to serve metrics and how to log are flags (each also an
environment variable); what to run is configured by SIP_OPERATOR_* variables (see settings.py).
The Kubernetes connection comes from the in-cluster service account, else from $KUBECONFIG /
~/.kube/config.

Replicas peer through a kopf peering object: the one with the highest priority serves, the
others stand by. kopf pauses every operator that sees a live peer of the same priority, so
each process takes its own (random unless --priority says otherwise).
"""

import argparse
import gc
import logging
import os
import random
import re
import sys
from collections.abc import Mapping, Sequence

import kopf

from sip_operator import handlers  # registers the kopf handlers
from sip_operator.metrics import serve_metrics
from sip_operator.settings import ENV_PREFIX, SettingsError, load_settings

LOG_FORMATS = {
    "plain": kopf.LogFormat.PLAIN,
    "full": kopf.LogFormat.FULL,
    "json": kopf.LogFormat.JSON,
}
_TRUE = ("1", "true", "yes", "on")
# How long a replica that stopped refreshing its peering entry (killed, node lost) still
# counts as alive: the standby takes over after this. kopf's default is 60 s; 15 s is the
# lease Kubernetes controllers commonly use. Each replica refreshes every 5-10 s.
PEERING_LIFETIME_S = 15
_PEERING_NAME = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")
_PORT = re.compile(r"[0-9]{1,5}")
# Random priorities: positive 32-bit integers (never 0, the priority of an operator given none).
_PRIORITY_LIMIT = 2**31


def build_parser(environ: Mapping[str, str]) -> argparse.ArgumentParser:
    def env(name: str) -> str:
        return environ.get(ENV_PREFIX + name, "")

    parser = argparse.ArgumentParser(
        prog="sip-operator",
        description="Reconciles SipSession resources (sip-operator.dev/v1alpha1) into "
        "sip-worker pods, services and API-token Secrets.",
    )
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument(
        "-n",
        "--namespace",
        dest="namespaces",
        action="append",
        metavar="NS",
        help=f"watch this namespace (repeatable; glob patterns allowed) [env {ENV_PREFIX}"
        "NAMESPACES, comma-separated]",
    )
    scope.add_argument(
        "-A",
        "--all-namespaces",
        action="store_true",
        default=env("ALL_NAMESPACES").lower() in _TRUE,
        help=f"watch the whole cluster [env {ENV_PREFIX}ALL_NAMESPACES=true]",
    )
    parser.add_argument(
        "--standalone",
        action="store_true",
        default=env("STANDALONE").lower() in _TRUE,
        help="run without kopf peering (only one operator instance may run) "
        f"[env {ENV_PREFIX}STANDALONE=true]",
    )
    parser.add_argument(
        "--peering",
        metavar="NAME",
        default=env("PEERING") or None,
        help="peer with the other replicas through the KopfPeering NAME in each watched "
        "namespace (ClusterKopfPeering NAME with --all-namespaces), which must exist; without "
        "it (and without --standalone) kopf peers through 'default' if that exists "
        f"[env {ENV_PREFIX}PEERING]",
    )
    parser.add_argument(
        "--priority",
        type=int,
        metavar="N",
        default=env("PRIORITY") or None,
        help="this replica's peering priority: the highest serves, the others stand by "
        f"(default: random, so that no two replicas tie) [env {ENV_PREFIX}PRIORITY]",
    )
    parser.add_argument(
        "--liveness",
        metavar="URL",
        default=env("LIVENESS") or None,
        help="serve kopf's liveness probe, e.g. http://0.0.0.0:8080/healthz "
        f"[env {ENV_PREFIX}LIVENESS]",
    )
    parser.add_argument(
        "--metrics-port",
        type=_metrics_port,
        metavar="PORT",
        default=env("METRICS_PORT") or "0",
        help="serve the operator's Prometheus metrics on /metrics at this port, on every "
        f"interface (default 0: off) [env {ENV_PREFIX}METRICS_PORT]",
    )
    parser.add_argument(
        "--log-format",
        choices=sorted(LOG_FORMATS),
        default=env("LOG_FORMAT") or "full",
        help=f"log line format [env {ENV_PREFIX}LOG_FORMAT; default full]",
    )
    verbosity = parser.add_mutually_exclusive_group()
    verbosity.add_argument("--verbose", action="store_true", help="log at DEBUG level")
    verbosity.add_argument("--quiet", action="store_true", help="log warnings and errors only")
    return parser


def _metrics_port(text: str) -> int:
    """A port number 0-65535 (argparse also applies this to the environment's value)."""
    if not _PORT.fullmatch(text.strip()) or int(text) > 65535:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a port number 0-65535 (0: off; also read from env "
            f"{ENV_PREFIX}METRICS_PORT)"
        )
    return int(text)


def _is_pattern(namespace: str) -> bool:
    return any(char in namespace for char in "*?[!,")


def parse_args(argv: Sequence[str] | None, environ: Mapping[str, str]) -> argparse.Namespace:
    """The command line and SIP_OPERATOR_* flags, checked; exits with usage on an error."""
    parser = build_parser(environ)
    args = parser.parse_args(argv)
    args.namespaces = args.namespaces or [
        ns.strip() for ns in environ.get(ENV_PREFIX + "NAMESPACES", "").split(",") if ns.strip()
    ]
    if args.all_namespaces and args.namespaces:
        parser.error("give either --namespace or --all-namespaces")
    if not args.namespaces and not args.all_namespaces:
        parser.error("give --namespace NS (repeatable) or --all-namespaces")
    if args.log_format not in LOG_FORMATS:
        parser.error(f"--log-format must be one of {', '.join(sorted(LOG_FORMATS))}")
    if args.standalone and args.peering:
        parser.error("give either --standalone or --peering NAME")
    if args.peering is not None and not _PEERING_NAME.fullmatch(args.peering):
        parser.error("--peering must be a Kubernetes object name (lowercase, digits, '-', '.')")
    return args


def kopf_settings(args: argparse.Namespace) -> kopf.OperatorSettings:
    """kopf's settings for these arguments (kopf.run is then given no overriding ones)."""
    settings = kopf.OperatorSettings()
    handlers.configure_kopf(settings)
    if args.namespaces and not any(_is_pattern(ns) for ns in args.namespaces):
        # Fixed namespaces need no namespace scanning (and no RBAC to list namespaces).
        settings.scanning.disabled = True
    settings.peering.standalone = bool(args.standalone)
    if args.peering:
        settings.peering.name = args.peering
        settings.peering.mandatory = True  # a missing peering object pauses, never runs alone
    settings.peering.priority = (
        args.priority if args.priority is not None else random.randrange(1, _PRIORITY_LIMIT)
    )
    settings.peering.lifetime = PEERING_LIFETIME_S
    return settings


def session_namespaces(args: argparse.Namespace) -> list[str] | None:
    """Where the operator lists SipSessions itself: the namespaces named, or (None) the whole
    cluster when it watches all of them or namespace patterns."""
    if args.all_namespaces or any(_is_pattern(ns) for ns in args.namespaces):
        return None
    return list(args.namespaces)


def main(argv: Sequence[str] | None = None) -> int:
    environ = os.environ
    args = parse_args(argv, environ)
    try:
        load_settings(environ)  # fail here, clearly, rather than in kopf's startup
    except SettingsError as error:
        print(f"sip-operator: {error}", file=sys.stderr)
        return 2
    if args.metrics_port:
        try:
            serve_metrics(args.metrics_port)
        except OSError as error:
            print(
                f"sip-operator: cannot serve metrics on port {args.metrics_port}: {error}",
                file=sys.stderr,
            )
            return 1
    kopf.configure(verbose=args.verbose, quiet=args.quiet, log_format=LOG_FORMATS[args.log_format])
    if not args.verbose:
        # kopf logs every handled watch event at INFO; the controller logs what changed.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    # What start-up made (kopf, the kubernetes client's models, ...) lives as long as the
    # process: kept out of the collector, each full collection scans only the sessions' objects.
    gc.freeze()
    kopf.run(
        clusterwide=bool(args.all_namespaces),
        namespaces=[] if args.all_namespaces else args.namespaces,
        liveness_endpoint=args.liveness,
        settings=kopf_settings(args),
        memo=kopf.Memo(session_namespaces=session_namespaces(args)),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
