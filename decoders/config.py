"""DecoderConfig: the decoders' settings, one documented dataclass validated before use."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

__all__ = ["DecoderConfig"]


@dataclass
class DecoderConfig:
    """Settings of `decoders.Decoder`; every field has a default and is checked by validate()."""

    #: Templates (all versions and domains together) kept per exporter IP, so a template flood
    #: cannot grow memory without bound; when it is full, the template refreshed least recently
    #: gives way to a new one (counted as templates_evicted; RFC 7011 8.4 lifetimes).
    max_templates_per_exporter: int = 1024
    #: Exporters (source IPs) with decoder state; when a new one arrives with the table full,
    #: the eighth seen least recently are forgotten (counted; their counters kept, folded).
    max_exporters: int = 16384
    #: Fields of all exporters' templates together, each template counting 24 more for its own
    #: objects (about 12 bytes of state each, whatever the templates' shape); a template that
    #: would pass it makes the other exporters seen least recently forgotten (as max_exporters
    #: does: exporters gone silent must not lock new ones out); what one exporter cannot fit
    #: alone is refused and counted as `template_limit`.
    max_template_fields: int = 4_000_000
    #: Estimated bytes of all exporters' state beside templates (sequence streams, options-learned
    #: rates and clocks, sFlow drops baselines, dedup tables; ExporterState.state_size): past it,
    #: the eighth of the exporters seen least recently are forgotten, as when max_exporters is
    #: reached, so spoofed sources cannot multiply the per-exporter bounds.
    max_state_bytes: int = 1 << 30
    #: Datagrams larger than this are refused (`too_large`). 65535 is the UDP maximum.
    max_datagram: int = 65535
    #: Datagrams per second accepted from one exporter (source address), bursts of one second's
    #: worth; the rest are refused before decoding and counted as `rate_limited`. 0 = no limit.
    max_exporter_rate: int = 0
    #: Sampling rate for IPFIX / NetFlow v9 exporters that send none (Open vSwitch never does;
    #: OVN-Kubernetes configures 400). 0 leaves Sampling unset.
    default_sampling: int = 400
    #: Per-exporter rates by CIDR ("10.0.0.0/8" -> 100), longest prefix wins; used for exporters
    #: that send no rate (NetFlow v5 with interval 0 included).
    sampling: dict[str, int] = field(default_factory=dict)
    #: Mark records whose other-direction twin (OVS ingress + egress sampling) was already seen
    #: with "Duplicate": true.
    mark_duplicates: bool = True
    #: Drop (and count as dropped, reason "duplicate") the marked records instead of publishing.
    dedup: bool = False
    #: RFC 5103 biflow records (the reverse direction's elements under enterprise 29305) as two
    #: flows, one per direction with traffic. Off: one flow per record, the reverse elements kept
    #: as ie29305_<id> extras.
    split_biflows: bool = False
    #: Bytes and Packets times the sampling rate where the exporter sent the rate (v5 header,
    #: the record's sampling elements or options data, sFlow samples): estimates of the totals.
    #: Rates from default_sampling / sampling are not applied (Open vSwitch's counts already are).
    renormalize: bool = False
    #: Options data records as dicts of their raw elements on each batch (`batch.options`,
    #: what `flowscope decode --options` prints). The collector turns it off: nothing there reads
    #: them, and a dict per record costs about 0.6 us, which an exporter sending small options
    #: records at line rate would turn into 40 ms of CPU per datagram. What options data teaches
    #: (sampling rates, clocks) is learned either way.
    keep_options: bool = True
    #: sFlow counter samples as dicts of their records on each batch (`batch.counters`). Off (the
    #: collector without --counters): they are not flows, so each is skipped by its length, not
    #: decoded, and counted per exporter as counter_samples_ignored (the collector's
    #: flowscope_counter_samples_ignored_total), so that samples arriving unused are seen.
    keep_counters: bool = True

    def validate(self) -> None:
        """Raise ValueError naming the bad field and what it accepts."""
        for name in ("max_templates_per_exporter", "max_exporters", "max_template_fields", "max_state_bytes",
                     "max_datagram"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name}: must be a positive integer, got {v!r}")
        if self.max_datagram > 65535:
            raise ValueError(f"max_datagram: at most 65535, got {self.max_datagram}")
        if not isinstance(self.max_exporter_rate, int) or self.max_exporter_rate < 0:
            raise ValueError(f"max_exporter_rate: a non-negative integer (0 = no limit), got {self.max_exporter_rate!r}")
        if not isinstance(self.default_sampling, int) or not 0 <= self.default_sampling < 2**32:
            raise ValueError(f"default_sampling: an integer 0..4294967295, got {self.default_sampling!r}")
        for cidr, rate in self.sampling.items():
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                raise ValueError(f"sampling: {cidr!r} is not a CIDR (like 10.0.0.0/8 or fd00::/64)") from None
            if not isinstance(rate, int) or not 1 <= rate < 2**32:
                raise ValueError(f"sampling: rate for {cidr} must be an integer >= 1, got {rate!r}")

    @staticmethod
    def parse_sampling(items: list[str]) -> dict[str, int]:
        """Parse repeated CIDR=RATE options."""
        out: dict[str, int] = {}
        for item in items:
            cidr, sep, rate = item.partition("=")
            if not sep or not rate.strip().isdigit():
                raise ValueError(f"sampling: expected CIDR=RATE (like 10.0.0.0/8=400), got {item!r}")
            out[cidr.strip()] = int(rate)
        return out
