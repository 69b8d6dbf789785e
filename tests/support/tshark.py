"""tshark as the independent reference decoder for the golden and end-to-end tests.

Why: every expectation in the flow-decoding tests must come from something other than flowscope.
tshark (Wireshark) decodes NetFlow v5/v9, IPFIX and sFlow v5 on its own; this module runs it
(`-T json --no-duplicate-keys`, `-d udp.port==P,cflow|sflow` for non-default ports), parses its
JSON into per-datagram structures, and compares them with flowscope's output:

* `run_tshark(pcap, ...)` -> packets shaped like the shared corpus' `.tshark.json` files
  (`{"frame", "src", "sport", "dport", "cflow"|"sflow": {...}}`), so corpus files and captures
  the tests make go through the same code.
* `CflowReader` walks cflow packets in order, remembers templates per (frame, template id), and
  the IPFIX systemInitTime and options-learned sampling rates per exporting process (address, UDP
  source port, domain), and yields `CflowPacket`s with their sets and flat records; each data
  record gets the Sampling it must have (`SAMPLING_KEY`), computed from tshark's raw sampling
  fields by the RFC 5476/5477 rules (`record_sampling_rate()`), never from flowscope's output.
* `compare_flow_record()` checks one tshark data record against one flowscope flow through the
  `CFLOW_FIELDS` mapping table (tshark field -> flowscope key + conversion); unknown elements
  (`cflow.unknown_field_type`, `cflow.enterprise_private_entry`) are paired with the template's
  unknown fields and compared with flowscope's `ie<ID>` / `ie<PEN>_<ID>` hex strings.
* `parse_sflow()` / `compare_sflow_datagram()` do the same for sFlow samples and counter records.

Note on `--no-duplicate-keys`: tshark merges repeated keys of one JSON object into a list, in
order. That keeps the order within one field name but loses the interleaving between names, so
comparisons here are per field name (and per sample type for sFlow).
"""

from __future__ import annotations

import calendar
import itertools
import json
import re
import shutil
import subprocess
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TSHARK = shutil.which("tshark")

# --------------------------------------------------------------------------------------------
# Running tshark


def run_tshark(
    pcap: str | Path,
    *,
    decode_as: Iterable[str] = (),
    timeout: float = 120.0,
) -> list[dict]:
    """Decode `pcap` with tshark; return packets in the corpus `.tshark.json` shape.

    `decode_as` items are tshark `-d` values, e.g. "udp.port==9995,cflow". Only frames that carry
    a cflow or sflow layer are returned (frame numbers are tshark's).
    """
    if TSHARK is None:
        raise RuntimeError("tshark is not installed")
    cmd = [TSHARK, "-r", str(pcap), "-n", "-T", "json", "--no-duplicate-keys"]
    for d in decode_as:
        cmd += ["-d", d]
    # Keep frame, IP, UDP and the flow layers only: the rest (eth, sll) is noise here.
    cmd += ["-J", "frame ip ipv6 udp cflow sflow"]
    proc = subprocess.run(cmd, capture_output=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"tshark failed ({proc.returncode}): {proc.stderr.decode(errors='replace')}")
    raw = json.loads(proc.stdout or b"[]")
    out = []
    for pkt in raw:
        layers = pkt["_source"]["layers"]
        flow_layer = "cflow" if "cflow" in layers else "sflow" if "sflow" in layers else None
        if flow_layer is None:
            continue
        # The transport is the last IP and UDP header before the flow layer: tshark lists every
        # header of a kind together, in frame order, so an sFlow sampled header's own IP/UDP
        # (VXLAN, Geneve, DNS...) come after it, and a tunnelled export's outer ones before it.
        protos = str(_first(layers["frame"].get("frame.protocols", ""))).split(":")
        before = protos[:protos.index(flow_layer)] if flow_layer in protos else protos
        fam = next((p for p in reversed(before) if p in ("ip", "ipv6")), "ip")
        ip = _nth(layers.get(fam), before.count(fam) - 1)
        udp = _nth(layers.get("udp"), before.count("udp") - 1)
        body = layers[flow_layer]
        if isinstance(body, list):  # two flow PDUs in one frame never happens for UDP export
            body = body[0]
        if ("_ws.malformed" in layers or "_ws.unreassembled" in layers) and not _has_key(body, "_ws.malformed"):
            # tshark lists the exception beside the flow layer (e.g. sFlow 4.0 reading an unknown
            # flow record's body as the next record): its decode stopped there. When the record
            # length it then read runs past the datagram the exception is a BoundError, listed as
            # "_ws.unreassembled" (UDP has nothing to reassemble): stopped all the same.
            body = dict(body, **{"_ws.malformed": "Malformed Packet"})
        out.append(
            {
                "frame": int(_first(layers["frame"]["frame.number"])),
                "src": ip.get("ip.src") or ip.get("ipv6.src"),
                "sport": int(udp.get("udp.srcport", 0)),
                "dport": int(udp.get("udp.dstport", 0)),
                flow_layer: body,
            }
        )
    return out


def load_tshark_json(path: str | Path) -> dict:
    """A corpus `.tshark.json` file (see tests/data/NOTICE)."""
    with open(path, "rb") as f:
        return json.load(f)


def decode_as_from_command(command: str) -> list[str]:
    """The `-d` arguments recorded in a corpus file's `command`."""
    return re.findall(r"-d\s+(\S+)", command)


# --------------------------------------------------------------------------------------------
# Small value helpers


def _first(v: Any) -> Any:
    return v[0] if isinstance(v, list) else v


def _nth(v: Any, i: int) -> dict:
    """Item i of a tshark layer that is a list when repeated ({} when absent)."""
    items = _as_list(v)
    return items[max(i, 0)] if items and max(i, 0) < len(items) else {}


def _as_list(v: Any) -> list:
    if v is None:
        return []
    return v if isinstance(v, list) else [v]


def to_int(v: str) -> int:
    v = _first(v)
    return int(v, 16) if isinstance(v, str) and v.lower().startswith("0x") else int(v)


_MONTHS = {m: i for i, m in enumerate(calendar.month_abbr) if m}


def tshark_date_ms(v: str) -> int:
    """'Dec 22, 2016 12:17:37.123000000 UTC' -> Unix milliseconds (tshark prints absolute times
    as dates; the nanosecond part is truncated to milliseconds)."""
    # (years past 9999 too: a 64-bit flowStartMilliseconds can be that far, tshark prints it)
    m = re.match(r"(\w{3})\s+(\d+), (\d{4,}) (\d+):(\d+):(\d+)(?:\.(\d+))? UTC", _first(v))
    if not m:
        raise ValueError(f"unparsed tshark date {v!r}")
    mon, day, year, hh, mm, ss, frac = m.groups()
    # days since the epoch by the proleptic Gregorian calendar (calendar.timegm stops at 9999)
    y, mo = int(year) - (_MONTHS[mon] <= 2), _MONTHS[mon]
    era = y // 400
    yoe = y - era * 400
    doy = (153 * (mo + (-3 if mo > 2 else 9)) + 2) // 5 + int(day) - 1
    days = era * 146097 + yoe * 365 + yoe // 4 - yoe // 100 + doy - 719468
    secs = days * 86400 + int(hh) * 3600 + int(mm) * 60 + int(ss)
    ms = int((frac or "0").ljust(9, "0")[:3])
    return secs * 1000 + ms


def seconds_to_ms(v: str) -> int:
    """'4253045.209000000' (tshark's relative seconds) -> integer milliseconds, exactly."""
    s = _first(v)
    whole, _, frac = s.partition(".")
    return int(whole) * 1000 + int((frac or "0").ljust(3, "0")[:3])


def hexbytes(v: str) -> str:
    """tshark 'aa:bb:cc' or '0xaabb' byte rendering -> 'aabbcc'."""
    s = str(v).lower()
    if s.startswith("0x"):
        return s[2:]
    return s.replace(":", "")


def flatten(d: dict, into: dict | None = None) -> dict:
    """Flatten tshark's nested trees (`*_tree`, "Forwarding Status", ...) to one level: leaf
    field name -> value (or list of values when tshark merged duplicates)."""
    out = {} if into is None else into
    for k, v in d.items():
        if isinstance(v, dict):
            flatten(v, out)
        elif isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
            for x in v:
                flatten(x, out)
        elif k in out:
            out[k] = _as_list(out[k]) + _as_list(v)
        else:
            out[k] = v
    return out


# --------------------------------------------------------------------------------------------
# NetFlow v5/v9 and IPFIX (tshark "cflow")


@dataclass
class TemplateField:
    pen: int  # 0 = IANA / Cisco
    type: int
    length: int
    label: str  # tshark's name for it ("IP_SRC_ADDR", "Unknown(497)", "892 [pen: VMware Inc.]")

    @property
    def unknown_to_tshark(self) -> bool:
        return self.label.startswith("Unknown(") or "[pen:" in self.label

    @property
    def ie_key(self) -> str:
        """flowscope's key for an element it does not name (INTERNALS.md)."""
        return f"ie{self.pen}_{self.type}" if self.pen else f"ie{self.type}"


@dataclass
class Template:
    template_id: int
    options: bool
    fields: list[TemplateField]
    frame: int
    scope_count: int = 0  # IPFIX options templates: the first scope_count fields are the scope


@dataclass
class CflowSet:
    flowset_id: int
    kind: str  # "template" | "options_template" | "data" | "options_data" | "no_template" | "v5"
    records: list[dict] = field(default_factory=list)  # flattened tshark fields per record
    template: Template | None = None
    templates: list[Template] = field(default_factory=list)  # all templates a template set defines
    length: int = 0  # flowset length from the header
    malformed: bool = False  # tshark flagged this set "Malformed Packet" (and it had a template)


