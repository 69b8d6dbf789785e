# sFlow v5 (sflow.org/sflow_version_5.txt), with the Open vSwitch tunnel structures
# (sflow.org/sflow_tunnels.txt) and the Host sFlow socket and application ones (sflow_host.txt,
# sflow_http.txt, sflow_application.txt).
#
# A datagram is XDR: every structure is a (data_format, length, opaque) triple, so anything flowscope
# does not know is skipped by its length. Each flow sample becomes one C Flow (no Python objects on
# that path); the sampled packet header is parsed down to L4 here, through VXLAN/Geneve to the inner
# headers. Counter samples are rare (one per interface per polling interval) and become one dict
# each in `batch.counters`.

from cpython.bytes cimport PyBytes_FromStringAndSize

# sFlow v5 "data_format": enterprise in the top 20 bits, format in the low 12.
cdef enum:
    SF_FLOW_SAMPLE = 1
    SF_COUNTER_SAMPLE = 2
    SF_FLOW_SAMPLE_EXP = 3
    SF_COUNTER_SAMPLE_EXP = 4
    SF_DISCARDED_PACKET = 5   # sflow.org/sflow_drops.txt: one packet the agent saw dropped

# Flow record formats (enterprise 0).
cdef enum:
    FR_RAW_HEADER = 1
    FR_ETHERNET = 2
    FR_IPV4 = 3
    FR_IPV6 = 4
    FR_EXT_SWITCH = 1001
    FR_EXT_ROUTER = 1002
    FR_EXT_GATEWAY = 1003
    FR_EXT_VLANTUNNEL = 1012   # extended_vlantunnel: the 802.1Q tags stripped before the header
    FR_TUN4_EGRESS = 1023   # sflow_tunnels.txt: extended_ipv4_tunnel_egress
    FR_TUN4_INGRESS = 1024  # extended_ipv4_tunnel_ingress (OVS: every packet that came in a tunnel)
    FR_TUN6_EGRESS = 1025   # extended_ipv6_tunnel_egress
    FR_TUN6_INGRESS = 1026  # extended_ipv6_tunnel_ingress
    FR_VNI_EGRESS = 1029
    FR_VNI_INGRESS = 1030
    FR_LINUX_DROP_REASON = 1042   # sflow_drops.txt: extended_linux_drop_reason (hsflowd's dropmon)
    FR_SOCKET4 = 2100       # sflow_host.txt: extended_socket_ipv4 (application / socket samples)
    FR_SOCKET6 = 2101       # extended_socket_ipv6
    FR_PROXY_SOCKET4 = 2102  # sflow_http.txt: extended_proxy_socket_ipv4 (a proxy's upstream connection)
    FR_PROXY_SOCKET6 = 2103  # extended_proxy_socket_ipv6
    FR_APP_OPERATION = 2202  # sflow_application.txt: app_operation (one sampled transaction)

# Raw packet header protocols (sFlow v5 "header_protocol").
cdef enum:
    HP_ETHERNET = 1
    HP_PPP = 7
    HP_IPV4 = 11
    HP_IPV6 = 12
    HP_MPLS = 13
    HP_POS = 14       # Packet over SONET/SDH: RFC 1662 HDLC-like framing, as PPP
    HP_80211 = 15     # sflow_80211.txt
    HP_80211_AMSDU = 17   # sflow_80211.txt IEEE80211_AMSDU_Subframe: one A-MSDU subframe

# Tunnel types as the encoder names them (TUNNEL_NAMES; the OVS IPFIX tunnelType numbering).
cdef enum:
    TUN_VXLAN = 1
    TUN_GRE = 2
    TUN_STT = 4
    TUN_GENEVE = 7
    TUN_IPIP = 8      # IP in IP (4) or IPv6 in IP (41), e.g. Calico's IPIP mode: no OVS code

DEF VXLAN_PORT = 4789
DEF VXLAN_LINUX_PORT = 8472   # the Linux kernel's default VXLAN port (Flannel, Cilium)
DEF GENEVE_PORT = 6081
DEF STT_PORT = 7471
DEF MAX_IPV6_EXT = 8          # extension headers walked before giving up on finding L4


# ---------------------------------------------------------------- sampled header (best effort)
#
# The sampled header is cut at the exporter's snap length (128 bytes by default, OVS too), so a
# header that ends inside a layer is normal: parsing stops there with what it has. `hd_take` is
# rd_take for that reader: NULL when the bytes are not there, never an error.

cdef inline const uint8_t* hd_take(Reader* h, Py_ssize_t n) except? NULL:
    if rd_left(h) < n:
        return NULL
    return rd_take(h, n)


cdef void move_to_tunnel(Flow* f, uint8_t tun_type, uint32_t vni) noexcept:
    """The headers parsed so far are the tunnel's: move them to the tunnel fields."""
    f.tun_af = f.af
    memcpy(f.tun_src, f.src, 16)
    memcpy(f.tun_dst, f.dst, 16)
    f.tun_sport = f.sport
    f.tun_dport = f.dport
    f.tun_proto = f.proto
    f.tun_type = tun_type
    f.tun_id = vni
    f.noaddr = tun_noaddr(f, 3)     # sFlow: only tunnel bits (both addresses always carried)
    f.present |= P_TUNTYPE | P_TUNID | P_TUNSPORT | P_TUNDPORT | P_TUNPROTO
    f.present &= ~(<uint64_t>(P_SPORT | P_DPORT | P_PROTO | P_DSCP | P_FLAGS | P_ICMP))
    f.af = 0
    memset(f.src, 0, 16)
    memset(f.dst, 0, 16)
    f.sport = f.dport = 0
    f.proto = f.dscp = 0
    f.tcp_flags = 0
    f.icmp_type = f.icmp_code = 0


cdef bint inner_there(Reader* h, Py_ssize_t off, uint16_t etype, bint guess) noexcept:
    """A tunnel's payload is there to read, `off` bytes on: a whole IP header of the version
    `etype` says, or (0x6558) an Ethernet header with its VLAN tags and, when it carries IP, the
    whole IP header. A header cut before it keeps the outer packet the flow (its addresses,
    protocol), not an empty inner one. `guess`: nothing says Ethernet follows (a pseudowire
    with no control word): only an Ethernet header that carries IP, maybe tagged, counts."""
    cdef Py_ssize_t left = rd_left(h) - off
    cdef const uint8_t* b = h.buf + h.pos + off
    cdef Py_ssize_t at = 14
    cdef uint16_t t
    if etype == 0x0800:
        return left >= 20 and b[0] >> 4 == 4
    if etype == 0x86DD:
        return left >= 40 and b[0] >> 4 == 6
    if etype != 0x6558 or left < 14:
        return False
    t = be16(b + 12)
    while (t == 0x8100 or t == 0x88A8 or t == 0x9100) and left >= at + 4:
        t = be16(b + at + 2)
        at += 4
    if t == 0x0800:
        return left >= at + 20 and b[at] >> 4 == 4
    if t == 0x86DD:
        return left >= at + 40 and b[at] >> 4 == 6
    return not guess and t >= 0x0600 and t != 0x8100 and t != 0x88A8 and t != 0x9100


cdef int hdr_gre(Flow* f, Reader* h, int depth) except -1:
    """GRE (RFC 2784, keys and sequence numbers RFC 2890; NVGRE RFC 7637): flags and version 0,
    the payload's protocol type, then the checksum (C), key (K, published as TunnelId) and
    sequence number (S) words the flags announce. IPv4, IPv6 and Ethernet (0x6558) payloads are
    unwrapped; others (ERSPAN, PPTP's version 1) leave the outer header the flow's, and so does
    RFC 1701's routing bit (R): its source route entries (SREs) follow the sequence number up to
    a null SRE, a layout RFC 2784 2.3 lets a receiver refuse ("MUST discard ... unless that
    receiver implements RFC 1701"); read as RFC 2784's, its SREs were taken for the payload's
    headers."""
    cdef const uint8_t* p = hd_take(h, 4)
    cdef uint16_t flags, inner
    cdef uint32_t key = 0
    if p == NULL:
        return 0
    flags = be16(p)
    inner = be16(p + 2)
    if flags & 0x4007 or not (inner == 0x0800 or inner == 0x86DD or inner == 0x6558):
        return 0
    if flags & 0x8000 and hd_take(h, 4) == NULL:
        return 0
    if flags & 0x2000:
        p = hd_take(h, 4)
        if p == NULL:
            return 0
        key = be32(p)
    if flags & 0x1000 and hd_take(h, 4) == NULL:
        return 0
    if not inner_there(h, 0, inner, False):
        return 0
    move_to_tunnel(f, TUN_GRE, key)
    f.present &= ~(<uint64_t>(P_TUNSPORT | P_TUNDPORT))
    if not flags & 0x2000:
        f.present &= ~(<uint64_t>P_TUNID)
    if inner == 0x6558:
        return hdr_ethernet(f, h, depth + 1)
    return hdr_ethertype(f, h, inner, depth + 1)


