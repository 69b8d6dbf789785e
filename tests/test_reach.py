"""collector/reach.py where a real broker cannot show it, or only over hours: addresses written
two ways, names resolved (from /etc/hosts: localhost), the addresses reached kept only while
advertised, and the evidence that decides between down, misadvertised and either."""

from __future__ import annotations

import asyncio
import socket

import pytest

from collector.reach import Bootstrap, Reached, Resolver, Unreached, canonical_host, unreached_said


def _localhost_is_127_0_0_1_only() -> None:
    if {i[4][0] for i in socket.getaddrinfo("localhost", None, type=socket.SOCK_STREAM)} != {"127.0.0.1"}:
        pytest.skip("localhost is not 127.0.0.1 alone here")


def test_an_ip_literal_written_several_ways_is_one_host() -> None:
    assert {canonical_host(h) for h in ("::1", "[::1]", "0:0:0:0:0:0:0:1", "0::1", "::0001")} == {"::1"}
    assert canonical_host("::FFFF:10.1.2.3") == "10.1.2.3"     # (IPv4-mapped: the IPv4 address)
    assert canonical_host("2001:DB8::A") == "2001:db8::a"
    assert canonical_host("Kafka-0.Kafka.NS.svc.") == "kafka-0.kafka.ns.svc"


def test_names_are_resolved_once_per_ttl_and_at_most_so_many_are_kept() -> None:
    _localhost_is_127_0_0_1_only()

    async def run() -> None:
        r = Resolver(ttl=3600, most=2)
        assert await r.forms("localhost", 9092) == (frozenset({("localhost", 9092), ("127.0.0.1", 9092)}), False)
        assert await r.forms("[::1]", 9093) == (frozenset({("::1", 9093)}), False)
        assert len(r) == 1      # (a literal is not resolved)
        forms, nonexistent = await r.forms("no-such-broker.invalid", 9092)
        assert forms == frozenset({("no-such-broker.invalid", 9092)})
        assert len(r) == 2
        # kept, as asked: not asked again within the ttl, so an answer kept is what is given
        r._known["localhost"] = (r._known["localhost"][0], frozenset({"192.0.2.7"}), False)
        assert await r.addresses("LOCALHOST") == (frozenset({"192.0.2.7"}), False)
        await r.forms("other-broker.invalid", 9092)
        assert len(r) == 2      # (the least recently asked went: no-such-broker.invalid)
        assert set(r._known) == {"localhost", "other-broker.invalid"}
        r.ttl = 0
        assert await r.addresses("localhost") == (frozenset({"127.0.0.1"}), False)   # asked again

    asyncio.run(run())


def test_a_name_the_resolver_says_does_not_exist_is_told_from_a_resolver_that_fails() -> None:
    try:
        socket.getaddrinfo("no-such-broker.invalid", 9092)
        pytest.skip("no-such-broker.invalid resolves here")
    except socket.gaierror as exc:
        if exc.errno != socket.EAI_NONAME:
            pytest.skip(f"this host's resolver does not say the name does not exist: {exc}")

    async def run() -> None:
        r = Resolver()
        assert await r.addresses("no-such-broker.invalid") == (frozenset(), True)
        # a name getaddrinfo refuses to ask about at all (an empty label) is no answer either way
        assert await r.addresses("a..b") == (frozenset(), False)

    asyncio.run(run())


def test_addresses_reached_are_kept_while_advertised_only() -> None:
    """An address the cluster stopped advertising (its broker replaced) is forgotten: the set
    was never emptied, so it grew with every broker a cluster ever had, and a broker advertised
    at such an address later, never reached there, was said down "reached there before"."""
    r = Reached()
    r.update([("kafka-0", 9092, "10.0.0.5"), ("kafka-1", 9092, "")])
    assert r.addresses() == {("kafka-0", 9092), ("10.0.0.5", 9092)}
    for n in range(1000):   # (weeks of brokers replaced)
        r.update([("kafka-0", 9092, ""), (f"10.1.{n // 250}.{n % 250}", 9092, f"10.1.{n // 250}.{n % 250}")])
    assert len(r) == 2 and r.addresses() == {("kafka-0", 9092), ("10.0.0.5", 9092), ("10.1.3.249", 9092)}
    r.update([("KAFKA-0.", 9092, "")])     # (the same address, written otherwise: still advertised)
    assert len(r) == 1 and r.addresses() == {("kafka-0", 9092), ("10.0.0.5", 9092)}
    r.update([("kafka-1", 9092, "")])      # kafka-0 no longer advertised
    assert len(r) == 0
    # kafka-0 advertised again, for a broker never reached there: not "reached before"
    r.update([("kafka-0", 9092, ""), ("kafka-1", 9092, "10.0.0.6")])
    bad = [Unreached("kafka-0:9092 (node 0: Connection refused)",
                     frozenset({("kafka-0", 9092), ("10.0.0.5", 9092)}), False)]
    said = unreached_said(bad, 2, r.addresses(), [Bootstrap("kafka-1:9092", frozenset({("kafka-1", 9092)}), ("10.0.0.6", 9092))])
    assert said.startswith("the broker at kafka-0:9092 (node 0: Connection refused) has never been reached"), said