@dataclass
class CflowPacket:
    frame: int
    src: str
    sport: int
    version: int
    domain: int  # v9 source id / IPFIX observation domain
    export_ms: int | None  # header export time (unix ms)
    sysuptime_ms: int | None  # v5/v9 header
    sets: list[CflowSet]
    malformed: bool
    sys_init_ms: int | None  # IPFIX systemInitTimeMilliseconds last seen for this exporter/domain
    raw: dict

    @property
    def flow_records(self) -> list[tuple[CflowSet, dict]]:
        """Data records flowscope publishes as flows: v5 records and (non-options) data records,
        in datagram order."""
        return [(s, r) for s in self.sets if s.kind in ("data", "v5") for r in s.records]

    @property
    def malformed_data(self) -> bool:
        """tshark could not fully decode a data set of this packet (other than for want of a
        template): values of that part, and the record count, are not a reference."""
        return any(s.malformed for s in self.sets if s.kind in ("data", "options_data"))

    def template_keys(self) -> set[tuple[int, int]]:
        """(domain, template id) of every (options) template this packet defines."""
        return {(self.domain, t.template_id) for s in self.sets for t in s.templates}

    def stopped_early(self, payload: bytes) -> bool:
        """tshark stops a v9 packet after the header's `count` records. Exporters that count only
        data records there (softflowd, pmacct) get their later flowsets ignored by tshark; a
        collector walks the flowset lengths (RFC 3954 section 5.1 lets it). True when non-zero
        bytes follow the last flowset tshark read."""
        if self.version != 9:
            return False
        end = 20 + sum(s.length for s in self.sets)
        return end < len(payload) and any(payload[end:])

    @property
    def no_template_sets(self) -> int:
        return sum(1 for s in self.sets if s.kind == "no_template")

    @property
    def template_records(self) -> int:
        return sum(1 for s in self.sets if s.kind in ("template", "options_template"))


_SET_KEY = re.compile(r"^(?:Flow)?Set \d+ \[id=(\d+)\]")
_TEMPLATE_KEY = re.compile(r"^(?:Options )?Template \(Id = (\d+)")
_FIELD_KEY = re.compile(r"^Field \((\d+)/(\d+)\)(?: \[Scope\])?: (.*)$")
_FLOW_KEY = re.compile(r"^Flow \d+(?: \(.*\))?$")
_PDU_KEY = re.compile(r"^pdu \d+/\d+$")


def _has_key(o: Any, key: str) -> bool:
    if isinstance(o, dict):
        return key in o or any(_has_key(v, key) for v in o.values())
    if isinstance(o, list):
        return any(_has_key(v, key) for v in o)
    return False


class CflowReader:
    """Walk tshark cflow packets of one capture in order (templates persist across packets)."""

    def __init__(self) -> None:
        self.templates: dict[tuple[int, int], Template] = {}  # (frame, template id)
        self.sys_init: dict[tuple[str, int, int], int] = {}  # (exporter, port, domain) -> unix ms
        # Sampling rates learned from options data, per exporting process (address, port,
        # version, domain) and, when the options record names one, per sampler/selector id.
        self.domain_rates: dict[tuple, int] = {}
        self.sampler_rates: dict[tuple, int] = {}
        self.interface_rates: dict[tuple, int] = {}  # options scoped by an interface (ifIndex)
        self.egress_rates: dict[tuple, int] = {}  # options scoped by egressInterface (ifIndex)
        self.template_rates: dict[tuple, int] = {}  # options scoped by a template (its id)
        self.if_names: dict[tuple, str] = {}  # interface tables: (process..., ifIndex) -> name

    def packets(self, packets: Iterable[dict]) -> Iterator[CflowPacket]:
        for p in packets:
            if "cflow" in p:
                yield self.packet(p)

    def _parse_templates(self, frame: int, body: dict, options: bool) -> list[Template]:
        out = []
        for k, v in body.items():
            for tv in _as_list(v):
                if not isinstance(tv, dict) or not _TEMPLATE_KEY.match(k):
                    continue
                fields: list[TemplateField] = []
                for fk, fv in tv.items():
                    m = _FIELD_KEY.match(fk)
                    if not m:
                        continue
                    for one in _as_list(fv):
                        t = 0
                        for tk in ("cflow.template_ipfix_field_type_enterprise",
                                   "cflow.template_ipfix_field_type", "cflow.template_field_type",
                                   "cflow.scope_field_type", "cflow.template_scope_field_type"):
                            if tk in one:
                                t = int(_first(one[tk]))
                                break
                        pen = int(one.get("cflow.template_ipfix_field_pen", 0)) if \
                            one.get("cflow.template_ipfix_pen_provided") == "1" else 0
                        length = int(one.get("cflow.template_field_length",
                                             one.get("cflow.template_scope_field_length", 0)))
                        fields.append(TemplateField(pen, t, length, m.group(3)))
                tid = int(_first(tv.get("cflow.template_id", m_id(k))))
                scope = int(_first(tv.get("cflow.template_ipfix_scope_field_count", "0")))
                out.append(Template(tid, options, fields, frame, scope))
        return out

    def packet(self, p: dict) -> CflowPacket:
        body = p["cflow"]
        frame = int(p["frame"])
        version = int(body["cflow.version"])
        ts_tree = body.get("cflow.timestamp_tree", {})
        export_ms = None
        if "cflow.exporttime" in ts_tree:
            export_ms = int(ts_tree["cflow.exporttime"]) * 1000
        elif "cflow.unix_secs" in ts_tree:
            export_ms = int(ts_tree["cflow.unix_secs"]) * 1000
            if "cflow.unix_nsecs" in ts_tree:
                export_ms += int(ts_tree["cflow.unix_nsecs"]) // 1_000_000
        sysuptime_ms = seconds_to_ms(body["cflow.sysuptime"]) if "cflow.sysuptime" in body else None
        domain = int(body.get("cflow.od_id", body.get("cflow.source_id", 0)))
        sets: list[CflowSet] = []
        if version in (1, 5, 7):  # the fixed-format versions: records ("pdu"s) after the header
            recs = [flatten(v) for k, v in body.items() if _PDU_KEY.match(k) for v in _as_list(v)]
            rate = to_int(body.get("cflow.samplerate", "0"))  # v5's 14-bit sampling interval
            for r in recs:
                r[SAMPLING_KEY] = rate or None
            sets.append(CflowSet(0, "v5", recs))
        for k, v in body.items():
            m = _SET_KEY.match(k)
            if not m:
                continue
            for sv in _as_list(v):
                cs = self._set(frame, int(m.group(1)), k, sv)
                cs.length = int(_first(sv.get("cflow.flowset_length", 0)))
                sets.append(cs)
        pkt = CflowPacket(
            frame=frame, src=p.get("src", ""), sport=int(p.get("sport", 0)), version=version,
            domain=domain, export_ms=export_ms, sysuptime_ms=sysuptime_ms, sets=sets,
            malformed=_has_key(body, "_ws.malformed"), sys_init_ms=None, raw=body,
        )
        # IPFIX systemInitTimeMilliseconds (IE 160) from options data anchors sysUpTime-relative
        # times (IEs 21/22) of later records from the same exporting process (RFC 7011 3.1:
        # Transport Session, i.e. address and UDP source port, and Observation Domain).
        key = (pkt.src, pkt.sport, domain)
        for s in sets:
            if s.kind == "options_data":
                for r in s.records:
                    if "cflow.sys_init_time" in r:
                        self.sys_init[key] = tshark_date_ms(r["cflow.sys_init_time"])
        pkt.sys_init_ms = self.sys_init.get(key)
        self._sampling(pkt)
        self._interface_names(pkt)
        return pkt

    def _interface_names(self, pkt: CflowPacket) -> None:
        """The Interfaces a v9/IPFIX data record must have from interface tables: the names the
        exporting process's earlier options records gave its input and output interfaces (an
        interface table: an ifIndex, as an Interface / ingressInterface / egressInterface scope
        or else an input/output interface field, with interfaceName (82), or interfaceDescription
        (83) when it has no name), for the slots its own interfaceName elements leave empty (all
        of them when it has none). Options records apply to the data sets after them, in packet
        order. The slots (NetObserv: the interfaces the flow was observed on, with the direction
        there): one, the interface the record was observed on, its input for direction (61) 0 or
        none, its output for 1 (IfDirections [direction]), for a record with one interfaceName
        of its own or with none and a direction; else a pair, [ingress, egress] with
        IfDirections [0, 1], "" for one not named when the other is. tshark shows no value for
        an empty interfaceName, so with some of several own names empty every placement of the
        non-empty ones is a possible answer (LEARNED_IFNAMES_KEY: the possible (Interfaces,
        IfDirections), None for no Interfaces)."""
        if pkt.version not in (9, 10):
            return
        process = (pkt.src, pkt.sport, pkt.version, pkt.domain)
        for s in pkt.sets:
            for r in s.records:
                if s.kind == "options_data":
                    idx = options_interface(r, s.template)
                    name = next((str(v) for k in ("cflow.if_name", "cflow.interface_name", "cflow.if_descr")
                                 for v in _vals(r, k)[:1] if k in r and v), None)
                    if idx is not None and name:
                        self.if_names[process + (idx,)] = name
                elif s.kind == "data" and self.if_names:
                    choices = self._learned_choices(process, s.template, r)
                    if choices != [None]:
                        r[LEARNED_IFNAMES_KEY] = choices

    def _learned_choices(self, process: tuple, tmpl: Template | None, r: dict) -> list:
        """_interface_names' possible (Interfaces, IfDirections) of one data record; [None] when
        no interface table's name takes a slot (its own names are checked as they are)."""
        vals = [str(v) for v in _vals(r, "cflow.if_name") or _vals(r, "cflow.interface_name") if v is not None]
        n82 = sum(1 for f in tmpl.fields if f.type == 82 and not f.pen) if tmpl is not None else len(vals)
        direction = _int_field(r, "cflow.direction") if "cflow.direction" in r else None
        single = n82 == 1 or (n82 == 0 and direction in (0, 1))
        slots = 1 if single else max(n82, 2)
        if len(vals) >= n82:
            placements = [vals[:slots] + [""] * (slots - len(vals))]
        else:   # the empty ones are not shown: any of the slots
            own = [v for v in vals if v]
            placements = [[own[sum(1 for e in range(k) if e not in empty)] if k not in empty else ""
                           for k in range(slots)]
                          for empty in itertools.combinations(range(slots), slots - len(own))]

        def learned(egress: bool) -> str:
            keys = (("cflow.outputint", "cflow.egress_physical_interface") if egress
                    else ("cflow.inputint", "cflow.ingress_physical_interface"))
            key = next((k for k in keys if k in r), None)
            return self.if_names.get(process + (_int_field(r, key),), "") if key else ""

        used = False
        choices: list = []
        for placed in placements:
            if single:
                got = [placed[0] or learned(direction == 1)]
                dirs = [direction if direction in (0, 1) else 0]
            else:
                got = [placed[0] or learned(False), placed[1] or learned(True)]
                dirs = [0, 1]
            used = used or got != placed[:2]
            choice = (got, dirs) if any(got) else None
            if choice not in choices:
                choices.append(choice)
        return choices if used else [None]

    def _sampling(self, pkt: CflowPacket) -> None:
        """The Sampling each v9/IPFIX data record must have (flowscope decoded with no configured
        rate): its own rate, else the rate the exporting process's earlier options data gave its
        sampler/selector id, else the one options scoped by an interface gave the record's
        ingressInterface (a v9 record observed on output: v9's Interface scope gave its output
        interface), else the one options scoped by egressInterface gave its egress interface
        (unless the record says it was observed on input), else the one options scoped by a template gave its template, else the one
        they gave the process and domain (options with neither a sampler id nor such a scope),
        else none (and whether its sampler id is 0). Options
        records apply to the data sets after them, in packet order."""
        if pkt.version not in (9, 10):
            return
        process = (pkt.src, pkt.sport, pkt.version, pkt.domain)
        for s in pkt.sets:
            for r in s.records:
                rate = record_sampling_rate(r)
                sid = sampler_id(r)
                if s.kind == "options_data" and rate:
                    scope = options_scope(r, s.template)
                    if sid is not None:
                        self.sampler_rates[process + (sid,)] = rate
                    if scope is not None:
                        table = {"in": self.interface_rates, "out": self.egress_rates,
                                 "template": self.template_rates}[scope[0]]
                        table[process + (scope[1],)] = rate
                    elif sid is None:
                        self.domain_rates[process] = rate
                elif s.kind == "data":
                    if not rate and sid is not None:
                        rate = self.sampler_rates.get(process + (sid,), 0)
                    in_key = next((k for k in ("cflow.inputint", "cflow.ingress_physical_interface") if k in r), None)
                    out_key = next((k for k in ("cflow.outputint", "cflow.egress_physical_interface") if k in r), None)
                    # flowDirection (61): 0 observed on input, 1 on output (other values: unknown)
                    direction = _int_field(r, "cflow.direction") if "cflow.direction" in r else None
                    # v9's Interface scope names no direction: a record observed on output was
                    # sampled on its output interface
                    sampled_on = out_key if pkt.version == 9 and direction == 1 else in_key
                    if not rate and sampled_on:
                        rate = self.interface_rates.get(process + (_int_field(r, sampled_on),), 0)
                    if not rate and out_key and direction != 0:
                        rate = self.egress_rates.get(process + (_int_field(r, out_key),), 0)
                    if not rate and s.template is not None:
                        rate = self.template_rates.get(process + (s.template.template_id,), 0)
                    if not rate:
                        rate = self.domain_rates.get(process, 0)
                    r[SAMPLING_KEY] = rate or None
                    # sampler / selector id 0: no sampler (Cisco; RFC 5477 reserves 0), unless
                    # the operator gave the exporter a rate (compare_flow_record)
                    r[SAMPLER0_KEY] = not rate and sid == 0

    def _set(self, frame: int, flowset_id: int, key: str, sv: dict) -> CflowSet:
        if flowset_id in (0, 2) or flowset_id in (1, 3):
            options = flowset_id in (1, 3)
            templates = self._parse_templates(frame, sv, options)
            for t in templates:
                self.templates[(frame, t.template_id)] = t
            return CflowSet(flowset_id, "options_template" if options else "template",
                            template=templates[0] if templates else None, templates=templates)
        if _has_key(sv, "cflow.no_template_found"):
            return CflowSet(flowset_id, "no_template")
        recs = [flatten(r) for k, v in sv.items() if _FLOW_KEY.match(k) for r in _as_list(v)]
        tframe = sv.get("cflow.template_frame")
        tmpl = self.templates.get((int(tframe), flowset_id)) if tframe is not None else None
        kind = "options_data" if tmpl is not None and tmpl.options else "data"
        return CflowSet(flowset_id, kind, recs, tmpl, malformed=_has_key(sv, "_ws.malformed"))