cdef int hdr_l4(Flow* f, Reader* h, uint8_t proto, int depth) except -1:
    cdef const uint8_t* p
    cdef uint8_t optlen
    cdef uint16_t inner
    cdef uint32_t vni
    if (proto == 4 or proto == 41) and depth == 0:
        # IP in IP (RFC 2003) / IPv6 in IP (RFC 4213): the outer header is the tunnel's
        if not inner_there(h, 0, 0x0800 if proto == 4 else 0x86DD, False):
            return 0
        move_to_tunnel(f, TUN_IPIP, 0)
        f.present &= ~(<uint64_t>(P_TUNID | P_TUNSPORT | P_TUNDPORT))
        return hdr_ipv4(f, h, depth + 1) if proto == 4 else hdr_ipv6(f, h, depth + 1)
    if proto == 47 and depth == 0:
        return hdr_gre(f, h, depth)
    if has_ports(proto):   # TCP, UDP, SCTP: ports first
        p = hd_take(h, 4)
        if p == NULL:
            return 0
        f.sport = be16(p)
        f.dport = be16(p + 2)
        f.present |= P_SPORT | P_DPORT
        if proto == 6:
            # RFC 793: flags are byte 13 of the TCP header (CWR/ECE included, NS left out).
            p = hd_take(h, 10)
            if p != NULL:
                f.tcp_flags = p[9]
                f.present |= P_FLAGS
            return 0
        if proto != 17 or depth > 0:
            return 0
        if hd_take(h, 4) == NULL:   # rest of the UDP header
            return 0
        if f.dport == VXLAN_PORT or f.dport == VXLAN_LINUX_PORT:
            # RFC 7348 5: flags (I bit 0x08 = VNI valid), 24 reserved bits, VNI, 8 reserved bits.
            p = hd_take(h, 8)
            if p == NULL or not (p[0] & 0x08):
                return 0
            # As for GRE and IP in IP: a header cut before the inner frame's own headers (a
            # 128-byte snap of an IPv6 underlay) keeps the outer packet the flow, not an inner
            # one with no addresses.
            if not inner_there(h, 0, 0x6558, False):
                return 0
            move_to_tunnel(f, TUN_VXLAN, be32(p + 4) >> 8)
            return hdr_ethernet(f, h, depth + 1)
        if f.dport == GENEVE_PORT:
            # RFC 8926 3.4: ver(2) optlen(6, in 4-byte words), flags, protocol type, VNI(24), rsvd.
            p = hd_take(h, 8)
            if p == NULL or (p[0] >> 6) != 0:
                return 0
            optlen = p[0] & 0x3F
            inner = be16(p + 2)
            vni = be32(p + 4) >> 8
            if optlen and hd_take(h, optlen * 4) == NULL:
                return 0
            # OVN's 8 bytes of options put an IPv6-in-IPv6 packet's inner IPv6 header past 128
            # bytes: cut there, the outer packet stays the flow (inner_there)
            if (inner == 0x0800 or inner == 0x86DD or inner == 0x6558) and not inner_there(h, 0, inner, False):
                return 0
            move_to_tunnel(f, TUN_GENEVE, vni)
            if inner == 0x6558:     # Transparent Ethernet Bridging
                return hdr_ethernet(f, h, depth + 1)
            return hdr_ethertype(f, h, inner, depth + 1)
        return 0
    if proto == 1 or proto == 58:                   # ICMP, ICMPv6: type and code
        p = hd_take(h, 2)
        if p != NULL:
            f.icmp_type = p[0]
            f.icmp_code = p[1]
            f.present |= P_ICMP
    return 0


cdef int hdr_ipv4(Flow* f, Reader* h, int depth) except -1:
    cdef const uint8_t* p = hd_take(h, 20)
    cdef Py_ssize_t ihl
    if p == NULL or (p[0] >> 4) != 4:
        return 0
    ihl = (p[0] & 0x0F) * 4
    if ihl < 20:
        return 0
    f.af = 4
    memcpy(f.src, p + 12, 4)
    memcpy(f.dst, p + 16, 4)
    f.proto = p[9]
    f.dscp = p[1] >> 2
    f.etype = 0x0800
    f.present |= P_PROTO | P_DSCP | P_ETYPE
    if ihl > 20 and hd_take(h, ihl - 20) == NULL:
        return 0
    # RFC 791: only the first fragment (offset 0) carries the L4 header.
    if be16(p + 6) & 0x1FFF:
        return 0
    return hdr_l4(f, h, p[9], depth)


cdef int hdr_ipv6(Flow* f, Reader* h, int depth) except -1:
    cdef const uint8_t* p = hd_take(h, 40)
    cdef const uint8_t* e
    cdef uint8_t nh
    cdef int k
    if p == NULL or (p[0] >> 4) != 6:
        return 0
    f.af = 6
    memcpy(f.src, p + 8, 16)
    memcpy(f.dst, p + 24, 16)
    f.dscp = (((p[0] & 0x0F) << 4) | (p[1] >> 4)) >> 2
    f.etype = 0x86DD
    f.present |= P_PROTO | P_DSCP | P_ETYPE
    nh = p[6]
    f.proto = nh
    # RFC 8200 4: walk the extension headers to the upper-layer protocol. One cut by the
    # sampled header's length still names the next header in its first byte: the protocol
    # (ICMPv6 behind a hop-by-hop header, MLD), without ports.
    for k in range(MAX_IPV6_EXT):
        if nh == 0 or nh == 43 or nh == 60 or nh == 135 or nh == 139 or nh == 140:
            e = hd_take(h, 8)
            if e == NULL or hd_take(h, e[1] * 8) == NULL:
                return ipv6_cut(f, h, e)
        elif nh == 51:      # AH: length in 4-byte words minus 2
            e = hd_take(h, 8)
            if e == NULL or hd_take(h, e[1] * 4) == NULL:
                return ipv6_cut(f, h, e)
        elif nh == 44:      # fragment header: L4 only in the first fragment
            e = hd_take(h, 8)
            if e == NULL:
                # Cut (OVS header=60 leaves 6 of its 8 bytes): its Next Header is still the
                # protocol of every fragment, first or later (RFC 8200 4.5), as for the others.
                return ipv6_cut(f, h, e)
            f.proto = e[0]
            if be16(e + 2) & 0xFFF8:
                return 0
        else:
            break
        nh = e[0]
        f.proto = nh
    return hdr_l4(f, h, nh, depth)


cdef int ipv6_cut(Flow* f, Reader* h, const uint8_t* e) noexcept:
    """An IPv6 extension header cut short (e: its first 8 bytes, NULL if fewer were left): its
    next-header byte, when there, is the flow's protocol."""
    if e != NULL:
        f.proto = e[0]
    elif rd_left(h) >= 1:
        f.proto = h.buf[h.pos]
    return 0


cdef int hdr_ethertype(Flow* f, Reader* h, uint16_t etype, int depth) except -1:
    cdef const uint8_t* p
    cdef Py_ssize_t pos
    f.etype = etype
    f.present |= P_ETYPE
    if etype == 0x8847 or etype == 0x8848:
        # RFC 3032: label stack entries until bottom-of-stack (S bit); the payload has no type,
        # so guess from the IP version nibble.
        while True:
            p = hd_take(h, 4)
            if p == NULL:
                return 0
            if p[2] & 0x01:
                break
        pos = h.pos
        p = hd_take(h, 1)
        if p == NULL:
            return 0
        h.pos = pos
        if (p[0] >> 4) == 4:
            etype = 0x0800
        elif (p[0] >> 4) == 6:
            etype = 0x86DD
        elif p[0] == 0 and depth == 0:
            # An Ethernet pseudowire (RFC 4448), with its control word (RFC 4385: first nibble
            # 0) or without (a customer MAC starting 00): whichever way an Ethernet header that
            # carries IP follows; else, with a control word, any Ethernet frame; else nothing
            # is guessed
            if inner_there(h, 4, 0x6558, True) or (not inner_there(h, 0, 0x6558, True)
                                                   and inner_there(h, 4, 0x6558, False)):
                hd_take(h, 4)
                return hdr_ethernet(f, h, depth + 1)
            if inner_there(h, 0, 0x6558, True):
                return hdr_ethernet(f, h, depth + 1)
            return 0
        else:
            return 0
        f.etype = etype
    elif etype == 0x8864:
        # PPPoE session stage (RFC 2516): version/type 0x11, code 0, session id, length, then the
        # PPP protocol
        p = hd_take(h, 6)
        if p == NULL or p[0] != 0x11 or p[1] != 0:
            return 0
        return hdr_ppp(f, h, depth)
    if etype == 0x0800:
        return hdr_ipv4(f, h, depth)
    if etype == 0x86DD:
        return hdr_ipv6(f, h, depth)
    return 0