def _boot(address: str, *forms: tuple[str, int], answers: bool = True, at: tuple[str, int] | None = None) -> Bootstrap:
    """A --kafka-brokers address that answered (at `at`, else at its first IP form) or not."""
    if answers and at is None:
        at = next(f for f in forms if f[0][0].isdigit())
    return Bootstrap(address, frozenset(forms), at if answers else None)


def _bad(said: str, *forms: tuple[str, int], nonexistent: bool = False) -> Unreached:
    return Unreached(said, frozenset(forms), nonexistent)


def test_the_evidence_for_down_misadvertised_or_either() -> None:
    b0 = _bad("10.0.0.5:9092 (node 0: Connection refused)", ("10.0.0.5", 9092))
    b1 = _bad("10.0.0.6:9092 (node 1: no answer)", ("10.0.0.6", 9092))
    lb = _boot("kafka.example:9092", ("kafka.example", 9092), ("10.9.9.9", 9092))
    # reached before: down, whatever the others
    assert unreached_said([b0], 3, {("10.0.0.5", 9092)}, [lb]) == (
        "the broker at 10.0.0.5:9092 (node 0: Connection refused) cannot be reached: it is down, restarting or "
        "cut off by the network (this host reached it there before)")
    # its address is a --kafka-brokers one that answered at the check: down (a broker restarting
    # between the two connections), not misadvertised, even with no advertised broker reached
    assert unreached_said([b0], 1, set(), [_boot("localhost:9092", ("10.0.0.5", 9092))]) == (
        "the broker at 10.0.0.5:9092 (node 0: Connection refused) cannot be reached, nor any other broker: it is "
        "down, restarting or cut off by the network (--kafka-brokers localhost:9092 names that address too, and "
        "answered there since)")
    # no advertised broker reached while the bootstrap address answers: misadvertised
    assert unreached_said([b0, b1], 2, set(), [lb]).startswith(
        "the cluster's metadata (from kafka.example:9092) advertises 10.0.0.5:9092 (node 0: Connection refused); "
        "10.0.0.6:9092 (node 1: no answer), which this host cannot reach, and no other broker: records go to the "
        "addresses the brokers advertise, not to --kafka-brokers; set the brokers' advertised.listeners")
    # ... unless one of them was reached before: the broker answering at the bootstrap address
    # may be that one, so the other one may be down as well as misadvertised
    assert unreached_said([b0, b1], 2, {("10.0.0.5", 9092)}, [lb]) == (
        "the broker at 10.0.0.5:9092 (node 0: Connection refused) cannot be reached: it is down, restarting or cut "
        "off by the network (this host reached it there before); the broker at 10.0.0.6:9092 (node 1: no answer) "
        "has never been reached at its advertised address: either it is down, or its advertised.listeners names "
        "an address this host cannot reach (records go to the addresses the brokers advertise, not to "
        "--kafka-brokers kafka.example:9092)")
    # never reached while another broker is: either; two of them said together
    assert unreached_said([b0, b1], 3, set(), [lb]) == (
        "the brokers at 10.0.0.5:9092 (node 0: Connection refused); 10.0.0.6:9092 (node 1: no answer) have never "
        "been reached at their advertised addresses: either they are down, or their advertised.listeners name "
        "addresses this host cannot reach (records go to the addresses the brokers advertise, not to "
        "--kafka-brokers kafka.example:9092)")
    # a name that does not exist: misadvertised (or this host's DNS), even with others reached
    gone = _bad("kafka-2.internal:9092 (node 2: Name or service not known)", ("kafka-2.internal", 9092),
                nonexistent=True)
    assert unreached_said([gone], 3, set(), [lb]).startswith(
        "the cluster's metadata (from kafka.example:9092) advertises kafka-2.internal:9092 (node 2: Name or service "
        "not known), which this host cannot reach: records go")
    # ... but one reached at that name before (a name taken away with its broker) is down
    assert "cannot be reached: it is down" in unreached_said([gone], 3, {("kafka-2.internal", 9092)}, [lb])
    # no --kafka-brokers address answers: down
    silent = _boot("kafka.example:9092", ("kafka.example", 9092), answers=False)
    assert unreached_said([b1], 3, set(), [silent]) == (
        "the broker at 10.0.0.6:9092 (node 1: no answer) cannot be reached: it is down, restarting or cut off by "
        "the network (--kafka-brokers kafka.example:9092 cannot be reached either)")
    assert unreached_said([], 3, set(), [silent]) == ""


