"""A real kernel NAT between two network namespaces, for SIP and RTP through NAT.

    private (192.0.2.2) --veth-- nat (192.0.2.1 | 198.51.100.1) --veth-- public (198.51.100.2)

The nat namespace forwards and masquerades what leaves on its public side (iptables
MASQUERADE, Linux conntrack: address- and port-dependent filtering, source ports kept where
free), so the private side reaches the public one and nothing comes back in unasked. A fourth
veth, from the root namespace to the private one (a /30 in 203.0.113.0/24), carries the test's
own traffic with the worker (gRPC and Redis) and is no route to anywhere else. Every address
is in a documentation range and nothing is routed out of these namespaces.

Names carry the test process's pid, so parallel runs do not collide; namespaces left behind by
a run that was killed are deleted when the next one starts. `destroy()` deletes the
namespaces, and with them their veths, iptables rules and conntrack settings.
"""

import itertools
import os
import re
import shutil
import subprocess

PRIVATE_ADDRESS = "192.0.2.2"  # the worker
NAT_PRIVATE_ADDRESS = "192.0.2.1"
NAT_PUBLIC_ADDRESS = "198.51.100.1"  # where the private side appears from on the public side
PUBLIC_ADDRESS = "198.51.100.2"  # registrar, far ends, STUN server
_MANAGEMENT_NET = "203.0.113"
_PREFIX = "sipnat"
_UDP_TIMEOUTS = ("nf_conntrack_udp_timeout", "nf_conntrack_udp_timeout_stream")
_numbers = itertools.count(1)