cdef int hdr_llc(Flow* f, Reader* h, int depth) except -1:
    """IEEE 802.2 LLC after an 802.3 length field: only SNAP with the Ethernet OUI (RFC 1042,
    AA-AA-03 00-00-00 type) carries an EtherType; STP, IS-IS and other LLC payloads have none."""
    cdef const uint8_t* p = hd_take(h, 8)
    if p == NULL or p[0] != 0xAA or p[1] != 0xAA or p[2] != 0x03 or p[3] or p[4] or p[5]:
        return 0
    return hdr_ethertype(f, h, be16(p + 6), depth)


cdef int hdr_ethernet(Flow* f, Reader* h, int depth) except -1:
    cdef const uint8_t* p = hd_take(h, 14)
    cdef uint16_t etype, vid
    cdef bint tagged = False
    if p == NULL:
        return 0
    memcpy(f.dst_mac, p, 6)
    memcpy(f.src_mac, p + 6, 6)
    f.present |= P_SRCMAC | P_DSTMAC
    etype = be16(p + 12)
    # IEEE 802.1Q / 802.1ad (QinQ) and the older 0x9100: the first (outer) VLAN id is kept. VID 0
    # is a priority tag, not a VLAN. The sampled frame's own tag wins over extended switch's
    # src_vlan whatever the records' order; a tunnelled inner frame's tag only fills a gap.
    while etype == 0x8100 or etype == 0x88A8 or etype == 0x9100:
        p = hd_take(h, 4)
        if p == NULL:
            f.etype = etype
            f.present |= P_ETYPE
            return 0
        vid = be16(p) & 0x0FFF
        if vid and not tagged:
            tagged = True
            if depth == 0:
                f.vlan = vid
                f.present |= P_VLAN | P_VLANHDR
            elif not (f.present & P_VLAN):
                f.vlan = vid
                f.present |= P_VLAN
        etype = be16(p + 2)
    if etype < 0x0600:
        # IEEE 802.3: a length, not an EtherType (0x05DC-0x05FF is undefined either way)
        return hdr_llc(f, h, depth) if etype <= 0x05DC else 0
    return hdr_ethertype(f, h, etype, depth)


cdef int hdr_ppp(Flow* f, Reader* h, int depth) except -1:
    """RFC 1661/1662: optional address-control FF 03, then the protocol (1 byte when
    compressed, RFC 1661 6.5: odd first byte): 0x21 IPv4, 0x57 IPv6, 0x281 MPLS."""
    cdef const uint8_t* p = hd_take(h, 2)
    cdef uint16_t proto
    cdef Py_ssize_t pos
    if p == NULL:
        return 0
    if p[0] == 0xFF and p[1] == 0x03:
        p = hd_take(h, 2)
        if p == NULL:
            return 0
    if p[0] & 1:
        proto = p[0]
        h.pos -= 1
    else:
        proto = be16(p)
    if proto == 0x21:
        return hdr_ethertype(f, h, 0x0800, depth)
    if proto == 0x57:
        return hdr_ethertype(f, h, 0x86DD, depth)
    if proto == 0x281:
        return hdr_ethertype(f, h, 0x8847, depth)
    return 0


cdef int hdr_80211(Flow* f, Reader* h) except -1:
    """IEEE 802.11 MAC header (sflow_80211 header_protocol 15): data frames only, unprotected,
    then LLC/SNAP, or the first A-MSDU subframe. Addresses by the To/From DS bits (802.11-2020
    9.3.2.1)."""
    cdef const uint8_t* p = hd_take(h, 24)
    cdef const uint8_t* a4
    cdef const uint8_t* q
    cdef uint8_t ds
    cdef Py_ssize_t extra = 0
    if p == NULL or ((p[0] >> 2) & 3) != 2 or (p[0] & 3) != 0:
        return 0
    ds = p[1] & 3
    if ds == 3:
        a4 = hd_take(h, 6)
        if a4 == NULL:
            return 0
        memcpy(f.dst_mac, p + 16, 6)
        memcpy(f.src_mac, a4, 6)
    else:
        # DA: addr1 unless to the DS (addr3); SA: addr2 unless from the DS (addr3)
        memcpy(f.dst_mac, p + (16 if ds & 1 else 4), 6)
        memcpy(f.src_mac, p + (16 if ds & 2 else 10), 6)
    f.present |= P_SRCMAC | P_DSTMAC
    if p[0] & 0x80:                         # QoS data subtypes: QoS Control
        extra = 2
        if p[1] & 0x80:                     # +HTC (Order bit in a QoS data frame)
            extra = 6
    if p[1] & 0x40 or (p[0] >> 4) & 4:      # protected (encrypted) or a null-data subtype
        return 0
    q = hd_take(h, extra)
    if q == NULL:
        return 0
    if extra and q[0] & 0x80:
        # QoS Control's A-MSDU Present bit (802.11-2020 9.2.4.5.9): the body is A-MSDU subframes
        # (9.3.2.2.2), each a DA, SA, Length header before its LLC/SNAP MSDU, and Address 3 is
        # the BSSID (Table 9-30). Read as LLC, the subframe header gave nothing.
        return hdr_amsdu(f, h)
    return hdr_llc(f, h, 0)


cdef int hdr_amsdu(Flow* f, Reader* h) except -1:
    """An A-MSDU subframe (802.11-2020 9.3.2.2.2: DA, SA, Length, then the MSDU's LLC/SNAP;
    sflow_80211 header_protocol 17 on its own): the MSDU's own DA and SA, then its EtherType."""
    cdef const uint8_t* p = hd_take(h, 14)
    if p == NULL:
        return 0
    memcpy(f.dst_mac, p, 6)
    memcpy(f.src_mac, p + 6, 6)
    f.present |= P_SRCMAC | P_DSTMAC
    return hdr_llc(f, h, 0)


# ---------------------------------------------------------------- flow records

cdef inline uint16_t bswap16(uint16_t v) noexcept:
    return <uint16_t>((v >> 8) | (v << 8))


cdef inline uint8_t tunnel_type_of(uint8_t proto, uint16_t dport) noexcept:
    if proto == 17 and (dport == VXLAN_PORT or dport == VXLAN_LINUX_PORT):
        return TUN_VXLAN
    if proto == 17 and dport == GENEVE_PORT:
        return TUN_GENEVE
    if proto == 47:
        return TUN_GRE
    if proto == 6 and dport == STT_PORT:
        return TUN_STT
    return 0


cdef int need(Reader* rec, Py_ssize_t n, uint32_t fmt) except -1:
    if rd_left(rec) < n:
        raise_decode("bad_length", rec.pos, f"sFlow flow record {fmt}: {rd_left(rec)} bytes, need {n}")
    return 0


cdef int read_address(Reader* rec, uint8_t* af, uint8_t* out, uint32_t fmt) except -1:
    """sFlow `address`: type (1 IPv4, 2 IPv6, 0 unknown) and the address."""
    cdef uint32_t t
    need(rec, 4, fmt)
    t = rd_u32(rec)
    if t == 1:
        need(rec, 4, fmt)
        memset(out, 0, 16)
        memcpy(out, rd_take(rec, 4), 4)
        af[0] = 4
    elif t == 2:
        need(rec, 16, fmt)
        memcpy(out, rd_take(rec, 16), 16)
        af[0] = 6
    elif t == 0:
        af[0] = 0
    else:
        raise_decode("bad_sample", rec.pos - 4, f"sFlow flow record {fmt}: address type {t}")
    return 0


# Where a flow sample's Bytes came from (flow_records' `src`): a sampled header's frame_length
# wins over sampled_ethernet's length, which wins over sampled_ipv4/ipv6's (the IP packet's,
# "excluding lower layer encapsulations"), whatever the records' order. frame_length is taken
# as sent, whatever the header_protocol: sflow_version_5.txt makes it the "Original length of
# packet before sampling" (for a layer 2 protocol the octets received, FCS included), and the
# octets an agent adds to it for encapsulations the hardware removed "must also be added to the
# stripped count": `stripped` says how header<> relates to the packet, not how long the packet
# was, and is never subtracted. (An IPv4 header's frame_length may so count the Ethernet header
# the agent stripped: generic_sflow_flow_sample's is 490, its IP total length 476 + 14 stripped.)
DEF BYTES_FROM_IP = 1
DEF BYTES_FROM_ETHERNET = 2
DEF BYTES_FROM_HEADER = 3


