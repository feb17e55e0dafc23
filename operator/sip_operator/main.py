"""`sip-operator`: runs the kopf operator that turns SipSessions into worker pods.

Where to watch and how to log are flags (each also an environment variable); what to run is
configured by SIP_OPERATOR_* variables (see settings.py). The Kubernetes connection comes from
the in-cluster service account, else from $KUBECONFIG / ~/.kube/config.
"""

import argparse
import logging
import os
import sys
from collections.abc import Mapping, Sequence

import kopf

from sip_operator import reconcile
from sip_operator.settings import ENV_PREFIX, SettingsError, load_settings

LOG_FORMATS = {
    "plain": kopf.LogFormat.PLAIN,
    "full": kopf.LogFormat.FULL,
    "json": kopf.LogFormat.JSON,
}
_TRUE = ("1", "true", "yes", "on")


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
        "--liveness",
        metavar="URL",
        default=env("LIVENESS") or None,
        help="serve kopf's liveness probe, e.g. http://0.0.0.0:8080/healthz "
        f"[env {ENV_PREFIX}LIVENESS]",
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


def _is_pattern(namespace: str) -> bool:
    return any(char in namespace for char in "*?[!,")


def main(argv: Sequence[str] | None = None) -> int:
    environ = os.environ
    parser = build_parser(environ)
    args = parser.parse_args(argv)
    namespaces: list[str] = args.namespaces or [
        ns.strip() for ns in environ.get(ENV_PREFIX + "NAMESPACES", "").split(",") if ns.strip()
    ]
    if args.all_namespaces and args.namespaces:
        parser.error("give either --namespace or --all-namespaces")
    if not namespaces and not args.all_namespaces:
        parser.error("give --namespace NS (repeatable) or --all-namespaces")
    if args.log_format not in LOG_FORMATS:
        parser.error(f"--log-format must be one of {', '.join(sorted(LOG_FORMATS))}")
    try:
        load_settings(environ)  # fail here, clearly, rather than in kopf's startup
    except SettingsError as error:
        print(f"sip-operator: {error}", file=sys.stderr)
        return 2
    kopf.configure(verbose=args.verbose, quiet=args.quiet, log_format=LOG_FORMATS[args.log_format])
    if not args.verbose:
        # kopf logs every handled watch event at INFO; the controller logs what changed.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    settings = kopf.OperatorSettings()
    reconcile.configure_kopf(settings)
    if namespaces and not any(_is_pattern(ns) for ns in namespaces):
        # Fixed namespaces need no namespace scanning (and no RBAC to list namespaces).
        settings.scanning.disabled = True
    kopf.run(
        clusterwide=bool(args.all_namespaces),
        namespaces=[] if args.all_namespaces else namespaces,
        standalone=bool(args.standalone),
        liveness_endpoint=args.liveness,
        settings=settings,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
