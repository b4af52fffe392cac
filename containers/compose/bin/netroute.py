#!/usr/bin/env python3
"""Add or replace an IPv4 route through rtnetlink, for images without iproute2.

    netroute.py replace 10.246.0.0/24 172.30.0.5     # ip route replace ... via ...
    netroute.py delete  10.246.0.0/24                # ip route del ...

The Slurm containers of the compose test cluster (controller, login) reach the pods of a
kubelet node through that node's address on the compose network; their images carry
python3 but not iproute2. Needs CAP_NET_ADMIN. Exit 1 with one line on stderr on failure.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import struct
import sys

RTM_NEWROUTE, RTM_DELROUTE = 24, 25
NLM_F_REQUEST, NLM_F_ACK, NLM_F_REPLACE, NLM_F_CREATE = 0x1, 0x4, 0x100, 0x400
NLMSG_ERROR = 2
RT_TABLE_MAIN, RTPROT_STATIC, RT_SCOPE_UNIVERSE, RTN_UNICAST = 254, 4, 0, 1
RTA_DST, RTA_GATEWAY = 1, 5


def _attr(kind: int, data: bytes) -> bytes:
    length = 4 + len(data)
    return struct.pack("=HH", length, kind) + data + b"\0" * ((4 - length % 4) % 4)


def route(action: str, cidr: str, gateway: str | None) -> None:
    net = ipaddress.IPv4Network(cidr, strict=True)
    body = struct.pack("=BBBBBBBBI", socket.AF_INET, net.prefixlen, 0, 0, RT_TABLE_MAIN,
                       RTPROT_STATIC, RT_SCOPE_UNIVERSE, RTN_UNICAST, 0)
    body += _attr(RTA_DST, net.network_address.packed)
    flags = NLM_F_REQUEST | NLM_F_ACK
    if action == "replace":
        assert gateway is not None
        body += _attr(RTA_GATEWAY, ipaddress.IPv4Address(gateway).packed)
        kind, flags = RTM_NEWROUTE, flags | NLM_F_CREATE | NLM_F_REPLACE
    else:
        kind = RTM_DELROUTE
    msg = struct.pack("=IHHII", 16 + len(body), kind, flags, 1, 0) + body
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE) as sock:
        sock.settimeout(5)
        sock.bind((0, 0))
        sock.send(msg)
        reply = sock.recv(65536)
    _, rtype, _, _, _ = struct.unpack("=IHHII", reply[:16])
    if rtype != NLMSG_ERROR:
        raise OSError(f"unexpected netlink reply type {rtype}")
    (code,) = struct.unpack("=i", reply[16:20])
    if code:
        raise OSError(-code, os.strerror(-code))


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[0] not in ("replace", "delete") or \
            (argv[0] == "replace" and len(argv) != 3):
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    try:
        route(argv[0], argv[1], argv[2] if len(argv) > 2 else None)
    except (OSError, ValueError) as exc:
        hint = " (the container needs CAP_NET_ADMIN)" if getattr(exc, "errno", None) in (
            errno.EPERM, errno.EACCES) else ""
        print(f"netroute: {argv[0]} {' '.join(argv[1:])}: {exc}{hint}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