cdef struct HostRecs:
    # What a sample's sampled IPv4/IPv6, Host sFlow and VLAN records gave, applied after its last
    # record (flow_records): a sampled header anywhere in the sample wins over a sampled IPv4/IPv6
    # record, and either wins over the Host sFlow ones; the sampled frame's tag or extended
    # switch's VLAN wins over extended_vlantunnel's.
    const uint8_t* ip         # the first sampled_ipv4/ipv6 record's data (its length checked), NULL: none
    uint8_t ip_af             # 4 (format 3) or 6 (format 4)
    const uint8_t* p          # the first extended_socket record's data (its length checked), NULL: none
    uint8_t af                # 4 (2100) or 6 (2101)
    const uint8_t* proxy      # the first extended_proxy_socket record's data, NULL: none
    uint8_t proxy_af          # 4 (2102) or 6 (2103)
    uint8_t app               # 1: an app_operation record was read (the first one counts)
    uint8_t switch_vlan       # 1: an extended_switch record gave the VLAN (src_vlan 1-4095)
    uint16_t stack_vlan       # extended_vlantunnel's first non-zero VID, outermost first, 0: none
    uint64_t app_bytes        # its req_bytes + resp_bytes (saturated at 2^64-1)
    uint32_t app_us           # its uS: the transaction's duration in microseconds


cdef int xdr_skip_string(Reader* rec, uint32_t fmt) except -1:
    """Step over an XDR string (length, bytes, padding to 4) inside a record; one that does not
    fit in what is left of the record is bad_length."""
    cdef uint32_t n
    cdef uint64_t padded
    need(rec, 4, fmt)
    n = rd_u32(rec)
    padded = <uint64_t>n + ((4 - (n & 3)) & 3)
    if padded > <uint64_t>rd_left(rec):
        raise_decode("bad_length", rec.pos - 4, f"sFlow flow record {fmt}: a {n}-byte string in {rd_left(rec)} bytes")
    if padded:
        rd_take(rec, <Py_ssize_t>padded)
    return 0


cdef inline uint16_t raw_ip_etype(Reader* h, uint32_t hproto) noexcept:
    """The EtherType of a header_protocol IPv4/IPv6 header: its first byte's version, else the
    declared protocol's."""
    cdef uint8_t version = h.buf[h.pos] >> 4 if rd_left(h) >= 1 else 0
    if version == 4:
        return 0x0800
    if version == 6:
        return 0x86DD
    return 0x0800 if hproto == HP_IPV4 else 0x86DD