def unavailable_reason() -> str | None:
    """Why network namespaces cannot be made here, or None when they can."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "no `ip` (iproute2) to make network namespaces with"
    probe = f"{_PREFIX}{os.getpid()}-probe"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"`ip netns add` fails here: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def _run(*command: str) -> str:
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed: {done.stderr.strip()}")
    return done.stdout


def _delete_leftovers() -> None:
    """Deletes the namespaces of earlier runs whose process is gone."""
    for line in _run("ip", "netns", "list").splitlines():
        match = re.match(rf"({_PREFIX}(\d+)-\S+)", line)
        if match is None or int(match[2]) == os.getpid():
            continue
        try:
            os.kill(int(match[2]), 0)
        except ProcessLookupError:
            subprocess.run(["ip", "netns", "del", match[1]], capture_output=True)


def _free_management_block() -> int:
    """The first /30 of the management range with no address in the root namespace yet."""
    taken = set(re.findall(rf"inet {_MANAGEMENT_NET}\.(\d+)/", _run("ip", "-4", "-o", "addr")))
    for base in range(0, 256, 4):
        if not {str(base + 1), str(base + 2)} & taken:
            return base
    raise RuntimeError(f"no free /30 left in {_MANAGEMENT_NET}.0/24 in the root namespace")


class NatNetwork:
    """The three namespaces and their links; `destroy()` removes them all."""

    def __init__(self) -> None:
        if shutil.which("iptables") is None:
            raise RuntimeError("iptables is not installed (.ci/run installs it)")
        _delete_leftovers()
        tag = f"{_PREFIX}{os.getpid()}-{next(_numbers)}"
        self.private = f"{tag}-private"
        self.nat = f"{tag}-nat"
        self.public = f"{tag}-public"
        short = tag.removeprefix(_PREFIX).replace("-", "x")  # interface names: 15 bytes at most
        self._links = {name: f"sn{short}{name}" for name in ("m0", "m1", "p0", "p1", "u0", "u1")}
        self.created: list[str] = []
        try:
            self._build()
        except BaseException:
            self.destroy()
            raise

    def _build(self) -> None:
        link = self._links
        for namespace in (self.private, self.nat, self.public):
            _run("ip", "netns", "add", namespace)
            self.created.append(namespace)
            self.ip(namespace, "link", "set", "lo", "up")
        self._veth(
            (link["p0"], self.private, PRIVATE_ADDRESS), (link["p1"], self.nat, NAT_PRIVATE_ADDRESS)
        )
        self._veth(
            (link["u0"], self.nat, NAT_PUBLIC_ADDRESS), (link["u1"], self.public, PUBLIC_ADDRESS)
        )
        self.ip(self.private, *f"route add default via {NAT_PRIVATE_ADDRESS}".split())
        self.run(self.nat, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1")
        self.iptables(*f"-t nat -A POSTROUTING -o {link['u0']} -j MASQUERADE".split())
        base = _free_management_block()
        self.management_root = f"{_MANAGEMENT_NET}.{base + 1}"  # the test's side
        self.management_private = f"{_MANAGEMENT_NET}.{base + 2}"  # the worker's gRPC
        pair = f"{link['m0']} type veth peer name {link['m1']} netns {self.private}"
        _run("ip", "link", "add", *pair.split())
        _run(*f"ip addr add {self.management_root}/30 dev {link['m0']}".split())
        _run(*f"ip link set {link['m0']} up".split())
        self.ip(self.private, *f"addr add {self.management_private}/30 dev {link['m1']}".split())
        self.ip(self.private, *f"link set {link['m1']} up".split())

    def _veth(self, left: tuple[str, str, str], right: tuple[str, str, str]) -> None:
        """A veth pair between two namespaces; each end is (interface, namespace, address/24)."""
        (left_link, left_ns, _), (right_link, right_ns, _) = left, right
        self.ip(
            left_ns,
            *f"link add {left_link} type veth peer name {right_link} netns {right_ns}".split(),
        )
        for link, namespace, address in (left, right):
            self.ip(namespace, *f"addr add {address}/24 dev {link}".split())
            self.ip(namespace, *f"link set {link} up".split())

    @property
    def nat_public_interface(self) -> str:
        return self._links["u0"]

    def exec_prefix(self, namespace: str) -> list[str]:
        """Prefix a command with this to run it inside `namespace`."""
        return ["ip", "netns", "exec", namespace]

    def run(self, namespace: str, *command: str) -> str:
        return _run(*self.exec_prefix(namespace), *command)

    def ip(self, namespace: str, *arguments: str) -> str:
        return _run("ip", "-n", namespace, *arguments)

    def iptables(self, *arguments: str) -> str:
        """iptables in the nat namespace."""
        return self.run(self.nat, "iptables", "-w", *arguments)

    def forward(self, protocol: str, ports: str, to: str = PRIVATE_ADDRESS) -> None:
        """A port forward (DNAT) from the NAT's public address to the private side; `ports`
        is one port or a `first:last` range."""
        match = f"-i {self.nat_public_interface} -p {protocol} --dport {ports}"
        self.iptables(
            "-t", "nat", "-A", "PREROUTING", *match.split(), "-j", "DNAT", "--to-destination", to
        )

    def set_udp_timeouts(self, seconds: int) -> None:
        """How long the NAT keeps an idle UDP binding, for one-way and two-way flows alike."""
        settings = [f"net.netfilter.{name}={seconds}" for name in _UDP_TIMEOUTS]
        self.run(self.nat, "sysctl", "-q", "-w", *settings)

    def udp_timeouts(self, namespace: str | None) -> list[int]:
        """The UDP conntrack timeouts in force in `namespace` (None: the root namespace)."""
        command = ["sysctl", "-n", *(f"net.netfilter.{name}" for name in _UDP_TIMEOUTS)]
        output = self.run(namespace, *command) if namespace else _run(*command)
        return [int(value) for value in output.split()]

    def destroy(self) -> None:
        for namespace in reversed(self.created):
            subprocess.run(["ip", "netns", "del", namespace], capture_output=True)
        self.created.clear()
        # Deleting the private namespace took the management veth's root end with it.
        subprocess.run(["ip", "link", "del", self._links["m0"]], capture_output=True)
