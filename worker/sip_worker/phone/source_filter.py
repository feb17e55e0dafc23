"""`--untrusted-policy drop`: the kernel discards what untrusted sources send to the SIP port.

PJSUA answers an INVITE with 100 Trying before the application hears of it, and OPTIONS with
200 by itself, so no answer-nothing policy is possible above the socket. Instead a classic BPF
program is attached to the SIP socket (SO_ATTACH_FILTER): it reads the IP source address of
each packet (at SKF_NET_OFF, the network header, whatever the transport) and keeps only those
from the trusted networks; the rest never reach PJSIP. Over TCP the listener drops the SYN and
accepted connections inherit the program. The socket is PJSIP's own: found among the process's
file descriptors by its local address, and a duplicate of it carries the program.
"""

import ctypes
import os
import socket
import struct
from collections.abc import Iterable
from dataclasses import dataclass

from sip_worker.phone.trusted_sources import Network

_SO_ATTACH_FILTER = 26
_NET = -0x100000  # SKF_NET_OFF: loads relative to the network header
_LD_W_ABS = 0x20
_LD_B_ABS = 0x30
_ALU_AND_K = 0x54
_ALU_RSH_K = 0x74
_JMP_JA = 0x05
_JMP_JEQ_K = 0x15
_RET_K = 0x06
_DROP, _KEEP = 0, 0xFFFFFFFF
_IPV4_SOURCE, _IPV6_SOURCE = 12, 8  # offsets in the IP header


@dataclass(frozen=True)
class _Op:
    code: int
    k: int = 0
    true: str | int = 0  # a label, or 0 for the next instruction
    false: str | int = 0


def _compare(offset: int, network: Network, next_network: str) -> list[_Op]:
    """Ops that fall through when the source at `offset` is in `network`, else jump on."""
    packed, mask = network.network_address.packed, network.netmask.packed
    ops: list[_Op] = []
    for word in range(0, len(packed), 4):
        word_mask = int.from_bytes(mask[word : word + 4], "big")
        if word_mask == 0:
            break
        ops += [
            _Op(_LD_W_ABS, _NET + offset + word),
            _Op(_ALU_AND_K, word_mask),
            _Op(_JMP_JEQ_K, int.from_bytes(packed[word : word + 4], "big"), false=next_network),
        ]
    return ops


def _branch(version: int, networks: list[Network]) -> list[tuple[str | None, _Op]]:
    offset = _IPV4_SOURCE if version == 4 else _IPV6_SOURCE
    ops: list[tuple[str | None, _Op]] = []
    for number, network in enumerate(networks):
        following = f"v{version}-{number + 1}"
        block = [*_compare(offset, network, following), _Op(_JMP_JA, true="keep")]
        ops += [(f"v{version}-{number}" if i == 0 else None, op) for i, op in enumerate(block)]
    ops.append((f"v{version}-{len(networks)}", _Op(_RET_K, _DROP)))
    return ops


def program(networks: Iterable[Network]) -> bytes:
    """The filter keeping packets from `networks` (a /0 keeps all), as struct sock_filter[]."""
    listed = list(networks)
    labelled: list[tuple[str | None, _Op]] = [
        (None, _Op(_LD_B_ABS, _NET)),
        (None, _Op(_ALU_RSH_K, 4)),
        (None, _Op(_JMP_JEQ_K, 6, true="v6-0")),
        *_branch(4, [n for n in listed if n.version == 4]),
        *_branch(6, [n for n in listed if n.version == 6]),
        ("keep", _Op(_RET_K, _KEEP)),
    ]
    where = {label: index for index, (label, _) in enumerate(labelled) if label is not None}
    encoded = []
    for index, (_, op) in enumerate(labelled):
        jt, jf = (where[t] - index - 1 if isinstance(t, str) else t for t in (op.true, op.false))
        if op.code == _JMP_JA:  # its distance is in k, unbounded
            encoded.append(struct.pack("HBBI", op.code, 0, 0, jt))
        else:
            encoded.append(struct.pack("HBBI", op.code, jt, jf, op.k & 0xFFFFFFFF))
    return b"".join(encoded)


def _socket_of(port: int, kind: socket.SocketKind) -> socket.socket:
    """A duplicate of this process's socket of `kind` bound to `port` (on any address: no
    other socket of that kind has the port)."""
    for name in os.listdir("/proc/self/fd"):
        try:
            duplicate = os.dup(int(name))
        except OSError:
            continue  # closed meanwhile
        try:
            candidate = socket.socket(fileno=duplicate)
        except OSError:
            os.close(duplicate)  # not a socket
            continue
        try:
            bound = candidate.getsockname()
            if candidate.type == kind and isinstance(bound, tuple) and bound[1] == port:
                return candidate
        except OSError:
            pass
        candidate.close()
    raise RuntimeError(f"no {kind.name} socket of this process is bound to port {port}")


class SourceFilter:
    """The drop filter on the SIP socket; `admit` replaces the networks it keeps."""

    def __init__(self, port: int, transport: str) -> None:
        kind = socket.SOCK_DGRAM if transport == "udp" else socket.SOCK_STREAM  # tcp, tls
        self._socket = _socket_of(port, kind)

    def admit(self, networks: Iterable[Network]) -> None:
        instructions = program(networks)
        code = ctypes.create_string_buffer(instructions)  # the kernel copies it
        count = len(instructions) // 8  # sizeof(struct sock_filter)
        self._socket.setsockopt(
            socket.SOL_SOCKET, _SO_ATTACH_FILTER, struct.pack("HP", count, ctypes.addressof(code))
        )

    def close(self) -> None:
        self._socket.close()