cdef int flow_record(FlowBatch b, Flow* f, uint32_t ent, uint32_t fmt, Reader* rec, int* src,
                     HostRecs* sock) except -1:
    cdef const uint8_t* p
    cdef uint32_t hproto, hlen, nseg, seg_len, ncomm, i
    cdef uint32_t last_as = 0
    cdef uint16_t vid
    cdef uint8_t af
    cdef uint8_t nh[16]
    cdef Reader h
    cdef Py_ssize_t start = rec.pos, rlen = rd_left(rec)
    if ent != 0:
        return batch_add_extra(b, f, ent, <uint16_t>fmt, start, rlen)
    if fmt == FR_RAW_HEADER:
        # header_protocol, frame_length, stripped, header<>
        if src[0] == BYTES_FROM_HEADER:
            # A second sampled header in one sample (an agent reporting outer and inner
            # headers apart, a relay merging samples): the first describes the packet, later
            # ones are kept as they came rather than mixed into it.
            return batch_add_extra(b, f, 0, <uint16_t>fmt, start, rlen)
        need(rec, 16, fmt)
        p = rd_take(rec, 16)
        hproto = be32(p)
        hlen = be32(p + 12)
        f.bytes = be32(p + 4)
        f.present |= P_BYTES
        src[0] = BYTES_FROM_HEADER
        if hlen > <uint32_t>rd_left(rec):
            raise_decode("bad_length", rec.pos - 4, f"sFlow raw header: {hlen} bytes, record has {rd_left(rec)}")
        rd_sub(rec, &h, hlen)
        if hproto == HP_ETHERNET:
            hdr_ethernet(f, &h, 0)
        elif hproto == HP_IPV4 or hproto == HP_IPV6:
            # The IP header names its own version: one that contradicts header_protocol is read
            # as what it is (tshark 4.0 reads an IPv6 header labelled 11 so, its "ip" dissector
            # going by the version; it calls an IPv4 header labelled 12 a bogus IPv6 one, read
            # here as IPv4 all the same). A header with neither version (or empty) keeps the
            # declared EtherType.
            hdr_ethertype(f, &h, raw_ip_etype(&h, hproto), 0)
        elif hproto == HP_MPLS:
            hdr_ethertype(f, &h, 0x8847, 0)
        elif hproto == HP_PPP or hproto == HP_POS:
            hdr_ppp(f, &h, 0)
        elif hproto == HP_80211:
            hdr_80211(f, &h)
        elif hproto == HP_80211_AMSDU:
            hdr_amsdu(f, &h)
        return 0
    if fmt == FR_ETHERNET:
        # length, src mac (6 + 2 pad), dst mac (6 + 2 pad), type
        need(rec, 24, fmt)
        p = rd_take(rec, 24)
        if src[0] < BYTES_FROM_ETHERNET:
            f.bytes = be32(p)
            f.present |= P_BYTES
            src[0] = BYTES_FROM_ETHERNET
        if not (f.present & P_SRCMAC):
            memcpy(f.src_mac, p + 4, 6)
            memcpy(f.dst_mac, p + 12, 6)
            f.present |= P_SRCMAC | P_DSTMAC
        if not (f.present & P_ETYPE) and be32(p + 20) >= 0x0600:   # below: an 802.3 length
            f.etype = <uint16_t>be32(p + 20)
            f.present |= P_ETYPE
        return 0
    if fmt == FR_IPV4 or fmt == FR_IPV6:
        # sampled_ipv4/ipv6: length, protocol, src, dst, src_port, dst_port, tcp_flags, tos/priority.
        # Its length counts here (Bytes' precedence); its keys only after the last record
        # (sampled_ip_keys), and only if no sampled header described an IP packet, wherever that
        # header comes: read at once, before a header cut short of its L4 header, its ports,
        # flags or ICMP fields stayed on the header's flow, which the other order never had.
        af = 4 if fmt == FR_IPV4 else 6
        need(rec, 32 if af == 4 else 56, fmt)
        p = rd_take(rec, 32 if af == 4 else 56)
        if src[0] < BYTES_FROM_IP:
            f.bytes = be32(p)
            f.present |= P_BYTES
            src[0] = BYTES_FROM_IP
        if sock.ip == NULL:
            sock.ip = p
            sock.ip_af = af
        return 0
    if fmt == FR_EXT_SWITCH:
        # src_vlan, src_priority, dst_vlan, dst_priority: the ingress VLAN unless the sampled
        # frame carried its own tag (hdr_ethernet), whichever record comes first
        need(rec, 16, fmt)
        p = rd_take(rec, 16)
        if not (f.present & P_VLANHDR) and 0 < be32(p) < 4096:
            f.vlan = <uint16_t>be32(p)
            f.present |= P_VLAN
        if 0 < be32(p) < 4096:
            sock.switch_vlan = 1
        return 0
    if fmt == FR_EXT_VLANTUNNEL:
        # stack<>: the 802.1Q tags the device stripped before the sampled header, each TPID << 16
        # | TCI, "listed from outermost to innermost" (sflow_version_5.txt). The spec has
        # extended_switch reported beside it, always: its VLAN (or the sampled frame's own tag)
        # is the flow's. Only when neither gives one is the stack's outermost tag taken (the
        # first with a non-zero VID; VID 0 is a priority tag), the frame's outer tag as it was
        # on the wire, as a header that kept its tags gives it (hdr_ethernet); applied after the
        # last record (flow_records), so the records' order does not matter. The whole stack
        # stays the ie1012 extra.
        need(rec, 4, fmt)
        nseg = rd_u32(rec)
        if <uint64_t>nseg * 4 > <uint64_t>rd_left(rec):
            raise_decode("bad_length", rec.pos - 4, f"sFlow extended_vlantunnel: {nseg} tags in {rd_left(rec)} bytes")
        for i in range(nseg):
            vid = rd_u32(rec) & 0x0FFF
            if vid and not sock.stack_vlan:
                sock.stack_vlan = vid
        return batch_add_extra(b, f, 0, <uint16_t>fmt, start, rlen)
    if fmt == FR_EXT_ROUTER:
        # The next hop router wins over the gateway's BGP next hop (records come in any order).
        read_address(rec, &af, nh, fmt)
        if af and not addr_zero(nh, af):     # 0.0.0.0 / ::: no next hop (the gateway's may fill it)
            f.nh_af = af
            memcpy(f.nexthop, nh, 16)
        need(rec, 8, fmt)
        p = rd_take(rec, 8)
        f.src_mask = <uint8_t>be32(p)
        f.dst_mask = <uint8_t>be32(p + 4)
        f.present |= P_SRCMASK | P_DSTMASK
        return 0
    if fmt == FR_EXT_GATEWAY:
        # next_hop, as, src_as, src_peer_as, dst_as_path<segments>, communities<>, localpref.
        # next_hop is the border router towards the destination: NextHop when extended
        # router gave none.
        read_address(rec, &af, nh, fmt)
        if af and not f.nh_af and not addr_zero(nh, af):
            f.nh_af = af
            memcpy(f.nexthop, nh, 16)
        need(rec, 16, fmt)
        p = rd_take(rec, 16)
        f.src_as = be32(p + 4)
        nseg = be32(p + 12)
        # Each segment is at least 8 bytes: check the count against the record before looping.
        if <uint64_t>nseg * 8 > <uint64_t>rd_left(rec):
            raise_decode("bad_length", rec.pos - 4, f"sFlow gateway: {nseg} AS path segments")
        for i in range(nseg):
            need(rec, 8, fmt)
            seg_len = be32(rd_take(rec, 8) + 4)
            if <uint64_t>seg_len * 4 > <uint64_t>rd_left(rec):
                raise_decode("bad_length", rec.pos - 4, f"sFlow gateway: AS path segment of {seg_len}")
            # only the last segment's last AS is the origin (an empty last segment: none)
            last_as = be32(rd_take(rec, seg_len * 4) + (seg_len - 1) * 4) if seg_len else 0
        # The destination AS is the origin: the last AS of the path (none for a local route).
        f.present |= P_SRCAS
        if last_as:
            f.dst_as = last_as
            f.present |= P_DSTAS
        return 0
    if fmt == FR_TUN4_EGRESS or fmt == FR_TUN4_INGRESS or fmt == FR_TUN6_EGRESS or fmt == FR_TUN6_INGRESS:
        # OVS (sflow_tunnels.txt): the outer header added on egress / removed on ingress, as a
        # sampled_ipv4 / sampled_ipv6 structure.
        af = 4 if (fmt == FR_TUN4_EGRESS or fmt == FR_TUN4_INGRESS) else 6
        need(rec, 32 if af == 4 else 56, fmt)
        p = rd_take(rec, 32 if af == 4 else 56)
        f.tun_af = af
        memset(f.tun_src, 0, 16)
        memset(f.tun_dst, 0, 16)
        memcpy(f.tun_src, p + 8, addr_len(af))
        memcpy(f.tun_dst, p + 8 + addr_len(af), addr_len(af))
        f.noaddr = tun_noaddr(f, 3)  # a zero endpoint: OVS's "not set"
        f.tun_proto = <uint8_t>be32(p + 4)
        p += 8 + 2 * addr_len(af)
        f.tun_sport = <uint16_t>be32(p)
        f.tun_dport = <uint16_t>be32(p + 4)
        if not tunnel_type_of(f.tun_proto, f.tun_dport) and tunnel_type_of(f.tun_proto, bswap16(f.tun_dport)):
            # Open vSwitch (ofproto-dpif-sflow.c dpif_sflow_tunnel_v4, 3.1 and earlier) copies the
            # network-order ports into these host-order fields: from little-endian hosts (all
            # OVN-Kubernetes nodes) they arrive byte-swapped. A destination port that is only a
            # tunnel port swapped is read back (a fixed OVS sends 4789/6081 and is taken as is).
            f.tun_sport = bswap16(f.tun_sport)
            f.tun_dport = bswap16(f.tun_dport)
        f.present |= P_TUNPROTO | P_TUNSPORT | P_TUNDPORT
        if not (f.present & P_TUNTYPE):
            f.tun_type = tunnel_type_of(f.tun_proto, f.tun_dport)
            if f.tun_type:
                f.present |= P_TUNTYPE
        return 0
    if fmt == FR_VNI_EGRESS or fmt == FR_VNI_INGRESS:
        need(rec, 4, fmt)
        f.tun_id = rd_u32(rec)
        f.present |= P_TUNID
        return 0
    if fmt == FR_SOCKET4 or fmt == FR_SOCKET6:
        # protocol, local_ip, remote_ip, local_port, remote_port (ip_v4: 4 bytes, ip_v6: 16). Only
        # checked and noted here: it gives the flow's keys after the last record, and only if no
        # sampled header or sampled IPv4/IPv6 record did (socket_keys). The first one counts.
        need(rec, 20 if fmt == FR_SOCKET4 else 44, fmt)
        p = rd_take(rec, 20 if fmt == FR_SOCKET4 else 44)
        if sock.p == NULL:
            sock.p = p
            sock.af = 4 if fmt == FR_SOCKET4 else 6
        return 0
    if fmt == FR_PROXY_SOCKET4 or fmt == FR_PROXY_SOCKET6:
        # sflow_http.txt: extended_proxy_socket_ipv4/ipv6 is an extended_socket_ipv4/ipv6 (the same
        # layout) describing the connection a proxy opened upstream for the transaction, the
        # extended_socket being the client's connection to the proxy. It is the flow's keys only
        # when nothing else gave them (socket_keys, after the last record: no sampled header,
        # sampled IPv4/IPv6 or extended_socket in the sample). It is kept as its ie2102/ie2103
        # extra in every case, so the upstream end is not lost, and a flow whose keys came from
        # it says so.
        need(rec, 20 if fmt == FR_PROXY_SOCKET4 else 44, fmt)
        p = rd_take(rec, 20 if fmt == FR_PROXY_SOCKET4 else 44)
        if sock.proxy == NULL:
            sock.proxy = p
            sock.proxy_af = 4 if fmt == FR_PROXY_SOCKET4 else 6
        return batch_add_extra(b, f, 0, <uint16_t>fmt, start, rlen)
    if fmt == FR_APP_OPERATION:
        # sflow_application.txt app_operation: context (application<32>, operation<32>,
        # attributes<255>: XDR strings), status_descr<64>, unsigned hyper req_bytes, unsigned hyper
        # resp_bytes, unsigned int uS (duration), status (enum). Strings are walked by their
        # lengths (a length beyond the record is bad_length, one beyond its <bound> is read as
        # sent). The byte counts and duration count only for a transaction sample (no sampled
        # header, Ethernet or IPv4/IPv6 record: flow_records); the record is kept as its ie2202
        # extra, its names and status having no field in NetObserv's format.
        for i in range(4):
            xdr_skip_string(rec, fmt)
        need(rec, 24, fmt)
        p = rd_take(rec, 24)
        if not sock.app:
            sock.app = 1
            sock.app_bytes = be64(p) + be64(p + 8)
            if sock.app_bytes < be64(p):
                sock.app_bytes = 0xFFFFFFFFFFFFFFFF
            sock.app_us = be32(p + 16)
        return batch_add_extra(b, f, 0, <uint16_t>fmt, start, rlen)
    if fmt == FR_LINUX_DROP_REASON:
        # string reason<>: the Linux kernel's name of the drop reason (skb_drop_reason without its
        # SKB_DROP_REASON_ prefix, e.g. NETFILTER_DROP). Only a name made of [A-Z0-9_] is taken
        # (it is published as NetObserv's SKB_DROP_REASON_<name>); anything else stays an extra.
        need(rec, 4, fmt)
        hlen = rd_u32(rec)
        if hlen > <uint32_t>rd_left(rec):
            raise_decode("bad_length", rec.pos - 4, f"sFlow flow record {fmt}: a {hlen}-byte string in {rd_left(rec)} bytes")
        p = rec.buf + rec.pos
        if 0 < hlen <= 64 and all_upper_snake(p, hlen):
            f.drop_str_off = <uint32_t>rec.pos
            f.drop_str_len = <uint16_t>hlen
            return 0
    return batch_add_extra(b, f, 0, <uint16_t>fmt, start, rlen)