def test_a_bootstrap_name_of_several_addresses_is_evidence_for_its_addresses_not_its_answer() -> None:
    """--kafka-brokers kafka.example:9092 resolving to every broker's address (a headless
    Kubernetes Service of a Kafka StatefulSet). A broker at one of them never reached is down or
    cut off, not misadvertised (the operator's own name says a broker is meant to be there); but
    the name answering, at another of its addresses, says nothing of that one, and was given as
    if it did (names that address too), and a silent name was called "the same address". It was
    also taken as possibly that broker answering, so that with no advertised broker reachable the
    one advertised elsewhere was said to be either down or misadvertised, when the broker that
    answered (at an address no advertised broker has) is the misadvertised one."""
    ips = [("10.0.0.5", 9092), ("10.0.0.6", 9092), ("10.0.0.7", 9092)]
    b1 = _bad("10.0.0.6:9092 (node 1: Connection refused)", ("10.0.0.6", 9092))

    def svc(at: tuple[str, int] | None) -> Bootstrap:
        return _boot("kafka.example:9092", ("kafka.example", 9092), *ips, at=at, answers=at is not None)

    # answering at another of its addresses: down, for the address the name gives, not the answer
    assert unreached_said([b1], 3, set(), [svc(("10.0.0.5", 9092))]) == (
        "the broker at 10.0.0.6:9092 (node 1: Connection refused) cannot be reached: it is down, restarting or cut "
        "off by the network (--kafka-brokers kafka.example:9092 resolves to that address too: a broker is meant "
        "to be there)")
    # answering at that very address since the broker refused it there: restarting
    assert unreached_said([b1], 3, set(), [svc(("10.0.0.6", 9092))]).endswith(
        "(--kafka-brokers kafka.example:9092 names that address too, and answered there since)")
    # the name silent at all of its addresses: down, and not "the same address"
    assert unreached_said([b1], 3, set(), [svc(None)]).endswith(
        "(--kafka-brokers kafka.example:9092 (which resolves to that address among others) cannot be reached "
        "either)")
    # no advertised broker reachable: the name answered at 10.0.0.5, where no broker is advertised,
    # so the broker there advertises another address: node 2's, misadvertised; node 1 is down
    b2 = _bad("kafka-2.internal:9092 (node 2: no answer)", ("kafka-2.internal", 9092), ("10.1.1.1", 9092))
    assert unreached_said([b1, b2], 2, set(), [svc(("10.0.0.5", 9092))]) == (
        "the broker at 10.0.0.6:9092 (node 1: Connection refused) cannot be reached: it is down, restarting or cut "
        "off by the network (--kafka-brokers kafka.example:9092 resolves to that address too: a broker is meant "
        "to be there); the cluster's metadata (from kafka.example:9092) advertises kafka-2.internal:9092 (node 2: "
        "no answer), which this host cannot reach: records go to the addresses the brokers advertise, not to "
        "--kafka-brokers; set the brokers' advertised.listeners to an address this host can resolve and reach "
        "(or fix its DNS or routes to them)")
    # ... but answering at node 1's own address, the broker answering may be node 1 (restarting):
    # nothing says node 2 is misadvertised
    assert "the broker at kafka-2.internal:9092 (node 2: no answer) has never been reached" in unreached_said(
        [b1, b2], 2, set(), [svc(("10.0.0.6", 9092))])
    # ... and so through a bootstrap address that is none of node 1's (a load balancer's)
    lb = _boot("lb.example:9092", ("lb.example", 9092), ("10.9.9.9", 9092))
    assert "the broker at kafka-2.internal:9092 (node 2: no answer) has never been reached" in unreached_said(
        [b1, b2], 2, set(), [svc(None), lb])