# Not tshark fields: the Sampling the reader derived for a record from tshark's fields, and
# whether the record names sampler 0 with no rate known for it.
SAMPLING_KEY = "_expected_sampling"
SAMPLER0_KEY = "_sampler_zero"
# Not a tshark field: the Interfaces an interface table in earlier options data gave the record.
LEARNED_IFNAMES_KEY = "_learned_interfaces"


def options_interface(rec: dict, tmpl: Template | None) -> int | None:
    """The ifIndex an options record describes: its Interface scope (v9 type 2) or IPFIX
    ingressInterface / egressInterface scope, else its first input / output interface field
    (IOS-XR v9 interface tables: scope System, INPUT_SNMP, IF_DESC); None without one."""
    if "cflow.scope_interface" in rec:
        return _int_field(rec, "cflow.scope_interface")
    scope = [f.type for f in tmpl.fields[:tmpl.scope_count] if f.pen == 0] if tmpl is not None else []
    for ie, key in ((10, "cflow.inputint"), (14, "cflow.outputint")):
        if ie in scope and key in rec:
            return _int_field(rec, key)
    rest = [f.type for f in tmpl.fields[tmpl.scope_count:] if f.pen == 0] if tmpl is not None else []
    first = next((ie for ie in rest if ie in (10, 14)), None)
    key = {10: "cflow.inputint", 14: "cflow.outputint"}.get(first or 0)
    return _int_field(rec, key) if key and key in rec else None


def _int_field(rec: dict, key: str) -> int:
    return to_int(_vals(rec, key)[0]) if key in rec else 0