cdef void sampled_ip_keys(Flow* f, const uint8_t* p, uint8_t af) noexcept:
    """The flow's keys from a sampled_ipv4/ipv6 record (`p`: its 32 or 56 bytes), when no
    sampled header in the sample described an IP packet (f.af)."""
    cdef uint32_t sport, dport
    if f.af:        # a raw header record described this packet
        return
    f.af = af
    f.proto = <uint8_t>be32(p + 4)
    memcpy(f.src, p + 8, addr_len(af))
    memcpy(f.dst, p + 8 + addr_len(af), addr_len(af))
    p += 8 + 2 * addr_len(af)      # now at src_port, dst_port, tcp_flags, tos
    f.dscp = <uint8_t>(be32(p + 12) >> 2)
    f.etype = 0x0800 if af == 4 else 0x86DD
    f.present |= P_PROTO | P_DSCP | P_ETYPE
    sport = be32(p)
    dport = be32(p + 4)
    if has_ports(f.proto):    # ports only where there are (hdr_l4)
        f.sport = <uint16_t>sport
        f.dport = <uint16_t>dport
        f.present |= P_SPORT | P_DPORT
    elif f.proto == 1 or f.proto == 58:
        # "source port number or equivalent": sflowtool reads ICMP type and code there; some
        # agents leave src_port 0 and put the type (or NetFlow's type << 8 | code) in dst_port.
        if sport == 0 and dport:
            sport, dport = dport >> 8 if dport > 0xFF else dport, dport & 0xFF if dport > 0xFF else 0
        # (0/0 from an ICMPv6 agent is no ICMP field at all: type 0 is reserved, as on IPFIX)
        if sport <= 0xFF and dport <= 0xFF and (sport or dport or f.proto == 1):
            f.icmp_type = <uint8_t>sport
            f.icmp_code = <uint8_t>dport
            f.present |= P_ICMP
    if f.proto == 6:
        f.tcp_flags = <uint8_t>be32(p + 8)
        f.present |= P_FLAGS


cdef bint all_upper_snake(const uint8_t* p, uint32_t n) noexcept:
    cdef uint32_t i
    for i in range(n):
        if not (65 <= p[i] <= 90 or 48 <= p[i] <= 57 or p[i] == 95):
            return False
    return True


cdef inline int skip_pad(Reader* r, uint32_t n) except -1:
    """XDR pads opaque data to 4 bytes; a missing pad at the very end is tolerated."""
    cdef Py_ssize_t pad = (4 - (n & 3)) & 3
    if pad:
        rd_take(r, pad if pad <= rd_left(r) else rd_left(r))
    return 0


cdef int64_t flow_sample(ExporterState ex, FlowBatch b, Reader* s, bint expanded, int64_t recv_ms,
                         uint64_t stream, bint late) except -1:
    """One flow sample into one flow; returns how many of its records it counts and does not
    hold (flow_records)."""
    cdef const uint8_t* p
    cdef Flow* f
    cdef uint32_t rate, nrec, in_fmt, in_val, out_fmt, out_val
    cdef int64_t missing
    if rd_left(s) < (44 if expanded else 32):
        raise_decode("bad_sample", s.pos, f"sFlow flow sample of {rd_left(s)} bytes")
    if expanded:
        # seq, source_id_type, source_id_index, rate, pool, drops, input fmt/value, output fmt/value
        p = rd_take(s, 44)
        rate = be32(p + 12)
        in_fmt = be32(p + 24)
        in_val = be32(p + 28)
        out_fmt = be32(p + 32)
        out_val = be32(p + 36)
        nrec = be32(p + 40)
        ex.sample_drops(stream, be32(p + 4), be32(p + 8), be32(p + 20), late)
    else:
        # seq, source_id, rate, pool, drops, input, output: interface = format(2) | value(30)
        p = rd_take(s, 32)
        rate = be32(p + 8)
        in_fmt = be32(p + 20) >> 30
        in_val = be32(p + 20) & 0x3FFFFFFF
        out_fmt = be32(p + 24) >> 30
        out_val = be32(p + 24) & 0x3FFFFFFF
        nrec = be32(p + 28)
        ex.sample_drops(stream, be32(p + 4) >> 24, be32(p + 4) & 0xFFFFFF, be32(p + 16), late)
    f = batch_new_flow(b)
    f.sampling = rate
    f.packets = 1
    f.t_start_ms = recv_ms
    f.t_end_ms = recv_ms
    f.present = P_PACKETS | P_TSTART | P_TEND | P_SAMPLING
    # Interface format 0 is an ifIndex (0: "not known", as discarded_packet's); 1 is "discarded"
    # (value = reason) and 2 "multiple interfaces" (value = count): neither is an interface.
    # sflow_version_5.txt, format 0: "The maximum value, 0x3FFFFFFF, indicates that there is no
    # input or output interface ... Examples include traffic to or from the agent itself"; the
    # expanded form's erratum makes that 0xFFFFFFFF, and agents copy 0x3FFFFFFF there too. No
    # device has that ifIndex: no InIf/OutIf, and InIfInternal/OutIfInternal say so.
    if in_fmt == 0 and (in_val == 0x3FFFFFFF or in_val == 0xFFFFFFFF):
        f.if_internal |= IF_INTERNAL_IN
    elif in_fmt == 0 and in_val:
        f.in_if = in_val
        f.present |= P_INIF
    if out_fmt == 0 and (out_val == 0x3FFFFFFF or out_val == 0xFFFFFFFF):
        f.if_internal |= IF_INTERNAL_OUT
    elif out_fmt == 0 and out_val:
        f.out_if = out_val
        f.present |= P_OUTIF
    elif out_fmt == 1 and out_val != 256:
        # Discarded, value = the reason. Not 256 ("unknown"): Open vSwitch sends 1 | 256 for every
        # packet with no output port when its sample is made, which is every packet sent through
        # conntrack (ct() recirculates: the output comes after), forwarded or not, as well as the
        # dropped ones; from OVS it tells nothing, and from others it says no more than no OutIf.
        f.drop_reason = out_val
        f.present |= P_DROP
    missing = flow_records(b, f, s, nrec)
    if rate:
        ex.last_sampling = rate
    return missing


cdef int64_t flow_records(FlowBatch b, Flow* f, Reader* s, uint32_t nrec) except -1:
    """The `nrec` flow records of a flow sample or a discarded-packet sample, into `f`. Returns
    how many of them the sample does not hold: it ends where a record would start, short of its
    count (records_short)."""
    cdef const uint8_t* p
    cdef uint32_t j, rfmt, rlen
    cdef Reader rec
    cdef int src = 0
    cdef int64_t missing = 0
    cdef HostRecs sock
    memset(&sock, 0, sizeof(HostRecs))
    for j in range(nrec):
        if rd_left(s) < 8:
            if rd_left(s) == 0:
                missing = nrec - j
                break
            raise_decode("bad_sample", s.pos, f"sFlow flow sample: record {j} of {nrec} cut at its header")
        p = rd_take(s, 8)
        rfmt = be32(p)
        rlen = be32(p + 4)
        if rlen > <uint32_t>rd_left(s):
            raise_decode("bad_length", s.pos - 4, f"sFlow flow record {rfmt & 0xFFF}: length {rlen} > {rd_left(s)}")
        rd_sub(s, &rec, rlen)
        skip_pad(s, rlen)
        flow_record(b, f, rfmt >> 12, rfmt & 0xFFF, &rec, &src, &sock)
    if sock.stack_vlan and not sock.switch_vlan and not (f.present & P_VLANHDR):
        f.vlan = sock.stack_vlan
        f.present |= P_VLAN
    if sock.ip != NULL:
        sampled_ip_keys(f, sock.ip, sock.ip_af)
    if sock.p != NULL:
        socket_keys(f, sock.p, sock.af)
    elif sock.proxy != NULL:
        socket_keys(f, sock.proxy, sock.proxy_af)
    if sock.app and src == 0 and not f.drop_only:
        # A transaction sample (sflow_application.txt): one sampled transaction, no packet. Its
        # Bytes are the request and response bodies (app_operation "exclude headers"), as sent,
        # not scaled (Sampling carries the rate, as for every sFlow sample); Packets stays 1, the
        # transaction. The flow ends at the receive time, as every sFlow sample's does, and
        # starts its duration (whole ms) before it, as an IPFIX duration with no clock does.
        f.bytes = sock.app_bytes
        f.present |= P_BYTES
        f.t_start_ms = f.t_end_ms - sock.app_us // 1000
    return missing