def test_evidence_of_some_brokers_down_names_them() -> None:
    """Several brokers said down, the evidence of one only: "this host reached them there
    before" was said of all of them (a broker never reached said reached), as was "names that
    address too" of the one address a bootstrap broker answered at. Each piece of evidence names
    the brokers it is of, unless it is of every one said down."""
    b0 = _bad("10.0.0.5:9092 (node 0: Connection refused)", ("10.0.0.5", 9092))
    b1 = _bad("10.0.0.6:9092 (node 1: no answer)", ("10.0.0.6", 9092))
    silent = _boot("10.0.0.5:9092", ("10.0.0.5", 9092), answers=False)
    assert unreached_said([b0, b1], 2, {("10.0.0.5", 9092)}, [silent]).endswith(
        "they are down, restarting or cut off by the network (this host reached 10.0.0.5:9092 there before, and "
        "--kafka-brokers 10.0.0.5:9092 cannot be reached either)")
    assert "(this host reached them there before" in unreached_said(
        [b0, b1], 2, {("10.0.0.5", 9092), ("10.0.0.6", 9092)}, [silent])
    ips = [("10.0.0.5", 9092), ("10.0.0.6", 9092), ("10.0.0.7", 9092)]
    svc = _boot("kafka.example:9092", ("kafka.example", 9092), *ips, at=("10.0.0.6", 9092))
    assert unreached_said([b0, b1], 3, set(), [svc]).endswith(
        "they are down, restarting or cut off by the network (--kafka-brokers kafka.example:9092 names 10.0.0.6:9092 "
        "too, and answered there since, and --kafka-brokers kafka.example:9092 resolves to 10.0.0.5:9092 too: a "
        "broker is meant to be there)")
    elsewhere = _boot("kafka.example:9092", ("kafka.example", 9092), *ips, at=("10.0.0.7", 9092))
    assert unreached_said([b0, b1], 3, set(), [elsewhere]).endswith(
        "(--kafka-brokers kafka.example:9092 resolves to those addresses too: a broker is meant to be there)")


def test_a_silent_bootstrap_address_says_which_broker_down_it_is_the_same_address_as() -> None:
    """Several brokers said down, each --kafka-brokers address silent: one written otherwise than
    the broker's address it is (a name, another IPv6 form) was said "(the same address)", which
    with several down does not say which. It names the broker now (with one down it is plain);
    and a name of several addresses names those of the brokers down it resolves to ("among
    others" only where it has others: of two brokers down at its only two addresses it said "that
    address among others")."""
    b0 = _bad("[::1]:9092 (node 0: Connection refused)", ("::1", 9092))
    b1 = _bad("10.0.0.6:9092 (node 1: Connection refused)", ("10.0.0.6", 9092))
    b2 = _bad("10.0.0.7:9092 (node 2: Connection refused)", ("10.0.0.7", 9092))
    v6 = _boot("[0:0:0:0:0:0:0:1]:9092", ("::1", 9092), answers=False)
    k1 = _boot("kafka-1.example:9092", ("kafka-1.example", 9092), ("10.0.0.6", 9092), answers=False)
    as_written = _boot("10.0.0.7:9092", ("10.0.0.7", 9092), answers=False)
    assert unreached_said([b0, b1, b2], 3, set(), [v6, k1, as_written]).endswith(
        "they are down, restarting or cut off by the network (--kafka-brokers [0:0:0:0:0:0:0:1]:9092 (the same "
        "address as [::1]:9092),kafka-1.example:9092 (the same address as 10.0.0.6:9092),10.0.0.7:9092 cannot be "
        "reached either)")
    # one broker down: which one goes without saying
    assert unreached_said([b1], 3, set(), [k1]).endswith(
        "(--kafka-brokers kafka-1.example:9092 (the same address) cannot be reached either)")
    svc = _boot("kafka.example:9092", ("kafka.example", 9092), ("10.0.0.5", 9092), ("10.0.0.6", 9092),
                ("10.0.0.7", 9092), answers=False)
    assert unreached_said([b0, b1, b2], 3, set(), [svc]).endswith(
        "(--kafka-brokers kafka.example:9092 (which resolves to 10.0.0.6:9092, 10.0.0.7:9092 among others) cannot "
        "be reached either)")
    assert unreached_said([b1, b2], 3, set(), [svc]).endswith(
        "(--kafka-brokers kafka.example:9092 (which resolves to those addresses among others) cannot be reached "
        "either)")
    pair = _boot("kafka.example:9092", ("kafka.example", 9092), ("10.0.0.6", 9092), ("10.0.0.7", 9092),
                 answers=False)
    assert unreached_said([b1, b2], 3, set(), [pair]).endswith(
        "(--kafka-brokers kafka.example:9092 (which resolves to those addresses) cannot be reached either)")
    assert unreached_said([b1], 3, set(), [pair]).endswith(
        "(--kafka-brokers kafka.example:9092 (which resolves to that address among others) cannot be reached "
        "either)")
