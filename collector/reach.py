"""What the Kafka sink's reachability checks say about a broker it cannot connect to
(collector.sinks.KafkaSink._advertised_problem): down, or advertised at an address this host
cannot reach (advertised.listeners), or, where the checks cannot tell, either.

Why compare addresses and not strings: an operator writes --kafka-brokers as names or literals
of their own (localhost:9092, [::1]:9092), while the cluster's metadata gives whatever the
brokers advertise (127.0.0.1:9092, 0:0:0:0:0:0:0:1:9092). Taken as different, a broker down
that the operator bootstraps from under another spelling was said misadvertised. So an IP
literal is compared in its one textual form, and a name as itself and as the addresses it
resolves to. Names are resolved only when a check explains a failure (never on the produce
path), each at most once per RESOLVE_TTL_S, the last RESOLVED_MAX kept; a name that cannot be
resolved is compared as itself.

What counts as evidence, and what does not. A broker whose address this host connected to
before (while the cluster kept advertising it), or whose address is one --kafka-brokers names,
or any while no --kafka-brokers address answers, is down (or cut off): its address is a good
one. A --kafka-brokers name may resolve to several addresses (a headless Kubernetes Service of
a Kafka StatefulSet gives every broker's): a broker at one of them is down or cut off too, never
misadvertised (the operator's own name says a broker is meant to be there), but the name
answering says so only when it answered at that very address (a broker restarting between the
two connections): answering at another of its addresses says nothing of this one, and is not
given as evidence. A broker never reached while a --kafka-brokers address answers is
misadvertised when that is certain: when the resolver says its name does not exist, or when no
advertised broker can be reached at all (the broker answering at the bootstrap address is one of
them, advertising an address this host cannot reach), unless that answering broker may be one
of those said down (one at the address the bootstrap answered at, or any that a bootstrap
address other than a name of its own may lead to, such as a load balancer's): then the others
may be down as well. Otherwise (other brokers reached at their advertised addresses, this one
never) a broker down since before the collector first reached it looks the same as one
misadvertised: refused and timed-out connections happen to both, so both are said.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Set
from dataclasses import dataclass
from functools import cached_property

#: Seconds a name's addresses are taken as known (Resolver); a name is asked again after.
RESOLVE_TTL_S = 60.0
#: Names whose addresses are kept at most (Resolver): the least recently asked go first.
RESOLVED_MAX = 256
#: Seconds one name's resolution may take before it is taken as failed (not as nonexistent).
RESOLVE_WAIT_S = 2.0

# getaddrinfo's answers that say a name has no address (the resolver answered), as opposed to a
# resolver that could not be asked (EAI_AGAIN, EAI_FAIL), which says nothing of the name
_NO_SUCH_NAME = {socket.EAI_NONAME} | ({socket.EAI_NODATA} if hasattr(socket, "EAI_NODATA") else set())

Address = tuple[str, int]


def canonical_host(host: str) -> str:
    """A host as compared: an IP literal in its one textual form (IPv6 without brackets, zeros
    compressed, lowercase; an IPv4-mapped IPv6 address as the IPv4 one), a name lowercased
    without a final dot."""
    return _canonical(host)[0]


def _canonical(host: str) -> tuple[str, bool]:
    """canonical_host(host), and whether it is an IP literal (parsed once)."""
    h = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        ip = ipaddress.ip_address(h)
    except ValueError:
        return h.lower().rstrip(".") or h, False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped), True
    return str(ip), True


class Resolver:
    """Names -> the addresses they resolve to (canonical_host forms), each asked at most once
    per `ttl` seconds, the `most` asked last kept. A failure is kept as an answer too: none, with
    whether the resolver said the name does not exist."""

    def __init__(self, ttl: float = RESOLVE_TTL_S, most: int = RESOLVED_MAX) -> None:
        self.ttl = ttl
        self.most = most
        self._known: OrderedDict[str, tuple[float, frozenset[str], bool]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._known)

    async def addresses(self, host: str) -> tuple[frozenset[str], bool]:
        """host's addresses, and whether its name is known not to exist."""
        h, literal = _canonical(host)
        if literal:
            return frozenset((h,)), False
        now = time.monotonic()
        got = self._known.get(h)
        if got is not None and now - got[0] < self.ttl:
            self._known.move_to_end(h)
            return got[1], got[2]
        ips: frozenset[str] = frozenset()
        nonexistent = False
        try:
            infos = await asyncio.wait_for(asyncio.get_running_loop().getaddrinfo(h, None, type=socket.SOCK_STREAM),
                                           RESOLVE_WAIT_S)
            ips = frozenset(canonical_host(str(info[4][0])) for info in infos)
        except socket.gaierror as exc:
            nonexistent = exc.errno in _NO_SUCH_NAME
        except (OSError, UnicodeError, asyncio.TimeoutError):
            pass
        self._known[h] = (now, ips, nonexistent)
        self._known.move_to_end(h)
        while len(self._known) > self.most:
            self._known.popitem(last=False)
        return ips, nonexistent

    async def forms(self, host: str, port: int) -> tuple[frozenset[Address], bool]:
        """host:port as compared: itself (canonical_host) and each address its name resolves to,
        and whether its name is known not to exist."""
        ips, nonexistent = await self.addresses(host)
        return frozenset({(canonical_host(host), port)} | {(ip, port) for ip in ips}), nonexistent