cdef void socket_keys(Flow* f, const uint8_t* p, uint8_t af) noexcept:
    """The flow's keys from an extended_socket_ipv4/ipv6 record, or an extended_proxy_socket one
    when the sample has none (`p`: its 20 or 44 bytes)."""
    # Host sFlow agents (hsflowd's JSON-fed applications, mod-sflow, nginx-sflow) sample
    # application transactions, with no packet header: the socket is all there is. A sampled
    # header or sampled IPv4/IPv6 record describes the packet itself and wins whatever the
    # records' order (their addresses are there: f.af); so does a header whose frame is not IP
    # (its EtherType stays, with no socket addresses grafted on).
    #
    # Which end is Src: the record has a local and a remote end and does not say which one opened
    # the connection (host-sflow's sflow.h labels 2100 "server socket", for its server-side
    # modules, but a client application sends it as well). flowscope maps local -> Src and
    # remote -> Dst, in the record's order, as sflowtool does (local_ip into its source,
    # remote_ip into its destination): Src is always the agent host's own end, whoever was the
    # client, so a consumer can rely on it, and enrichment sees the flow leave the agent's node.
    # For a server-side transaction sample that is the server as Src and the client as Dst.
    # A 0.0.0.0 / :: end (a socket bound to any address, or unconnected) is no address. Ports are
    # taken for TCP, UDP and SCTP only (as from sampled IPv4/IPv6); a protocol or port value
    # beyond its field's range is left out.
    cdef Py_ssize_t n = addr_len(af)
    cdef uint16_t etype = 0x0800 if af == 4 else 0x86DD
    cdef uint32_t proto, lport, rport
    if f.af or (f.present & P_ETYPE and f.etype != etype):
        return
    proto = be32(p)
    lport = be32(p + 4 + 2 * n)
    rport = be32(p + 8 + 2 * n)
    f.af = af
    memset(f.src, 0, 16)
    memset(f.dst, 0, 16)
    memcpy(f.src, p + 4, n)
    memcpy(f.dst, p + 4 + n, n)
    f.noaddr |= ((NOADDR_SRC if addr_zero(f.src, af) else 0)
                 | (NOADDR_DST if addr_zero(f.dst, af) else 0))
    # a dual-stack socket talking IPv4 (both ends ::ffff:a.b.c.d): IPv4 traffic (as netflow.pxi)
    f.etype = 0x0800 if af == 6 and v4mapped(f.src) and v4mapped(f.dst) else etype
    f.present |= P_ETYPE
    if proto > 0xFF:
        return
    f.proto = <uint8_t>proto
    f.present |= P_PROTO
    if has_ports(f.proto) and lport <= 0xFFFF and rport <= 0xFFFF:
        f.sport = <uint16_t>lport
        f.dport = <uint16_t>rport
        f.present |= P_SPORT | P_DPORT


cdef int64_t discarded_packet(ExporterState ex, FlowBatch b, Reader* s, int64_t recv_ms, uint64_t stream,
                              bint late) except -1:
    """sflow_drops.txt discarded_packet: one packet the agent saw dropped (not a sampled one, so
    no Sampling, and its size and count are published as PktDropBytes/PktDropPackets only: the
    agent reports drops up to a rate limit), with its reason and, like a flow sample, records
    describing the packet. Interfaces 0 are unknown."""
    cdef const uint8_t* p
    cdef Flow* f
    cdef uint32_t in_if, out_if, nrec
    if rd_left(s) < 32:
        raise_decode("bad_sample", s.pos, f"sFlow discarded packet sample of {rd_left(s)} bytes")
    # sequence, source_id (expanded: type, index), drops, input, output, reason, records
    p = rd_take(s, 32)
    in_if = be32(p + 16)
    out_if = be32(p + 20)
    nrec = be32(p + 28)
    # Its own counter beside the flow samples' of the same source: kind 0x100 | source type.
    ex.sample_drops(stream, 0x100 | be32(p + 4), be32(p + 8), be32(p + 12), late)
    f = batch_new_flow(b)
    f.packets = 1
    f.t_start_ms = recv_ms
    f.t_end_ms = recv_ms
    f.drop_reason = be32(p + 24)
    f.drop_only = 1    # an event, not sampled traffic: its packet and bytes go to PktDrop* only
    f.present = P_PACKETS | P_TSTART | P_TEND | P_DROP
    if in_if:
        f.in_if = in_if
        f.present |= P_INIF
    if out_if:
        f.out_if = out_if
        f.present |= P_OUTIF
    return flow_records(b, f, s, nrec)


# ---------------------------------------------------------------- counter samples

IF_COUNTER_FIELDS = (
    # (key, size) of counters_generic_interface, in wire order
    ("IfIndex", 4), ("IfType", 4), ("IfSpeed", 8), ("IfDirection", 4), ("IfStatus", 4),
    ("IfInOctets", 8), ("IfInUcastPkts", 4), ("IfInMulticastPkts", 4), ("IfInBroadcastPkts", 4),
    ("IfInDiscards", 4), ("IfInErrors", 4), ("IfInUnknownProtos", 4),
    ("IfOutOctets", 8), ("IfOutUcastPkts", 4), ("IfOutMulticastPkts", 4), ("IfOutBroadcastPkts", 4),
    ("IfOutDiscards", 4), ("IfOutErrors", 4), ("IfPromiscuousMode", 4),
)
ETH_COUNTER_FIELDS = (
    "Dot3StatsAlignmentErrors", "Dot3StatsFCSErrors", "Dot3StatsSingleCollisionFrames",
    "Dot3StatsMultipleCollisionFrames", "Dot3StatsSQETestErrors", "Dot3StatsDeferredTransmissions",
    "Dot3StatsLateCollisions", "Dot3StatsExcessiveCollisions", "Dot3StatsInternalMacTransmitErrors",
    "Dot3StatsCarrierSenseErrors", "Dot3StatsFrameTooLongs", "Dot3StatsInternalMacReceiveErrors",
    "Dot3StatsSymbolErrors",
)


cdef int counter_record(dict out, uint32_t ent, uint32_t fmt, Reader* rec) except -1:
    """Known records add their fields to `out`; anything else is kept as hex under "Unknown"."""
    cdef const uint8_t* p
    cdef Py_ssize_t off = 0, n = rd_left(rec)
    cdef uint32_t slen
    cdef Py_ssize_t pos = rec.pos
    if ent == 0 and fmt == 1 and n >= 88:
        p = rd_take(rec, 88)
        for key, size in IF_COUNTER_FIELDS:
            out[key] = be64(p + off) if size == 8 else be32(p + off)
            off += size
        return 0
    if ent == 0 and fmt == 2 and n >= 52:
        p = rd_take(rec, 52)
        for key in ETH_COUNTER_FIELDS:
            out[key] = be32(p + off)
            off += 4
        return 0
    if ent == 0 and fmt == 1004 and n >= 12:
        # of_port: datapath_id (u64), port_no (u32)
        p = rd_take(rec, 12)
        out["OfDatapathId"] = be64(p)
        out["OfPort"] = be32(p + 8)
        return 0
    if ent == 0 and fmt == 1005 and n >= 4:
        # port_name: string<255>
        slen = rd_u32(rec)
        if slen <= <uint32_t>rd_left(rec):
            p = rd_take(rec, slen)
            out["PortName"] = PyBytes_FromStringAndSize(<const char*>p, slen).rstrip(b"\0").decode("utf-8", "replace")
            return 0
        rec.pos = pos   # a bad name length: keep the record whole, as unknown
    p = rd_take(rec, n)
    entry = {"Format": fmt, "Hex": PyBytes_FromStringAndSize(<const char*>p, n).hex()}
    if ent:
        entry["Enterprise"] = ent
    out.setdefault("Unknown", []).append(entry)
    return 0


cdef int64_t counter_sample(FlowBatch b, Reader* s, bint expanded, str agent) except -1:
    """One counter sample into one dict of b.counters; returns how many of its records it
    counts and does not hold (as flow_records)."""
    cdef const uint8_t* p
    cdef uint32_t seq, stype, sindex, nrec, j, rfmt, rlen
    cdef int64_t missing = 0
    cdef Reader rec
    cdef dict out
    cdef list formats = []
    if rd_left(s) < (16 if expanded else 12):
        raise_decode("bad_sample", s.pos, f"sFlow counter sample of {rd_left(s)} bytes")
    if expanded:
        p = rd_take(s, 16)
        stype = be32(p + 4)
        sindex = be32(p + 8)
        nrec = be32(p + 12)
    else:
        p = rd_take(s, 12)
        stype = be32(p + 4) >> 24
        sindex = be32(p + 4) & 0x00FFFFFF
        nrec = be32(p + 8)
    seq = be32(p)
    out = {"RecordType": "counters", "FlowProtocol": "sflow5", "AgentIP": agent, "SequenceNum": seq,
           "SourceIdType": stype, "SourceIdIndex": sindex, "TimeReceived": int(b.recv_time),
           "Records": formats}
    for j in range(nrec):
        if rd_left(s) < 8:
            if rd_left(s) == 0:
                missing = nrec - j
                break
            raise_decode("bad_sample", s.pos, f"sFlow counter sample: record {j} of {nrec} cut at its header")
        p = rd_take(s, 8)
        rfmt = be32(p)
        rlen = be32(p + 4)
        if rlen > <uint32_t>rd_left(s):
            raise_decode("bad_length", s.pos - 4, f"sFlow counter record {rfmt & 0xFFF}: length {rlen} > {rd_left(s)}")
        rd_sub(s, &rec, rlen)
        skip_pad(s, rlen)
        formats.append(rfmt & 0xFFF if rfmt >> 12 == 0 else f"{rfmt >> 12}:{rfmt & 0xFFF}")
        counter_record(out, rfmt >> 12, rfmt & 0xFFF, &rec)
    if b._counters is None:
        b._counters = []
    b._counters.append(out)
    return missing