def record_sampling_rate(rec: dict) -> int:
    """A record's own sampling rate from tshark's fields (0 = none).

    RFC 5477 8.2.4/8.2.5: random n-out-of-N (selectorAlgorithm 3, Cisco IOS-XR) selects
    samplingSize (309) packets out of samplingPopulation (310): the rate is N / n, n missing or 0
    counting as 1, rounded to the nearest (half up). Else RFC 5476 count-based sampling:
    samplingPacketInterval (305) packets out of 305 + samplingPacketSpace (306); without a space
    the interval element (305, else the first non-zero samplerRandomInterval 50 or
    samplingInterval 34) is the rate."""
    population = _int_field(rec, "cflow.sampling_population")
    if population:
        size = _int_field(rec, "cflow.sampling_size") or 1
        return max(1, (population + size // 2) // size)
    # samplingPacketInterval (305), else the first of samplerRandomInterval (50) and
    # samplingInterval (34), in the record's order, that is not 0 (0: not given)
    interval = _int_field(rec, "cflow.sampling_packet_interval") or next(
        (v for k in rec if k in ("cflow.sampler_random_interval", "cflow.sampling_interval")
         for v in (to_int(x) for x in _vals(rec, k)) if v), 0)
    space = _int_field(rec, "cflow.sampling_packet_space")
    if space and interval:
        return (interval + space) // interval
    if interval:
        return interval
    # RFC 5477 8.2.6 samplingProbability (311): one packet in 1 / p, for 0 < p <= 1
    p = float(_vals(rec, "cflow.sampling_probability")[0]) if "cflow.sampling_probability" in rec else 0.0
    if not 0.0 < p <= 1.0:
        return 0
    q = 1.0 / p + 0.5
    return int(q) if q < 0xFFFFFFFF else 0xFFFFFFFF


def options_scope(rec: dict, tmpl: Template | None) -> tuple[str, int] | None:
    """What an options record is scoped by: ("in", ifIndex) for v9 scope type 2 ("Interface",
    RFC 3954 6.1) or an IPFIX scope ingressInterface (10); ("out", ifIndex) for an IPFIX scope
    egressInterface (14); ("template", id) for v9 scope type 5 ("Template", which tshark shows
    as bytes) or an IPFIX scope templateId (145); None for any other scope."""
    if "cflow.scope_interface" in rec:
        return ("in", _int_field(rec, "cflow.scope_interface"))
    scopes = {f.type for f in tmpl.fields[:tmpl.scope_count] if f.pen == 0} if tmpl is not None else set()
    if 10 in scopes and "cflow.inputint" in rec:
        return ("in", _int_field(rec, "cflow.inputint"))
    if 14 in scopes and "cflow.outputint" in rec:
        return ("out", _int_field(rec, "cflow.outputint"))
    if "cflow.scope_template" in rec:
        return ("template", int(_first(rec["cflow.scope_template"]).replace(":", ""), 16))
    if 145 in scopes and "cflow.template_id" in rec:
        return ("template", _int_field(rec, "cflow.template_id"))
    return None


def sampler_id(rec: dict) -> int | None:
    """selectorId (302) or samplerId (48) of a record, None when it has neither."""
    for key in ("cflow.selector_id", "cflow.sampler_id"):
        if key in rec:
            return to_int(_vals(rec, key)[0])
    return None


def m_id(k: str) -> str:
    m = _TEMPLATE_KEY.match(k)
    return m.group(1) if m else "0"


# ---- The mapping table: tshark cflow field -> flowscope output key ---------------------------
# Each entry: tshark field -> (flowscope key, conversion of tshark's string to the JSON value).
# Fields that need context (times, unknown elements, octets vs. totals, ICMP) are handled in
# compare_flow_record() below.


ZERO_MAC = "00:00:00:00:00:00"


def _mac(v: str) -> str:
    return v.lower()


def _str(v: str) -> str:
    return v


CFLOW_FIELDS: dict[str, tuple[str, Any]] = {
    "cflow.srcaddr": ("SrcAddr", _str),
    "cflow.srcaddrv6": ("SrcAddr", _str),
    "cflow.dstaddr": ("DstAddr", _str),
    "cflow.dstaddrv6": ("DstAddr", _str),
    "cflow.protocol": ("Proto", to_int),
    "cflow.srcmac": ("SrcMac", _mac),
    "cflow.dstmac": ("DstMac", _mac),
    "cflow.inputint": ("InIf", to_int),
    "cflow.outputint": ("OutIf", to_int),
    # without 10/14 (inputint/outputint, listed first), the physical interfaces (252/253)
    "cflow.ingress_physical_interface": ("InIf", to_int),
    "cflow.egress_physical_interface": ("OutIf", to_int),
    "cflow.srcas": ("SrcAS", to_int),
    "cflow.dstas": ("DstAS", to_int),
    "cflow.srcmask": ("SrcPrefixLen", to_int),
    "cflow.dstmask": ("DstPrefixLen", to_int),
    "cflow.nexthop": ("NextHop", _str),
    "cflow.nexthopv6": ("NextHop", _str),
    "cflow.flow_end_reason": ("FlowEndReason", to_int),
    "cflow.ethernet_type": ("Etype", to_int),
    # RFC 7125's 2-byte tcpControlBits: flowscope keeps the 8 classic flags (NS and the
    # reserved bits have no NetObserv flag; README), tshark prints all 16 bits
    "cflow.tcpflags": ("TcpFlagsRaw", lambda v: to_int(v) & 0xFF),
    "cflow.ip_dscp": ("Dscp", to_int),
    "cflow.tos": ("Dscp", lambda v: to_int(v) >> 2),
    "cflow.icmp_ipv4_type": ("IcmpType", to_int),
    "cflow.icmp_ipv4_code": ("IcmpCode", to_int),
    "cflow.icmp_ipv6_type": ("IcmpType", to_int),
    "cflow.icmp_ipv6_code": ("IcmpCode", to_int),
    "cflow.icmp_type_code_ipv4": ("IcmpType", lambda v: to_int(v) >> 8),
    "cflow.icmp_type_code_ipv6": ("IcmpType", lambda v: to_int(v) >> 8),
    "cflow.dot1q_vlan_id": ("Vlan", to_int),
    "cflow.vlanid": ("Vlan", to_int),
    "cflow.direction": ("FlowDirection", to_int),
    "cflow.interface_name": ("Interfaces", _str),  # handled specially (list)
}
# Second target for a few fields (IPFIX icmpTypeCode packs type and code).
CFLOW_EXTRA: dict[str, tuple[str, Any]] = {
    "cflow.icmp_type_code_ipv4": ("IcmpCode", lambda v: to_int(v) & 0xFF),
    "cflow.icmp_type_code_ipv6": ("IcmpCode", lambda v: to_int(v) & 0xFF),
}
# Keys whose absence from a flow is an error when tshark has the field.
CFLOW_REQUIRED = {"SrcAddr", "DstAddr", "Proto", "Bytes", "Packets", "SrcPort", "DstPort", "ForwardingStatus"}

TCP_FLAG_NAMES = [(0x01, "FIN"), (0x02, "SYN"), (0x04, "RST"), (0x08, "PSH"), (0x10, "ACK"),
                  (0x20, "URG"), (0x40, "ECE"), (0x80, "CWR")]


def flag_names(bits: int) -> set[str]:
    return {n for b, n in TCP_FLAG_NAMES if bits & b}


def _vals(rec: dict, key: str) -> list:
    return _as_list(rec.get(key))


def expected_from_cflow(pkt: CflowPacket, cset: CflowSet, rec: dict) -> dict[str, Any]:
    """What flowscope must output for this tshark record, by flowscope key (only the keys this
    module can derive from tshark; values as they appear in flowscope's JSON)."""
    exp: dict[str, Any] = {}
    for tkey, (fkey, conv) in CFLOW_FIELDS.items():
        if tkey in rec and fkey not in exp and tkey != "cflow.interface_name":
            v = _vals(rec, tkey)[0]
            if v == "" or v is None:
                continue
            exp[fkey] = conv(v)
    for tkey, (fkey, conv) in CFLOW_EXTRA.items():
        if tkey in rec:
            exp[fkey] = conv(_vals(rec, tkey)[0])
    for fkey, post in (("SrcMac", "cflow.post_srcmac"), ("DstMac", "cflow.post_dstmac")):
        # README (SrcMac, DstMac): a source/destinationMacAddress (56/80) of all zeros is no
        # address; the post element (81/57) beside it gives the MAC when it has one
        if exp.get(fkey) == ZERO_MAC and post in rec and _mac(_vals(rec, post)[0]) != ZERO_MAC:
            exp[fkey] = _mac(_vals(rec, post)[0])
    if not any(to_int(v) & 0x0FFF for k in ("cflow.vlanid", "cflow.dot1q_vlan_id") for v in _vals(rec, k)):
        # README (Vlan): without a VLAN in vlanId/dot1qVlanId (58/243), absent or 0, the first
        # non-zero postVlanId/postDot1qVlanId (59/254) is the Vlan
        posts = [to_int(v) & 0x0FFF for k in ("cflow.post_vlanid", "cflow.post_dot1q_vlan_id")
                 for v in _vals(rec, k)]
        if any(posts):
            exp["Vlan"] = next(v for v in posts if v)
    if "cflow.srcport" in rec:
        exp["SrcPort"] = to_int(rec["cflow.srcport"])
    if "cflow.dstport" in rec:
        exp["DstPort"] = to_int(rec["cflow.dstport"])
    if "Proto" in exp and exp["Proto"] not in (6, 17, 132):
        # Only TCP, UDP and SCTP have ports: flowscope publishes none for other protocols
        # (NetObserv writes SrcPort/DstPort for those three only; compare_flow_record checks
        # they are absent): tshark prints the port elements' raw values. For ICMP: the port
        # elements' raw values: zeros, an ICMP id (Cisco ASA), or type << 8 | code (NetFlow v5,
        # pmacct, akvorado's capture). Which of those values are an ICMP type and code is the
        # decoder's rule (pinned by hand-written cases in test_decoders); compare_flow_record
        # checks only that a published type and code are that raw value, type << 8 | code.
        exp.pop("DstPort", None)
        exp.pop("SrcPort", None)
    # Bytes/Packets from one family of counters, the first the record has: the delta counters
    # (else the total ones), else the post (egress) ones, else a firewall's initiator counts
    # (Cisco ASA NSEL).
    for family in (((("cflow.octets", "cflow.octets64", "cflow.permanent_octets"),
                     ("cflow.packets", "cflow.packets64", "cflow.permanent_packets"))),
                   (("cflow.post_octets",), ("cflow.post_packets",)),
                   (("cflow.initiator_octets",), ("cflow.initiator_packets",))):
        if not any(n in rec for names in family for n in names):
            continue
        for fkey, names in zip(("Bytes", "Packets"), family, strict=True):
            for n in names:
                if n in rec:
                    exp[fkey] = to_int(rec[n])
                    break
        break
    else:
        family = None
    if "Bytes" not in exp and (family is None or family[0][0] == "cflow.octets"):
        # no octets of the first family (or none): the layer 2 octets (OVS's non-IP records)
        for n in ("cflow.layer2_octet_delta_count", "cflow.layer2_octet_total_count"):
            if n in rec:
                exp["Bytes"] = to_int(rec[n])
                break
    if "Proto" in exp and exp["Proto"] != 6:
        exp.pop("TcpFlagsRaw", None)    # TCP's flags (NetObserv: Flags on TCP flows only)
    if "TcpFlagsRaw" in exp:
        exp["Flags"] = flag_names(exp["TcpFlagsRaw"])
    # interfaceName (82): tshark 4.0 calls it cflow.if_name; flowscope lists the first two
    # occurrences (ingress port, egress port).
    names = [v for v in _vals(rec, "cflow.if_name") or _vals(rec, "cflow.interface_name") if v is not None]
    n82 = sum(1 for x in cset.template.fields if x.type == 82 and not x.pen) if cset.template else len(names)
    if len(rec.get(LEARNED_IFNAMES_KEY, ())) > 1:
        # some of several own names empty, filled from an interface table: which ones tshark
        # does not show, each placement's answer is possible (CflowReader._learned_choices)
        exp[IFNAMES_CHOICES_KEY] = rec[LEARNED_IFNAMES_KEY]
    elif LEARNED_IFNAMES_KEY in rec:
        exp["Interfaces"], exp["IfDirections"] = rec[LEARNED_IFNAMES_KEY][0]
    elif names and len(names) >= n82:
        exp["Interfaces"] = [str(v) for v in names[:2]]
    elif names:
        # tshark 4.0 shows no value for an empty interfaceName: which occurrence was empty is
        # lost, so only the non-empty names flowscope lists can be checked (compare_flow_record)
        exp[NONEMPTY_IFNAMES_KEY] = [str(v) for v in names]
    # Records with both IPv4 and IPv6 address elements (Procera, Cisco SRv6): the family with a
    # non-zero address is the flow's, IPv4 on a tie, ipVersion (IE 60) first when present.
    if ("cflow.srcaddr" in rec or "cflow.dstaddr" in rec) and ("cflow.srcaddrv6" in rec or "cflow.dstaddrv6" in rec):
        v4 = [_vals(rec, k)[0] for k in ("cflow.srcaddr", "cflow.dstaddr") if k in rec]
        v6 = [_vals(rec, k)[0] for k in ("cflow.srcaddrv6", "cflow.dstaddrv6") if k in rec]
        ipver = to_int(_vals(rec, "cflow.ip_version")[0]) if "cflow.ip_version" in rec else 0
        nz4 = any(a not in ("0.0.0.0", "") for a in v4)
        nz6 = any(a not in ("::", "") for a in v6)
        use6 = ipver == 6 or (ipver != 4 and nz6 and not nz4)
        for fkey, k4, k6 in (("SrcAddr", "cflow.srcaddr", "cflow.srcaddrv6"),
                             ("DstAddr", "cflow.dstaddr", "cflow.dstaddrv6")):
            k = k6 if use6 else k4
            if k in rec:
                exp[fkey] = _vals(rec, k)[0]
            else:
                exp.pop(fkey, None)
    # Both next hops (15 and 62, the family not in use zero): the flow's address family picks;
    # without addresses the non-zero one, IPv4 on a tie.
    if "cflow.nexthop" in rec and "cflow.nexthopv6" in rec:
        nh4, nh6 = _vals(rec, "cflow.nexthop")[0], _vals(rec, "cflow.nexthopv6")[0]
        addr = exp.get("SrcAddr", exp.get("DstAddr"))
        use6 = ":" in addr if isinstance(addr, str) else (nh6 not in ("::", "") and nh4 in ("0.0.0.0", ""))
        exp["NextHop"] = nh6 if use6 else nh4
    # forwardingStatus (89): tshark reads the status from the element's first byte, right for the
    # 1-byte encoding only (the structure is the least significant byte: a 4-byte one has it last).
    fwd = [x for x in cset.template.fields if x.type == 89 and not x.pen] if cset.template else []
    if fwd and fwd[0].length == 1 and "cflow.forwarding_status" in rec:
        status = to_int(_vals(rec, "cflow.forwarding_status")[0])
        codes = [to_int(_vals(rec, k)[0]) for k in rec if k.startswith("cflow.forwarding_status_") and k.endswith("_code")]
        exp["ForwardingStatus"] = status << 6 | (codes[0] if codes else 0)
    # Times, as Unix milliseconds.
    start = _time_ms(pkt, rec, "start", cset.template)
    end = _time_ms(pkt, rec, "end", cset.template)
    if start is not None:
        exp["TimeFlowStartMs"] = start
    if end is not None:
        exp["TimeFlowEndMs"] = end
    # Elements tshark does not know, by position among the template's unknown fields. tshark 4.0
    # lists an IPFIX record's unknown IANA elements as enterprise entries too (with no
    # enterprise), so those are paired with all the unknown fields when it has no
    # cflow.unknown_field_type.
    if cset.template is not None:
        unknown_std = [f for f in cset.template.fields if f.label.startswith("Unknown(")]
        unknown_pen = [f for f in cset.template.fields if "[pen:" in f.label]
        if "cflow.unknown_field_type" not in rec:
            unknown_pen = [f for f in cset.template.fields if f.unknown_to_tshark]
        for tkey, flds in (("cflow.unknown_field_type", unknown_std),
                           ("cflow.enterprise_private_entry", unknown_pen)):
            if tkey not in rec and flds is unknown_std:
                continue    # (its fields are paired with the enterprise entries)
            by_key = pair_unknown(flds, _vals(rec, tkey), _as_list(rec.get(f"{tkey}_tree")))
            for k, vs in (by_key or {}).items():
                # an element repeated in the record is an array of its values, in order (README)
                exp.setdefault(k, vs[0] if len(vs) == 1 else vs)
    # YAF (CERT PEN 6871) without tcpControlBits: Flags are initialTCPFlags (14) | unionTCPFlags
    # (15), which tshark 4.0 shows as unknown enterprise elements (their reverse twins, 16398 and
    # 16399, stay elements without --split-biflows)
    yaf = [exp.pop(k) for k in ("ie6871_14", "ie6871_15") if k in exp]
    if yaf and "cflow.tcpflags" not in rec:
        bits = 0
        for v in yaf:
            bits |= int(v, 16)
        if exp.get("Proto") == 6:
            exp["TcpFlagsRaw"] = bits
            exp["Flags"] = flag_names(bits)
    return exp


def pair_unknown(flds: list[TemplateField], vals: list, trees: list) -> dict[str, list[str]] | None:
    """flowscope's ie<ID> values for the template's unknown fields `flds`, from tshark's values
    of them in record order (`trees`: their subtrees, a string length for a variable-length
    one). tshark lists no value for a variable-length field of length 0 (RFC 7011 7), which
    flowscope keeps as "": each value is paired with the next field it fits (variable length
    with variable length, a fixed length with its byte count), the variable-length fields
    passed over being the empty ones. None when that pairing is not the only one that gives
    these values (two adjacent variable-length fields, one empty), or there is none."""
    # (one value's subtree is flattened into the record: then whether it had a length is not
    # known, and any pairing its byte count allows is tried)
    known = len(trees) == len(vals) and len(vals) > 1
    ents = [(hexbytes(v), isinstance(t, dict) and any(k.startswith("cflow.string_len") for k in t) if known else None)
            for v, t in zip(vals, trees if known else [""] * len(vals), strict=True)]
    found: list[dict[str, list[str]]] = []

    def walk(i: int, j: int, acc: list[tuple[str, str]]) -> None:
        if len(found) > 1:
            return
        if i == len(flds):
            if j == len(ents):
                by: dict[str, list[str]] = {}
                for k, v in acc:
                    by.setdefault(k, []).append(v)
                found.append(by)
            return
        f = flds[i]
        var = f.length == 0xFFFF
        if j < len(ents) and ents[j][1] in (var, None) and (var or len(ents[j][0]) == 2 * f.length):
            walk(i + 1, j + 1, acc + [(f.ie_key, ents[j][0])])
        if var:
            walk(i + 1, j, acc + [(f.ie_key, "")])

    walk(0, 0, [])
    if not found or any(x != found[0] for x in found):
        return None
    return found[0]


# Absolute time elements (RFC 7011 dateTime*): flowStart/End Seconds, Milliseconds,
# Microseconds, Nanoseconds, and Cisco ASA's 323/324 event times
_ABS_TIME_IES = {"start": {150, 152, 154, 156, 323}, "end": {151, 153, 155, 157, 324}}


def _time_ms(pkt: CflowPacket, rec: dict, which: str, tmpl: Template | None = None) -> int | None:
    """tshark prints absolute times (IEs 150-155, ASA 323/324) as dates, and sysUpTime-relative
    ones (v5, v9 and IPFIX IEs 21/22) as seconds since boot."""
    key = f"cflow.abstime{which}"
    if key in rec:
        ms = tshark_date_ms(rec[key])
        ntp = {154, 155, 156, 157} & _ABS_TIME_IES[which]
        if 0 <= ms < 1000 and tmpl is not None and any(f.type in ntp and not f.pen for f in tmpl.fields):
            # NTP seconds 0: tshark 4.0 prints the epoch plus the fraction; RFC 4330 3 reads
            # them as era 1 (2036), and RFC 5905 6 all zeros as no time (what flowscope does)
            return None
        if ms != 0:
            return ms
        if tmpl is not None and any(f.type in _ABS_TIME_IES[which] and not f.pen for f in tmpl.fields):
            # an absolute time element of 0: tshark prints the epoch; README (TimeFlowStartMs):
            # 0 is no time (no flow is from 1970; exporters send 0 for a time they lack)
            return None
        # tshark 4.0 prints a sysUpTime-relative value of exactly 0 (FIRST_SWITCHED at boot,
        # as softflowd -r sends for a pcap's first packet) as the date 1970-01-01: it is 0 ms
        # after boot, not the epoch.
        rel = 0
    else:
        key = f"cflow.time{which}"
        if key not in rec:
            return None
        rel = seconds_to_ms(rec[key])
    if pkt.version in (1, 5, 7, 9) and pkt.export_ms is not None and pkt.sysuptime_ms is not None:
        # tshark prints the raw offset, seconds since boot; compare_flow_record also checks the
        # time is this reading modulo 2^32 (RFC 3954 8: the counter wraps)
        return sysup_reading(pkt.export_ms - pkt.sysuptime_ms, rel, pkt.export_ms + SYSUP_SKEW_MS)
    if pkt.version == 10 and pkt.sys_init_ms is not None:
        latest = pkt.export_ms + SYSUP_SKEW_MS if pkt.export_ms is not None else pkt.sys_init_ms + rel
        return sysup_reading(pkt.sys_init_ms, rel, latest)
    return None


# README (TimeFlowStartMs): sysUpTime values up to an hour after the export are the exporter's
# clocks disagreeing, not a counter that wrapped
SYSUP_SKEW_MS = 3_600_000


def sysup_reading(sysinit_ms: int, rel: int, latest_ms: int) -> int:
    """The Unix ms of a sysUpTime value `rel` (v5/v9 First/Last, IEs 21/22) by the README's
    rule: sysUpTime is a 32-bit ms counter (RFC 3954 8, RFC 7011 flowStartSysUpTime unsigned32),
    so the value stands for the latest sysinit + rel + k * 2^32 not after `latest_ms`: a value
    far above the header's uptime was counted before the counter wrapped, one a little above
    it is a flow stamped after the export, and a system up for more than 49.7 days (IE 160) has
    wrapped k times. A reading before 1970 (an exporter's clock never set) stays unwrapped."""
    t = sysinit_ms + rel
    w = t + ((latest_ms - t) >> 32 << 32)
    return t if w < 0 <= t else w


NONEMPTY_IFNAMES_KEY = "_nonempty_interfaces"
IFNAMES_CHOICES_KEY = "_interfaces_choices"


def _norm(key: str, v: Any) -> Any:
    if key in ("SrcMac", "DstMac") and isinstance(v, str):
        return v.lower()
    if key == "Flags" and isinstance(v, list):
        return set(v)
    if key.startswith("ie") and isinstance(v, str):
        return v.lower()
    if key.startswith("ie") and isinstance(v, list):
        return [x.lower() if isinstance(x, str) else x for x in v]
    return v


def compare_expected(exp: dict[str, Any], flow: dict, *, required: Iterable[str] = CFLOW_REQUIRED,
                     time_tolerance_ms: int = 0, skip: Iterable[str] = ()) -> list[str]:
    """Mismatches between expected values (from tshark or the generated traffic) and one flow."""
    problems = []
    skip = set(skip)
    required = set(required)
    for k, v in exp.items():
        if k in skip:
            continue
        if k not in flow:
            if k in required:
                problems.append(f"{k}: expected {v!r}, missing")
            continue
        got = _norm(k, flow[k])
        if k.startswith("TimeFlow") and isinstance(got, (int, float)):
            if abs(got - v) > time_tolerance_ms:
                problems.append(f"{k}: expected {v!r}, got {flow[k]!r}")
            continue
        if got != _norm(k, v):
            problems.append(f"{k}: expected {v!r}, got {flow[k]!r}")
    if NONEMPTY_IFNAMES_KEY in exp:
        listed = [x for x in flow.get("Interfaces", []) if x]
        if listed != exp[NONEMPTY_IFNAMES_KEY][:len(listed)] or not listed:
            problems.append(f"Interfaces: {flow.get('Interfaces')!r}, not the first of tshark's non-empty "
                            f"names {exp[NONEMPTY_IFNAMES_KEY]!r}")
    if IFNAMES_CHOICES_KEY in exp:
        got = (flow["Interfaces"], flow.get("IfDirections")) if "Interfaces" in flow else None
        if got not in exp[IFNAMES_CHOICES_KEY]:
            problems.append(f"Interfaces, IfDirections: {got!r}, none of {exp[IFNAMES_CHOICES_KEY]!r}")
    return problems


_IPV6_EXT = {0, 43, 44, 50, 51, 60, 135, 139, 140}


# tshark's VLAN tag layers and their VLAN ID fields: 802.1Q (TPID 0x8100) and 802.1ad (0x88a8,
# an outer S-tag) are dissected apart, each its own layer
_VLAN_ID_KEYS = {"vlan": "vlan.id", "ieee8021ad": "ieee8021ad.id"}


def first_vlan_id(ids: Iterable[tuple[str, Any]]) -> int | None:
    """The first non-zero VLAN ID among (field, value or values) in packet order, 802.1Q's and
    802.1ad's alike (a QinQ frame's S-tag is its outer tag); VID 0 is a priority tag only."""
    for _, v in ids:
        for x in _as_list(v):
            if to_int(x) & 0x0FFF:
                return to_int(x) & 0x0FFF
    return None


def section_expected(rec: dict) -> dict[str, Any]:
    """What a PSAMP packet report's section (dataLinkFrameSection 315 / ipHeaderPacketSection 313)
    says, from tshark's dissection of it (flattened into the record, repeated names merged in
    packet order): the first Ethernet header's MACs, the first VLAN id, the first IP header's
    addresses and protocol (IP in IP: the inner header's), and the ports when that protocol is
    TCP or UDP. Tunnels (VXLAN, Geneve, GRE) are left out: their outer header is the flow's
    tunnel there."""
    if not any(k.endswith(("frame_section", "packet_section")) for k in rec):
        return {}
    exp: dict[str, Any] = {}
    if "eth.src" in rec:
        exp |= {"SrcMac": _first(rec["eth.src"]), "DstMac": _first(rec["eth.dst"])}
    vid = first_vlan_id((k, v) for k, v in rec.items() if k in _VLAN_ID_KEYS.values())
    if vid is not None:
        exp["Vlan"] = vid
    if any(k.startswith(("vxlan.", "geneve.", "gre.")) for k in rec):
        return exp
    keys = list(rec)
    first_ip = min((keys.index(k), k) for k in ("ip.src", "ipv6.src") if k in rec)[1] if (
        "ip.src" in rec or "ipv6.src" in rec) else None
    if first_ip is None:
        return exp
    pre = first_ip.split(".")[0]
    at = 0
    proto = _first(rec.get("ip.proto")) if pre == "ip" else _first(rec.get("ipv6.nxt"))
    if proto is not None and to_int(proto) in (4, 41):
        # IP in IP / IPv6 in IP (SRv6 carrying IPv4, Calico): the inner header is the flow,
        # the outer one its tunnel; the inner is the next header of its family
        inner = "ip" if to_int(proto) == 4 else "ipv6"
        at = 1 if inner == pre else 0
        if len(_as_list(rec.get(f"{inner}.src"))) <= at:
            return exp
        pre = inner
        protos = _as_list(rec.get("ip.proto" if pre == "ip" else "ipv6.nxt"))
        proto = protos[at] if len(protos) > at else None
    exp |= {"SrcAddr": _as_list(rec[f"{pre}.src"])[at], "DstAddr": _as_list(rec[f"{pre}.dst"])[at]}
    if proto is None or (pre == "ipv6" and to_int(proto) in _IPV6_EXT):
        return exp
    exp["Proto"] = to_int(proto)
    l4 = {6: "tcp", 17: "udp"}.get(exp["Proto"])
    if l4 and f"{l4}.srcport" in rec:
        exp |= {"SrcPort": to_int(rec[f"{l4}.srcport"]), "DstPort": to_int(rec[f"{l4}.dstport"])}
    icmp = {1: "icmp", 58: "icmpv6"}.get(exp["Proto"])
    if icmp and f"{icmp}.type" in rec:
        exp |= {"IcmpType": to_int(rec[f"{icmp}.type"]), "IcmpCode": to_int(rec[f"{icmp}.code"])}
    return exp


REVERSE_PEN = 29305  # RFC 5103: a biflow's reverse elements are the forward ids under this PEN
# element id -> (tshark's name, the slot reverse_values gives it under: 1 octets, 2 packets,
# 6 TCP flags); delta counts win over total counts, as in the decoder
_REVERSE_KEYS = {85: ("cflow.permanent_octets", 1), 86: ("cflow.permanent_packets", 2),
                 1: ("cflow.octets", 1), 2: ("cflow.packets", 2), 6: ("cflow.tcpflags", 6)}


def reverse_values(cset: CflowSet, rec: dict) -> dict[int, int] | None:
    """An RFC 5103 biflow record's reverse octets (1), packets (2) and TCP flags (6), delta or
    total counts; None when its template has no reverse element. tshark names a reverse element as the
    forward one and merges a record's values of one name into a list, in template order: the
    reverse element's place among the fields of its id picks its value."""
    t = cset.template
    if t is None or not any(f.pen == REVERSE_PEN for f in t.fields):
        return None
    out = {}
    for ie, (key, slot) in _REVERSE_KEYS.items():
        same = [f for f in t.fields if f.type == ie and f.pen in (0, REVERSE_PEN)]
        at = next((i for i, f in enumerate(same) if f.pen == REVERSE_PEN), None)
        values = _as_list(rec.get(key))
        if at is not None and at < len(values):
            out[slot] = to_int(values[at])
    return out


def compare_reverse_record(cset: CflowSet, rec: dict, rev: dict[int, int], flow: dict) -> list[str]:
    """Mismatches between a biflow record's reverse direction (tshark) and the flowscope flow
    that should be it: the endpoints swapped, the reverse counters and flags."""
    probs = []
    exp = {"SrcAddr": _first(rec.get("cflow.dstaddr", rec.get("cflow.dstaddrv6"))),
           "DstAddr": _first(rec.get("cflow.srcaddr", rec.get("cflow.srcaddrv6"))),
           "Bytes": rev.get(1), "Packets": rev.get(2)}
    proto = to_int(rec["cflow.protocol"]) if "cflow.protocol" in rec else None
    if proto in (6, 17, 132):
        exp |= {"SrcPort": to_int(rec["cflow.dstport"]), "DstPort": to_int(rec["cflow.srcport"])}
    if proto == 6 and 6 in rev:
        exp["TcpFlagsRaw"] = rev[6]
    for k, v in exp.items():
        if v is not None and _norm(k, flow.get(k)) != _norm(k, v):
            probs.append(f"reverse direction {k}: expected {v!r}, got {flow.get(k)!r}")
    return probs


def compare_flow_record(pkt: CflowPacket, cset: CflowSet, rec: dict, flow: dict,
                        *, time_tolerance_ms: int = 0, configured_sampling: int = 0, cidr_sampling: int = 0) -> list[str]:
    """Mismatches between one tshark record and the flowscope flow that should equal it.
    `configured_sampling`: the rate the decoder was configured with for this exporter, expected
    when the exporter sent none (0: no Sampling); `cidr_sampling` the part of it a --sampling
    CIDR gave, all that a firewall's event record (NSEL, never sampled) gets."""
    exp = expected_from_cflow(pkt, cset, rec)
    tol = time_tolerance_ms
    if pkt.version in (1, 5, 7):
        tol = max(tol, 1000)  # header unix_nsecs may or may not be used for the boot time
    required = set(CFLOW_REQUIRED)
    if "cflow.srcaddr" not in rec and "cflow.srcaddrv6" not in rec:
        required -= {"SrcAddr", "DstAddr"}
    sect = {k: v for k, v in section_expected(rec).items() if k not in exp}
    if sect:
        # a PSAMP packet report: one packet, its headers in the record
        exp |= sect | {"Packets": exp.get("Packets", 1)}
        if "cflow.data_link_frame_size" in rec and "Bytes" not in exp:
            exp["Bytes"] = to_int(rec["cflow.data_link_frame_size"])
        required |= set(sect) | {"Packets"}
    if LEARNED_IFNAMES_KEY in rec:
        required |= {"Interfaces", "IfDirections"}
    probs = compare_expected(exp, flow, required=required & set(exp), time_tolerance_ms=tol)
    if ("Interfaces" in flow and "Interfaces" not in exp and NONEMPTY_IFNAMES_KEY not in exp
            and IFNAMES_CHOICES_KEY not in exp):
        probs.append(f"Interfaces: {flow['Interfaces']!r}, but the record names none and no interface table "
                     "named its interfaces")
    if "Proto" in exp and exp["Proto"] not in (6, 17, 132):
        probs += [f"{k}: expected none on a protocol {exp['Proto']} flow, got {flow[k]!r}" for k in ("SrcPort", "DstPort")
                  if k in flow]
        raw = to_int(rec["cflow.dstport"]) if "cflow.dstport" in rec else None
        readings = {raw}
        sport = to_int(rec["cflow.srcport"]) if "cflow.srcport" in rec else 0
        if pkt.version in (1, 5, 7) and sport and raw is not None:
            # fprobe: the bare type in the source port and the code in the destination port;
            # some IOS versions: type << 8 | code in the source port, the destination 0
            if sport < 256 and raw < 256:
                readings = {sport << 8 | raw}
            elif raw == 0:
                readings = {sport}
        if "IcmpType" not in exp and "IcmpType" in flow and (flow["IcmpType"] << 8 | flow["IcmpCode"]) not in readings:
            probs.append(f"IcmpType/IcmpCode {flow['IcmpType']}/{flow['IcmpCode']}: not the ports' reading "
                         f"{readings!r} (type << 8 | code), and the record has no ICMP element")
    if pkt.version in (1, 5, 7, 9) and pkt.export_ms is not None and pkt.sysuptime_ms is not None:
        for which, key in (("start", "TimeFlowStartMs"), ("end", "TimeFlowEndMs")):
            tkey = f"cflow.time{which}"
            if tkey in rec and seconds_to_ms(rec[tkey]) > pkt.sysuptime_ms and key in flow:
                plain = pkt.export_ms - pkt.sysuptime_ms + seconds_to_ms(rec[tkey])
                off = (plain - flow[key]) % (1 << 32)
                if min(off, (1 << 32) - off) > tol:
                    probs.append(f"{key}: {flow[key]} is not the sysUpTime reading {plain} modulo 2^32")
    if SAMPLING_KEY in rec:
        events = any(k in rec for k in ("cflow.firewall_event", "cflow.fw_event"))
        want = (rec[SAMPLING_KEY] or cidr_sampling or (1 if rec.get(SAMPLER0_KEY) else None)
                or (None if events else configured_sampling) or None)
        if flow.get("Sampling") != want:
            probs.append(f"Sampling: expected {want!r}, got {flow.get('Sampling')!r}")
    if cset.template is not None and "TemplateId" in flow and flow["TemplateId"] != cset.flowset_id:
        probs.append(f"TemplateId: expected {cset.flowset_id}, got {flow['TemplateId']}")
    return probs


# --------------------------------------------------------------------------------------------
# sFlow v5 (tshark "sflow")

SAMPLE_TYPES = {"Flow sample": 1, "Counters sample": 2, "Expanded flow sample": 3,
                "Expanded counters sample": 4}
_SAMPLE_KEY = re.compile(r"^(Flow sample|Counters sample|Expanded flow sample|Expanded counters sample)"
                         r", seq \d+$")


@dataclass
class SflowRecord:
    enterprise: int
    format: int
    fields: dict  # flattened


@dataclass
class SflowSample:
    type: int  # 1 flow, 2 counters, 3 expanded flow, 4 expanded counters
    fields: dict  # the sample's own fields (flattened, records excluded)
    records: list[SflowRecord]

    @property
    def is_flow(self) -> bool:
        return self.type in (1, 3)


@dataclass
class SflowPacket:
    frame: int
    src: str
    agent: str
    sequence: int
    numsamples: int
    samples: list[SflowSample]  # grouped by sample type (tshark loses the interleaving)
    malformed: bool
    raw: dict


def parse_sflow(p: dict) -> SflowPacket:
    body = p["sflow"]
    samples: list[SflowSample] = []
    for k, v in body.items():
        m = _SAMPLE_KEY.match(k)
        if not m:
            continue
        for sv in _as_list(v):
            own: dict = {}
            recs: list[SflowRecord] = []
            for rk, rv in sv.items():
                items = _as_list(rv)
                if items and all(isinstance(x, dict) for x in items) and any(
                        "sflow_245.flow_record_format" in x or "sflow_245.counters_record_format" in x
                        for x in items):
                    for x in items:
                        fmt = x.get("sflow_245.flow_record_format", x.get("sflow_245.counters_record_format"))
                        recs.append(SflowRecord(int(x.get("sflow.enterprise", 0)), int(fmt), flatten_record(x)))
                elif isinstance(rv, dict):
                    flatten(rv, own)
                else:
                    own[rk] = rv
            samples.append(SflowSample(int(sv.get("sflow_245.sampletype", SAMPLE_TYPES[m.group(1)])),
                                       own, recs))
    return SflowPacket(
        frame=int(p["frame"]), src=p.get("src", ""), agent=body.get("sflow_245.agent") or body.get("sflow_245.agent.v6", ""),
        sequence=int(body.get("sflow_245.sequence_number", 0)),
        numsamples=int(body.get("sflow_245.numsamples", 0)), samples=samples,
        malformed=_has_key(body, "_ws.malformed"), raw=body,
    )


def flatten_record(x: dict) -> dict:
    """A flow/counter record's own fields; the decoded sampled header stays nested under
    'header_tree' (its layers are read by header_layers())."""
    out: dict = {}
    for k, v in x.items():
        if k == "sflow_245.header_tree":
            out["header_tree"] = v
        elif isinstance(v, dict):
            flatten(v, out)
        else:
            out[k] = v
    return out


def header_layers(tree: dict) -> dict[str, dict]:
    """The sampled header's protocol layers, outermost instance of each (flattened)."""
    out = {}
    for layer, v in tree.items():
        first = _first(v)
        if isinstance(first, dict):
            out[layer] = flatten(first)
    return out


# sflow.org/sflow_drops.txt, "enum drop_reason" (its "dst_host_tos_unreacheable" spelled right).
SFLOW_DROP_REASONS = {
    0: "net_unreachable", 1: "host_unreachable", 2: "protocol_unreachable", 3: "port_unreachable",
    4: "frag_needed", 5: "src_route_failed", 6: "dst_net_unknown", 7: "dst_host_unknown",
    8: "src_host_isolated", 9: "dst_net_prohibited", 10: "dst_host_prohibited",
    11: "dst_net_tos_unreachable", 12: "dst_host_tos_unreachable", 13: "comm_admin_prohibited",
    14: "host_precedence_violation", 15: "precedence_cutoff", 256: "unknown", 257: "ttl_exceeded",
    258: "acl", 259: "no_buffer_space", 260: "red", 261: "traffic_shaping", 262: "pkt_too_big",
    263: "src_mac_is_multicast", 264: "vlan_tag_mismatch", 265: "ingress_vlan_filter",
    266: "ingress_spanning_tree_filter", 267: "port_list_is_empty", 268: "port_loopback_filter",
    269: "blackhole_route", 270: "non_ip", 271: "uc_dip_over_mc_dmac", 272: "dip_is_loopback_address",
    273: "sip_is_mc", 274: "sip_is_loopback_address", 275: "ip_header_corrupted",
    276: "ipv4_sip_is_limited_bc", 277: "ipv6_mc_dip_reserved_scope",
    278: "ipv6_mc_dip_interface_local_scope", 279: "unresolved_neigh", 280: "mc_reverse_path_forwarding",
    281: "non_routable_packet", 282: "decap_error", 283: "overlay_smac_is_mc", 284: "unknown_l2",
    285: "unknown_l3", 286: "unknown_l3_exception", 287: "unknown_buffer", 288: "unknown_tunnel",
    289: "unknown_l4", 290: "sip_is_unspecified", 291: "mlag_port_isolation", 292: "blackhole_arp_neigh",
    293: "src_mac_is_dmac", 294: "dmac_is_reserved", 295: "sip_is_class_e", 296: "mc_dmac_mismatch",
    297: "sip_is_dip", 298: "dip_is_local_network", 299: "dip_is_link_local", 300: "overlay_smac_is_dmac",
    301: "egress_vlan_filter", 302: "uc_reverse_path_forwarding", 303: "split_horizon",
    # hsflowd src/sflow/sflow_drop.h goes on (the Linux drop reasons its dropmon maps)...
    304: "locked_port", 305: "dmac_filter", 306: "blackhole_nexthop", 307: "vxlan_parsing",
    308: "llc_snap_parsing", 309: "vlan_parsing", 310: "pppoe_ppp_parsing", 311: "mpls_parsing",
    312: "arp_parsing", 313: "ip_1_parsing", 314: "ip_n_parsing", 315: "gre_parsing", 316: "udp_parsing",
    317: "tcp_parsing", 318: "ipsec_parsing", 319: "sctp_parsing", 320: "dccp_parsing", 321: "gtp_parsing",
    322: "esp_parsing", 323: "unknown_parsing", 324: "pkt_too_small", 325: "unhandled_proto",
    326: "ipv6disabled", 327: "invalid_proto", 328: "ip_noproto", 329: "skb_csum", 330: "skb_ucopy_fault",
    331: "dev_ready", 332: "dev_hdr", 333: "dup_frag", 334: "skb_gso_seg", 335: "reverse_path_forwarding",
    336: "icmp_parsing", 337: "tcp_md5notfound", 338: "tcp_md5unexpected", 339: "tcp_md5failure",
    340: "tcp_flags", 341: "tcp_zerowindow", 342: "tcp_old_data", 343: "tcp_overwindow", 344: "tcp_ofomerge",
    345: "tcp_rfc7323_paws", 346: "tcp_invalid_sequence", 347: "tcp_reset", 348: "tcp_invalid_syn",
    349: "tcp_close", 350: "tcp_fastopen", 351: "tcp_old_ack", 352: "tcp_too_old_ack",
    353: "tcp_ack_unsent_data", 354: "tcp_ofo_queue_prune", 355: "tcp_ofo_drop", 356: "tcp_minttl",
    357: "ipv6_bad_exthdr", 358: "ipv6_ndisc_frag", 359: "ipv6_ndisc_hop_limit", 360: "ipv6_ndisc_bad_code",
    361: "ipv6_ndisc_bad_options", 362: "ipv6_ndisc_ns_otherhost", 363: "tap_filter", 364: "tap_txfilter",
    365: "tc_ingress", 366: "tc_egress", 367: "xdp", 368: "cpu_backlog", 369: "bpf_cgroup_egress",
    370: "xfrm_policy", 371: "socket_filter", 372: "bgp_flowspec",
    # ...and its table writes dev_hdr and tc_egress as 33 and 36, which is what it sends.
    33: "dev_hdr", 36: "tc_egress",
}


def expected_from_sflow_sample(pkt: SflowPacket, s: SflowSample) -> dict[str, Any]:
    """What flowscope must output for one sFlow flow sample (from tshark's decode)."""
    exp: dict[str, Any] = {}
    f = s.fields
    if "sflow.flow_sample.sampling_rate" in f:
        exp["Sampling"] = to_int(f["sflow.flow_sample.sampling_rate"])
    # (interface 0: "not known", sflow_version_5.txt; no InIf / OutIf. 0x3FFFFFFF, expanded
    # 0xFFFFFFFF too: the agent itself, no InIf / OutIf but InIfInternal / OutIfInternal)
    internal = (0x3FFFFFFF, 0xFFFFFFFF)
    if "sflow.flow_sample.input_interface_value" in f:
        v = to_int(f["sflow.flow_sample.input_interface_value"])
        if to_int(f.get("sflow.flow_sample.input_interface_format", "0")) != 0:
            pass    # an expanded sample's input of another format than ifIndex: no InIf (README)
        elif v in internal:
            exp["InIfInternal"] = True
        elif v:
            exp["InIf"] = v
    elif "sflow.flow_sample.input_interface" in f:
        v = to_int(f["sflow.flow_sample.input_interface"])
        if v == 0x3FFFFFFF:
            exp["InIfInternal"] = True
        elif v >> 30 == 0 and v:
            exp["InIf"] = v & 0x3FFFFFFF
    if "sflow.flow_sample.output_interface_value" in f:
        fmt = to_int(f.get("sflow.flow_sample.output_interface_format",
                           f.get("sflow.flow_sample.output_interface.format", "0")))
        v = to_int(f["sflow.flow_sample.output_interface_value"])
        if fmt == 0 and v in internal:
            exp["OutIfInternal"] = True
        elif fmt == 0 and v:
            exp["OutIf"] = v
        elif fmt == 1:   # the packet was discarded, the value is the reason (sflow_drops.txt)
            reason = to_int(f["sflow.flow_sample.output_interface_value"])
            if reason != 256:   # "unknown": Open vSwitch's for any packet sampled before its output
                exp["PktDropPackets"] = 1
                exp["PktDropLatestDropCause"] = SFLOW_DROP_REASONS.get(reason, str(reason))
    if pkt.agent:
        exp["AgentIP"] = pkt.agent
    header_ip = header_eth = False
    for r in s.records:
        if r.enterprise == 0 and r.format == 1 and "header_tree" in r.fields:  # raw packet header
            exp["Bytes"] = to_int(r.fields["sflow_245.header.frame_length"])
            exp["Packets"] = 1
            if "PktDropPackets" in exp:
                exp["PktDropBytes"] = exp["Bytes"]
            exp.update(expected_from_header(r.fields["header_tree"]))
            L = header_layers(r.fields["header_tree"])
            header_ip = "ip.dst" in L.get("ip", {}) or "ipv6.dst" in L.get("ipv6", {})
            header_eth = "eth" in L
            break
    # The other records that describe the packet (README, sFlow v5): Bytes is a sampled header's
    # frame length, else sampled Ethernet's, else the sampled IPv4/IPv6 length; MACs come from
    # the header's Ethernet, else sampled Ethernet; the keys from the header when it reached an
    # IP header's addresses, else from the first sampled IPv4/IPv6 record.
    if not sample_records_complete(s):
        return exp
    eth = [r.fields for r in s.records if (r.enterprise, r.format) == (0, 2)]
    sip = [r for r in s.records if r.enterprise == 0 and r.format in (3, 4)]
    if "Bytes" not in exp and (eth or sip):
        exp["Bytes"] = to_int(eth[0]["sflow_245.ethernet.length"] if eth else sip[0].fields["sflow_245.ip.length"])
        exp["Packets"] = 1
        if "PktDropPackets" in exp:
            exp["PktDropBytes"] = exp["Bytes"]
    if eth and not header_eth:
        exp["SrcMac"] = eth[0]["sflow_245.ethernet.source_mac_address"].lower()
        exp["DstMac"] = eth[0]["sflow_245.ethernet.destination_mac_address"].lower()
    if sip and not header_ip:
        exp.update(expected_from_sampled_ip(sip[0]))
    return exp


_RECORD_HEAD = {"sflow.enterprise", "sflow_245.flow_record_format", "sflow_5.flow_data_length"}


def sample_records_complete(s: SflowSample) -> bool:
    """Whether tshark listed all of a flow sample's records as sent: it lists as many as the
    sample declares and none of them is a standard format tshark 4.0 does not know (it reads such
    a record's body as the next record, so the records after it are not the sample's: the one
    that describes the packet may be among those lost, e.g. after OVS's 1025/1026)."""
    declared = s.fields.get("sflow.flow_sample.flow_record")
    if declared is None or to_int(declared) != len(s.records):
        return False
    return not any(r.enterprise == 0 and set(r.fields) <= _RECORD_HEAD for r in s.records)


def expected_from_sampled_ip(r: SflowRecord) -> dict[str, Any]:
    """Flow keys from a sampled_ipv4 / sampled_ipv6 record (sflow_version_5.txt: length,
    protocol, src_ip, dst_ip, src_port, dst_port, tcp_flags, tos / priority, each an XDR
    unsigned int or address). Not from tshark 4.0: tcp_flags and the IPv4 tos, which it reads
    from the first (high) byte of their 4-byte fields, where the value is in the last, so TCP
    flags and the IPv4 DSCP are left unchecked."""
    f = r.fields
    v6 = r.format == 4
    proto = to_int(f["sflow.ip_protocol"])
    exp: dict[str, Any] = {
        "SrcAddr": f["sflow_245.ipv6_src" if v6 else "sflow_245.ipv4_src"],
        "DstAddr": f["sflow_245.ipv6_dst" if v6 else "sflow_245.ipv4_dst"],
        "Proto": proto, "Etype": 0x86DD if v6 else 0x0800,
    }
    if v6:
        exp["Dscp"] = (to_int(f["sflow_245.ipv6_priority"]) >> 2) & 0xFF
    sport, dport = to_int(f["sflow_245.ip.source_port"]), to_int(f["sflow.ip.destination_port"])
    if proto in (6, 17, 132):
        exp["SrcPort"], exp["DstPort"] = sport & 0xFFFF, dport & 0xFFFF
    elif proto in (1, 58):
        # "source port number or equivalent" (README: ICMP type and code in the port fields;
        # src_port 0 with dst_port type << 8 | code, or the type alone, as some agents send)
        if sport == 0 and dport:
            sport, dport = (dport >> 8, dport & 0xFF) if dport > 0xFF else (dport, 0)
        if sport <= 0xFF and dport <= 0xFF and (sport or dport or proto == 1):
            exp["IcmpType"], exp["IcmpCode"] = sport, dport
    return exp


def expected_from_header(tree: dict) -> dict[str, Any]:
    """Flow keys from the outermost Ethernet/VLAN/IP/L4 headers tshark decoded."""
    L = header_layers(tree)
    exp: dict[str, Any] = {}
    if "eth" in L:
        exp["SrcMac"] = L["eth"]["eth.src"].lower()
        exp["DstMac"] = L["eth"]["eth.dst"].lower()
    # the frame's own outer tag (README, Vlan), in the order tshark lists the tag layers
    vid = first_vlan_id((layer, flatten(x).get(_VLAN_ID_KEYS[layer])) for layer, v in tree.items()
                        if layer in _VLAN_ID_KEYS for x in _as_list(v) if isinstance(x, dict))
    if vid is not None:
        exp["Vlan"] = vid
    if "ip" in L and "ip.dst" in L["ip"]:   # (a header cut short in the IP header: none)
        ip = L["ip"]
        exp["SrcAddr"] = _first(ip["ip.src"])
        exp["DstAddr"] = _first(ip["ip.dst"])
        exp["Proto"] = to_int(ip["ip.proto"])
        exp["Etype"] = 0x0800
        if "ip.dsfield.dscp" in ip:
            exp["Dscp"] = to_int(ip["ip.dsfield.dscp"])
    elif "ipv6" in L and "ipv6.dst" in L["ipv6"]:
        ip = L["ipv6"]
        exp["SrcAddr"] = _first(ip["ipv6.src"])
        exp["DstAddr"] = _first(ip["ipv6.dst"])
        exp["Proto"] = to_int(ip["ipv6.nxt"])
        # Extension headers (hop-by-hop in MLD, ...): the flow's protocol is the final header.
        # A header cut inside one: its Next Header (its first byte, RFC 8200 4.2-4.6) when
        # tshark read it (ipv6.hopopts.nxt), else tshark cannot tell the protocol (a cut
        # fragment header: nothing): no expectation, never the extension header's own number.
        chain = [to_int(x) for k, v in ip.items() if k.startswith("ipv6.") and k.endswith(".nxt")
                 and k != "ipv6.nxt" for x in _as_list(v)]
        if exp["Proto"] in _IPV6_EXT:
            exp.pop("Proto")
            if chain and chain[-1] not in _IPV6_EXT:
                exp["Proto"] = chain[-1]
        for l4, num in (("icmpv6", 58), ("tcp", 6), ("udp", 17)):
            if l4 in L:
                exp["Proto"] = num
        exp["Etype"] = 0x86DD
        if "ipv6.tclass.dscp" in ip:
            exp["Dscp"] = to_int(ip["ipv6.tclass.dscp"])
    if "udp" in L and to_int(L["udp"]["udp.dstport"]) in (4789, 6081):
        # VXLAN / Geneve: flowscope reports the inner headers as the flow and the outer ones as
        # the tunnel; tshark 4.0 does not dissect the inner frame inside an sFlow header, so only
        # the outer endpoints can be compared (as Tunnel*).
        tunnel = {"TunnelSrcAddr": exp.get("SrcAddr"), "TunnelDstAddr": exp.get("DstAddr"),
                  "TunnelSrcPort": to_int(L["udp"]["udp.srcport"]),
                  "TunnelDstPort": to_int(L["udp"]["udp.dstport"])}
        return {k: v for k, v in tunnel.items() if v is not None}
    if "tcp" in L:
        exp["SrcPort"] = to_int(L["tcp"]["tcp.srcport"])
        exp["DstPort"] = to_int(L["tcp"]["tcp.dstport"])
        if "tcp.flags" in L["tcp"]:
            bits = to_int(L["tcp"]["tcp.flags"]) & 0xFF
            exp["TcpFlagsRaw"] = bits
            exp["Flags"] = flag_names(bits)
    elif "udp" in L:
        exp["SrcPort"] = to_int(L["udp"]["udp.srcport"])
        exp["DstPort"] = to_int(L["udp"]["udp.dstport"])
    for name in ("icmp", "icmpv6"):
        if name in L:
            exp["IcmpType"] = to_int(L[name][f"{name}.type"])
            exp["IcmpCode"] = to_int(L[name][f"{name}.code"])
    return exp


# Generic interface counters (sFlow counters record 0:1): tshark field -> flowscope key.
SFLOW_IF_COUNTERS: dict[str, str] = {
    "sflow_245.ifindex": "IfIndex",
    "sflow_245.iftype": "IfType",
    "sflow_245.ifspeed": "IfSpeed",
    "sflow_245.ifdirection": "IfDirection",
    "sflow_245.ifinoct": "IfInOctets",
    "sflow_245.ifinpkt": "IfInUcastPkts",
    "sflow_245.ifinmcast": "IfInMulticastPkts",
    "sflow_245.ifinbcast": "IfInBroadcastPkts",
    "sflow_245.ifindisc": "IfInDiscards",
    "sflow_245.ifinerr": "IfInErrors",
    "sflow_245.ifinunk": "IfInUnknownProtos",
    "sflow_245.ifoutoct": "IfOutOctets",
    "sflow_245.ifoutpkt": "IfOutUcastPkts",
    "sflow_245.ifoutmcast": "IfOutMulticastPkts",
    "sflow_245.ifoutbcast": "IfOutBroadcastPkts",
    "sflow_245.ifoutdisc": "IfOutDiscards",
    "sflow_245.ifouterr": "IfOutErrors",
    "sflow_245.ifpromisc": "IfPromiscuousMode",
}
