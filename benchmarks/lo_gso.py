"""Set the largest IPv4 segment a device builds and takes whole (BIG TCP: the kernel's
`gso_ipv4_max_size` and `gro_ipv4_max_size`, Linux 6.3+), which Debian 12's iproute2 cannot set.

    ip netns add fsb && ip netns exec fsb ip link set lo up
    ip netns exec fsb python -m benchmarks.lo_gso 262144
    ip netns exec fsb ip link set dev lo gso_max_size 262144 gro_max_size 262144

For the benchmarks/RESULTS.md section on loopback's segments (forty-first session): over
loopback the broker's TCP receive runs on the collector's core once per segment, 64 KiB at most
as the device comes. Run it in a network namespace of the benchmark's own, never on the host's
loopback. The size may not exceed the device's `tso_max_size` (`ip -d link show lo`)."""

from __future__ import annotations

import argparse
import socket
import struct

RTM_NEWLINK, RTM_GETLINK = 16, 18
NLM_F_REQUEST, NLM_F_ACK = 0x1, 0x4
NLMSG_ERROR = 2
IFLA_GSO_IPV4_MAX_SIZE, IFLA_GRO_IPV4_MAX_SIZE = 63, 64  # include/uapi/linux/if_link.h


def _ask(msg_type: int, flags: int, ifname: str, what: str, attrs: bytes = b"") -> bytes:
    """One rtnetlink request about `ifname` (struct ifinfomsg, then `attrs`); the answer."""
    body = struct.pack("=BxHiII", socket.AF_UNSPEC, 0, socket.if_nametoindex(ifname), 0, 0) + attrs
    msg = struct.pack("=IHHII", 16 + len(body), msg_type, NLM_F_REQUEST | flags, 1, 0) + body
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0) as s:   # NETLINK_ROUTE
        s.bind((0, 0))
        s.send(msg)
        answer = s.recv(65536)
    if struct.unpack_from("=H", answer, 4)[0] == NLMSG_ERROR and (err := struct.unpack_from("=i", answer, 16)[0]):
        raise OSError(-err, f"{ifname}: {what} refused")
    return answer


def set_ipv4_max_sizes(ifname: str, size: int) -> None:
    """Both sizes of `ifname` to `size` bytes; OSError with the kernel's errno when refused."""
    _ask(RTM_NEWLINK, NLM_F_ACK, ifname, f"gso/gro_ipv4_max_size {size} (at most its tso_max_size)",
         b"".join(struct.pack("=HHI", 8, kind, size) for kind in (IFLA_GSO_IPV4_MAX_SIZE, IFLA_GRO_IPV4_MAX_SIZE)))


def ipv4_max_sizes(ifname: str) -> tuple[int, int]:
    """(gso_ipv4_max_size, gro_ipv4_max_size) of `ifname` as the kernel reports them."""
    answer = _ask(RTM_GETLINK, 0, ifname, "reading its settings")
    found: dict[int, int] = {}
    off = 16 + 16   # nlmsghdr, ifinfomsg
    end = struct.unpack_from("=I", answer, 0)[0]
    while off + 4 <= end:
        length, kind = struct.unpack_from("=HH", answer, off)
        if length < 4:
            break
        if kind in (IFLA_GSO_IPV4_MAX_SIZE, IFLA_GRO_IPV4_MAX_SIZE) and length >= 8:
            found[kind] = struct.unpack_from("=I", answer, off + 4)[0]
        off += (length + 3) & ~3
    if len(found) < 2:
        raise OSError(f"{ifname}: the kernel reports no gso/gro_ipv4_max_size (before Linux 6.3?)")
    return found[IFLA_GSO_IPV4_MAX_SIZE], found[IFLA_GRO_IPV4_MAX_SIZE]


def main() -> None:
    ap = argparse.ArgumentParser(allow_abbrev=False, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("size", type=int, help="bytes (loopback as it comes: 65536)")
    ap.add_argument("--dev", default="lo")
    args = ap.parse_args()
    try:
        set_ipv4_max_sizes(args.dev, args.size)
        gso, gro = ipv4_max_sizes(args.dev)
    except OSError as exc:
        raise SystemExit(f"lo_gso: {exc}") from None
    print(f"{args.dev}: gso_ipv4_max_size {gso}, gro_ipv4_max_size {gro}")


if __name__ == "__main__":
    main()