# ---------------------------------------------------------------- datagram

cdef uint64_t sflow_stream(const uint8_t* agent, Py_ssize_t n, uint32_t sub_agent) noexcept:
    """The sequence stream of an sFlow datagram: its agent address (n = 4 or 16 bytes, 0 when
    unknown) and sub-agent. The spec numbers datagrams per sub-agent within an agent, and a relay
    (samplicator) forwards many agents from one source address and port."""
    cdef uint64_t h = 1469598103934665603u     # FNV-1a 64 over the address
    cdef Py_ssize_t i
    if n == 4:
        return (<uint64_t>be32(agent) << 32) | sub_agent
    for i in range(n):
        h = (h ^ agent[i]) * 1099511628211u
    return ((h ^ (h >> 32)) << 32) | sub_agent


DEF SKIPPED_NAMED = 4     # distinct formats of skipped samples a datagram's log line names (the first)


cdef void log_skipped(Decoder dec, ExporterState ex, uint32_t seq, list skipped, uint32_t n):
    """Name the formats of the samples a datagram's decoding skipped (enterprise:format, e.g.
    Host sFlow's rtmetric 4300:1002), at INFO and at most once per exporter every 10 s (not an
    error: flowscope_samples_skipped_total counts every one)."""
    dec.log_limited("samples_skipped", ex.ip,
                    f"sFlow seq {seq}: {n} sample(s) skipped by length, of a format flowscope does not "
                    f"decode (enterprise:format): {', '.join([f'{fmt >> 12}:{fmt & 0xFFF}' for fmt in skipped])}",
                    LOG_INFO)


cdef void records_short(Decoder dec, ExporterState ex, uint32_t seq, uint32_t i, int64_t missing):
    """A sample that ends where a record would start, short of the record count it declared:
    the same disagreement as a datagram short of its sample count (decode_sflow), one level
    down. The records it holds are decoded and kept (its flow, or its counters); the sample is
    counted bad_count and logged as such, not failed, and the samples after it are read (its
    length, unlike its record count, is where the next one starts). A record cut inside (its
    header or its body past the sample's end) is still a failed sample."""
    ex.count_error("bad_count")
    dec.log_limited("bad_count", ex.ip, f"sFlow seq {seq}: sample {i} ends {missing} record(s) short of its record count")


cdef int decode_sflow(Decoder dec, ExporterState ex, FlowBatch b, Reader* r) except -1:
    cdef const uint8_t* p
    cdef uint32_t atype, nsamples, i, sfmt, slen, seq
    cdef uint64_t stream
    cdef bint late
    cdef Py_ssize_t committed
    cdef Reader s
    cdef int64_t recv_ms = <int64_t>(b.recv_time * 1000)
    cdef str agent = None
    cdef str extra = None
    cdef list skipped = None       # data_formats of the samples skipped (the first SKIPPED_NAMED)
    cdef uint32_t nskipped = 0
    cdef int64_t missing
    b.proto_kind = PROTO_SFLOW5
    # sFlow v5 header: version, agent address (type + v4/v6), sub-agent id, sequence, uptime, count.
    p = rd_take(r, 8)
    atype = be32(p + 4)
    if atype == 1:
        p = rd_take(r, 4)
        memset(b.agent, 0, 16)
        memcpy(b.agent, p, 4)
        b.agent_af = 4
    elif atype == 2:
        p = rd_take(r, 16)
        memcpy(b.agent, p, 16)
        b.agent_af = 6
    elif atype != 0:    # 0 = unknown: keep the UDP source as the agent
        raise_decode("bad_sample", 4, f"sFlow agent address type {atype}")
    p = rd_take(r, 16)
    seq = be32(p + 4)
    b.sequence = seq
    stream = sflow_stream(b.agent, 0 if atype == 0 else 4 if atype == 1 else 16, be32(p))
    ex.sequence(PROTO_SFLOW5, b.port, stream, seq, 1, be32(p + 8), <int64_t>(b.recv_time * 1000.0))
    # A datagram the check found behind its stream (reordered on the path, or a copy) left the
    # expected number where it was: its samples' drops counters are older than the latest seen
    # and must not read as an agent restart (sample_drops).
    late = ex.cur_seq.next != seq + 1
    nsamples = be32(p + 12)
    committed = b.n
    try:
        for i in range(nsamples):
            if rd_left(r) == 0:
                # The datagram ends where a sample would start: the header counts more samples
                # than it holds. As a NetFlow v5 count that disagrees with the length (decode_v5):
                # the samples there are decoded and the disagreement is counted as bad_count, not
                # a failed datagram. A sample cut inside (its header or its body past the end)
                # is a structure running past its container: truncated, as below.
                extra = f"sFlow seq {seq}: header count {nsamples} but {i} samples in the datagram"
                break
            if rd_left(r) < 8:
                raise_decode("truncated", r.pos, f"sFlow seq {seq}: sample {i} of {nsamples} cut at its header")
            p = rd_take(r, 8)
            sfmt = be32(p)
            slen = be32(p + 4)
            if slen > <uint32_t>rd_left(r):
                raise_decode("truncated", r.pos, f"sFlow seq {seq}: sample {i} of {slen} bytes, {rd_left(r)} left")
            rd_sub(r, &s, slen)
            skip_pad(r, slen)
            if sfmt == SF_FLOW_SAMPLE or sfmt == SF_FLOW_SAMPLE_EXP:
                missing = flow_sample(ex, b, &s, sfmt == SF_FLOW_SAMPLE_EXP, recv_ms, stream, late)
                committed = b.n
                if missing:
                    records_short(dec, ex, seq, i, missing)
            elif sfmt == SF_DISCARDED_PACKET:
                missing = discarded_packet(ex, b, &s, recv_ms, stream, late)
                committed = b.n
                if missing:
                    records_short(dec, ex, seq, i, missing)
            elif sfmt == SF_COUNTER_SAMPLE or sfmt == SF_COUNTER_SAMPLE_EXP:
                if not dec.keep_counters:
                    # not flows: skipped by length (nothing reads them), but counted, so that
                    # samples an agent sends unused do not pass silently
                    ex.proto_stats(ex.cur_protocol)["counter_samples_ignored"] += 1
                    continue
                if agent is None:
                    agent = b.agent_ip
                missing = counter_sample(b, &s, sfmt == SF_COUNTER_SAMPLE_EXP, agent)
                if missing:
                    records_short(dec, ex, seq, i, missing)
            else:
                # Another enterprise's sample (Host sFlow's rtmetric and rtflow, 4300:1002 and
                # 4300:1003) or a standard format flowscope does not know: skipped by its length,
                # as sflow_version_5.txt lets a receiver, and counted, so that what an agent
                # sends unread is seen (not an error: vendors may define sample formats). Its
                # enterprise:format is logged (log_skipped), so that what it is can be told.
                ex.proto_stats(ex.cur_protocol)["samples_skipped"] += 1
                nskipped += 1
                if skipped is None:
                    skipped = []
                if len(skipped) < SKIPPED_NAMED and sfmt not in skipped:
                    skipped.append(sfmt)
            # Bytes after a sample's records are skipped too: sflow_version_5.txt ("Data
            # Format") lets a structure be extended at its end, standard ones included, and
            # receivers "must always use the opaque length information" so that extended
            # structures cause no decoding errors
    except BaseException:
        # A sample that failed half-way is not a flow; the samples before it stay.
        while b.n > committed:
            batch_drop_last(b)
        if skipped is not None:
            log_skipped(dec, ex, seq, skipped, nskipped)
        raise
    if skipped is not None:
        log_skipped(dec, ex, seq, skipped, nskipped)
    if rd_left(r) and not extra:
        extra = f"sFlow seq {seq}: {rd_left(r)} bytes after the {nsamples} samples the header counts"
    if extra:
        # The header's counts are what the agent declared (Wireshark reads no further): what
        # lies beyond them is not decoded, and counted, as a v5 count that disagrees is; so is
        # a count the datagram falls short of.
        ex.count_error("bad_count")
        dec.log_limited("bad_count", ex.ip, extra)
    return 0