class Reached:
    """The advertised addresses a check connected to, each with the address the connection
    reached: kept only while the cluster's metadata advertises that address, so that it is
    bounded by the cluster's size, and an address that was given up (a broker replaced) and comes
    back for a broker this host never reached there is not taken as reached."""

    def __init__(self) -> None:
        self._at: dict[Address, frozenset[Address]] = {}

    def __len__(self) -> int:
        return len(self._at)

    def update(self, checked: Iterable[tuple[str, int, str]]) -> None:
        """One check's findings for every advertised broker: (host, port, the IP address the
        connection reached, or "" when it could not be made)."""
        checked = list(checked)
        now = {(canonical_host(h), p) for h, p, _ip in checked}
        self._at = {a: k for a, k in self._at.items() if a in now}
        for h, p, ip in checked:
            if ip:
                a = (canonical_host(h), p)
                self._at[a] = frozenset({a, (canonical_host(ip), p)})

    def addresses(self) -> frozenset[Address]:
        return frozenset().union(*self._at.values())


@dataclass(frozen=True)
class Unreached:
    """An advertised broker a check could not connect to: as said ("H:P (node N: why)"), its
    address as compared (Resolver.forms), and whether its name is known not to exist."""

    said: str
    forms: frozenset[Address]
    nonexistent: bool


@dataclass(frozen=True)
class Bootstrap:
    """A --kafka-brokers address as written, as compared (Resolver.forms), and the address a TCP
    connection to it reached at the check (canonical_host, port), or None: not made."""

    address: str
    forms: frozenset[Address]
    at: Address | None

    @property
    def answers(self) -> bool:
        return self.at is not None

    def answered_at(self, u: Unreached) -> bool:
        """Whether this address answered at u's own address (a name of several addresses may
        have answered at another, which says nothing of u's)."""
        return self.at is not None and self.at in u.forms

    @cached_property
    def several(self) -> bool:
        """Whether this is a name resolved to more than one address (its forms read once)."""
        return sum(1 for h, _p in self.forms if _canonical(h)[1]) > 1


def _address(u: Unreached) -> str:
    """The address an unreached broker is said at ("H:P" of "H:P (node N: why)")."""
    return u.said.partition(" (")[0]


def unreached_said(bad: list[Unreached], known: int, reached: Set[Address], boot: list[Bootstrap]) -> str:
    """The sentence for the advertised brokers `bad` (of `known` advertised), or "": each said
    down, misadvertised or either, on the evidence the module docstring gives. `reached`: the
    addresses this host connected to at advertised addresses (Reached.addresses())."""
    if not bad:
        return ""
    silent = [b for b in boot if not b.answers]
    down: list[Unreached] = []
    wrong: list[Unreached] = []
    either: list[Unreached] = []
    for u in bad:
        if u.forms & reached or any(u.forms & b.forms for b in boot) or len(silent) == len(boot):
            down.append(u)
        elif u.nonexistent or len(bad) == known:
            wrong.append(u)
        else:
            either.append(u)
    if wrong and len(bad) == known and any(b.answered_at(u) or not u.forms & b.forms
                                           for u in down for b in boot if b.answers):
        # (no advertised broker reached, and some said down: the one answering at the bootstrap
        # address may be one of those, so nothing says the others are misadvertised; not one at
        # another of the addresses of the name that answered, which is another broker's)
        either += [u for u in wrong if not u.nonexistent]
        wrong = [u for u in wrong if u.nonexistent]
    said = []
    boots = ",".join(b.address for b in boot)
    if down:
        many = len(down) > 1

        def those(us: list[Unreached], it: str, them: str) -> str:
            """`it` (one broker down) or `them` (all of several) where a piece of evidence is of
            every broker down, else the addresses of those it is of: it was said of all."""
            return it if not many else them if len(us) == len(down) else ", ".join(_address(u) for u in us)

        def same_as(b: Bootstrap) -> str:
            """What a silent --kafka-brokers address is to the brokers down at an address of its:
            nothing said where it is written as one of them is; else "the same address" (a broker's
            written otherwise: the sameness is not to be seen), or, for a name of several addresses,
            those of its addresses the brokers are at (and whether it has others); which broker's,
            with several down."""
            us = [u for u in down if u.forms & b.forms]
            if not us or any(u.said.startswith(b.address + " (") for u in us):
                return ""
            if b.several:
                others = {a for a in b.forms if _canonical(a[0])[1]} - frozenset().union(*(u.forms for u in us))
                return f" (which resolves to {those(us, 'that address', 'those addresses')}{' among others' if others else ''})"
            return f" (the same address{' as ' + ', '.join(_address(u) for u in us) if many else ''})"

        def of(related: Callable[[Bootstrap, Unreached], bool]) -> list[tuple[str, str]]:
            """The --kafka-brokers addresses related to brokers down, and those brokers (said as
            `those`), grouped by the brokers they are related to."""
            groups: dict[tuple[int, ...], list[str]] = {}
            for b in boot:
                if ids := tuple(i for i, u in enumerate(down) if related(b, u)):
                    groups.setdefault(ids, []).append(b.address)
            return sorted((",".join(sorted(addresses)), those([down[i] for i in ids], "that address", "those addresses"))
                          for ids, addresses in groups.items())

        been = [u for u in down if u.forms & reached]
        evidence = [f"this host reached {those(been, 'it', 'them')} there before"] if been else []
        if silent:
            evidence.append(f"--kafka-brokers {','.join(b.address + same_as(b) for b in silent)} cannot be reached either")
        if not evidence:
            evidence += [f"--kafka-brokers {a} names {that} too, and answered there since"
                         for a, that in of(lambda b, u: b.answered_at(u))]
            evidence += [f"--kafka-brokers {a} resolves to {that} too: a broker is meant to be there"
                         for a, that in of(lambda b, u: b.answers and bool(u.forms & b.forms) and not b.answered_at(u))]
        said.append(
            f"the broker{'s' if many else ''} at {'; '.join(u.said for u in down)} "
            f"cannot be reached{'' if len(down) < known else ', nor any other broker'}: "
            f"{'they are' if many else 'it is'} down, restarting or cut off by the network ({', and '.join(evidence)})")
    if wrong:
        said.append(
            f"the cluster's metadata (from {boots}) advertises "
            f"{'; '.join(u.said for u in wrong)}, which this host cannot reach"
            f"{'' if len(wrong) < known else ', and no other broker'}: records go to the addresses the brokers "
            "advertise, not to --kafka-brokers; set the brokers' advertised.listeners to an address this host "
            "can resolve and reach (or fix its DNS or routes to them)")
    if either:
        many = len(either) > 1
        said.append(
            f"the broker{'s' if many else ''} at {'; '.join(u.said for u in either)} "
            f"{'have' if many else 'has'} never been reached at {'their' if many else 'its'} advertised "
            f"address{'es' if many else ''}: either {'they are' if many else 'it is'} down, or "
            f"{'their' if many else 'its'} advertised.listeners {'name addresses' if many else 'names an address'} "
            "this host cannot reach (records go to the addresses the brokers advertise, not to --kafka-brokers "
            f"{boots})")
    return "; ".join(said)
