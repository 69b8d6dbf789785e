/*
 * flowscope load generator: OVS-like IPFIX, NetFlow v5, NetFlow v9 and sFlow v5 over UDP,
 * sent with sendmmsg(2) at a target rate or at full speed.
 *
 * Why C: a Python sender tops out far below what the collector must absorb; one core running
 * this reaches ~250k datagrams/s on loopback (loopback delivery is paid on the sender's core).
 *
 * How it stays fast: a pool of fully encoded data datagram bodies is built once at start; each
 * send copies one body and patches only what must change per datagram (header clocks and
 * sequence numbers, uptime-relative record times, sFlow per-sample sequences and pools).
 *
 * Correctness contracts (what a collector checks):
 *   IPFIX (RFC 7011 s3.1): sequence = data records sent before this message in this
 *     observation domain (templates do not count); export time = now (s).
 *   NetFlow v9 (RFC 3954 s5.1): sequence = export packets sent before this one (all packets);
 *     count = records (template + data) in this packet.
 *   NetFlow v5: flow_sequence = flows sent before this datagram.
 *   sFlow v5: datagram sequence per agent/sub-agent; per-sample sequence per source id;
 *     sample_pool grows with the sampling rate.
 *
 * Output on exit: one JSON line on stdout with datagrams, flows and elapsed time.
 * Build: python benchmarks/build.py (gcc -O2 into benchmarks/bin/loadgen).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <netdb.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

enum proto { P_IPFIX, P_V5, P_V9, P_SFLOW };

#define MAX_DGRAM 9000
#define MAX_BATCH 64
#define POOL 512            /* distinct data datagram bodies */
#define MAX_RECS 64
#define SFLOW_PORTS 16      /* distinct sFlow data sources (ifIndex) per agent */
#define BASE_UPTIME_MS 3600000u  /* pretend the switch has been up an hour */

/* ---- byte writers (network order, unaligned-safe) ---- */
static inline void w8(uint8_t *p, uint8_t v) { p[0] = v; }
static inline void w16(uint8_t *p, uint16_t v) { p[0] = v >> 8; p[1] = (uint8_t)v; }
static inline void w32(uint8_t *p, uint32_t v) {
    p[0] = v >> 24; p[1] = v >> 16; p[2] = v >> 8; p[3] = (uint8_t)v;
}
static inline void w64(uint8_t *p, uint64_t v) { w32(p, (uint32_t)(v >> 32)); w32(p + 4, (uint32_t)v); }

/* ---- deterministic PRNG (xorshift64*) ---- */
static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static inline uint64_t rnd(void) {
    rng_state ^= rng_state >> 12; rng_state ^= rng_state << 25; rng_state ^= rng_state >> 27;
    return rng_state * 2685821657736338717ull;
}
static inline uint32_t rndr(uint32_t n) { return (uint32_t)(rnd() % n); }

/* ---- clocks ---- */
static double mono_now(void) {
    struct timespec ts; clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}
static void real_now(uint32_t *sec, uint32_t *nsec) {
    struct timespec ts; clock_gettime(CLOCK_REALTIME, &ts);
    *sec = (uint32_t)ts.tv_sec; *nsec = (uint32_t)ts.tv_nsec;
}
static void sleep_until(double t) {
    double d = t - mono_now();
    if (d <= 0) return;
    struct timespec ts; ts.tv_sec = (time_t)d; ts.tv_nsec = (long)((d - ts.tv_sec) * 1e9);
    nanosleep(&ts, NULL);
}

/* ---- the simulated cluster: pods in 10.128.0.0/14 ---- */
static uint32_t *pods; static int npods = 3000;
static const uint16_t server_ports[] = {80, 443, 8080, 8443, 5432, 6379, 9092, 53, 3306, 2379};

struct flow {
    uint32_t src, dst; uint16_t sport, dport; uint8_t proto, tos;
    uint64_t pkts, octets; uint32_t start_ago_ms, end_ago_ms; /* how long before export */
    uint32_t in_if, out_if; uint8_t dir; uint16_t vlan;
    uint64_t tcp[6];  /* syn fin rst psh ack urg (IEs 218..223) */
    uint8_t tcp_flags;
};

static void make_flow(struct flow *f) {
    uint32_t a = pods[rndr(npods)], b = pods[rndr(npods)];
    int client_first = rndr(2);
    uint16_t eph = 32768 + rndr(28000), svc = server_ports[rndr(sizeof server_ports / 2)];
    f->src = client_first ? a : b; f->dst = client_first ? b : a;
    f->sport = client_first ? eph : svc; f->dport = client_first ? svc : eph;
    f->proto = (svc == 53 || rndr(10) == 0) ? 17 : 6;
    f->tos = rndr(8) == 0 ? 0x28 : 0;
    f->pkts = 1 + rndr(rndr(4) == 0 ? 5000 : 40);
    f->octets = f->pkts * (60 + rndr(1440));
    f->end_ago_ms = rndr(2000);
    f->start_ago_ms = f->end_ago_ms + rndr(60000);
    f->in_if = 3 + rndr(120); f->out_if = 3 + rndr(120);
    f->dir = rndr(2); f->vlan = 0;
    memset(f->tcp, 0, sizeof f->tcp); f->tcp_flags = 0;
    if (f->proto == 6) {
        uint64_t syn = rndr(2), fin = rndr(3) == 0, rst = rndr(50) == 0;
        f->tcp[0] = syn; f->tcp[1] = fin; f->tcp[2] = rst;  /* SYN FIN RST (IEs 218-220) */
        f->tcp[3] = f->pkts / 2;                              /* PSH (221) */
        f->tcp[4] = f->pkts > 1 ? f->pkts - 1 : 1;            /* ACK (222) */
        f->tcp[5] = 0;                                        /* URG (223) */
        f->tcp_flags = 0x10 | (fin ? 0x01 : 0) | (syn ? 0x02 : 0) | (rst ? 0x04 : 0) | (f->tcp[3] ? 0x08 : 0);
    }
}
static void mac_of(uint8_t *m, uint32_t ip) {   /* OVN-Kubernetes pod MACs: 0a:58:<ip> */
    m[0] = 0x0a; m[1] = 0x58; w32(m + 2, ip);
}

/* ---- IPFIX: OVS-like templates (ingress 256, egress 257), observation domain 0 ---- */
/* Field list mirrors what OVS exports for IPv4 TCP/UDP without tunnels (ofproto-dpif-ipfix):
 * L2, L3, L4, interfaces with varlen interfaceName (twice in egress), 158/159 deltas,
 * packet/octet deltas, flowEndReason, tcp*TotalCount (218-223) and flowDirection. */
struct ie { uint16_t id, len; };
#define VARLEN 65535
static const struct ie ipfix_in[] = {
    {56, 6}, {80, 6}, {256, 2}, {243, 2}, {60, 1}, {192, 1}, {4, 1}, {5, 1}, {8, 4}, {12, 4},
    {7, 2}, {11, 2}, {10, 4}, {82, VARLEN}, {158, 4}, {159, 4}, {2, 8}, {1, 8}, {136, 1},
    {218, 8}, {219, 8}, {220, 8}, {221, 8}, {222, 8}, {223, 8}, {61, 1},
};
static const struct ie ipfix_eg[] = {
    {56, 6}, {80, 6}, {256, 2}, {243, 2}, {60, 1}, {192, 1}, {4, 1}, {5, 1}, {8, 4}, {12, 4},
    {7, 2}, {11, 2}, {10, 4}, {82, VARLEN}, {14, 4}, {82, VARLEN}, {158, 4}, {159, 4}, {2, 8},
    {1, 8}, {136, 1}, {218, 8}, {219, 8}, {220, 8}, {221, 8}, {222, 8}, {223, 8}, {61, 1},
};
#define NELEM(a) (sizeof(a) / sizeof((a)[0]))

static int no_ifname = 0;  /* --no-ifname: drop varlen interfaceName (some collectors mishandle it) */

static size_t ipfix_template_set(uint8_t *p) {
    size_t o = 4;
    const struct ie *lists[2] = {ipfix_in, ipfix_eg};
    size_t n[2] = {NELEM(ipfix_in), NELEM(ipfix_eg)};
    for (int t = 0; t < 2; t++) {
        size_t cnt = o + 2; w16(p + o, 256 + t); o += 4; uint16_t k = 0;
        for (size_t i = 0; i < n[t]; i++) {
            if (no_ifname && lists[t][i].id == 82) continue;
            w16(p + o, lists[t][i].id); w16(p + o + 2, lists[t][i].len); o += 4; k++;
        }
        w16(p + cnt, k);
    }
    w16(p, 2); w16(p + 2, (uint16_t)o);
    return o;
}

static size_t put_ifname(uint8_t *p, uint32_t ifindex) {
    /* OVN-Kubernetes pod ports are named after the pod's sandbox id: 15 hex chars */
    char name[16]; snprintf(name, sizeof name, "%08x%07x", ifindex * 2654435761u, ifindex);
    p[0] = 15; memcpy(p + 1, name, 15);
    return 16;
}

static size_t ipfix_record(uint8_t *p, const struct flow *f, int egress) {
    size_t o = 0;
    mac_of(p + o, f->src); o += 6; mac_of(p + o, f->dst); o += 6;
    w16(p + o, 0x0800); o += 2; w16(p + o, f->vlan); o += 2;
    w8(p + o++, 4); w8(p + o++, 64); w8(p + o++, f->proto); w8(p + o++, f->tos);
    w32(p + o, f->src); o += 4; w32(p + o, f->dst); o += 4;
    w16(p + o, f->sport); o += 2; w16(p + o, f->dport); o += 2;
    w32(p + o, f->in_if); o += 4; if (!no_ifname) o += put_ifname(p + o, f->in_if);
    if (egress) { w32(p + o, f->out_if); o += 4; if (!no_ifname) o += put_ifname(p + o, f->out_if); }
    w32(p + o, f->start_ago_ms * 1000u); o += 4; w32(p + o, f->end_ago_ms * 1000u); o += 4;
    w64(p + o, f->pkts); o += 8; w64(p + o, f->octets); o += 8;
    w8(p + o++, 2);  /* flowEndReason: active timeout */
    for (int i = 0; i < 6; i++) { w64(p + o, f->tcp[i]); o += 8; }
    w8(p + o++, egress ? 1 : 0);
    return o;
}

/* ---- NetFlow v9 template 256 ---- */
static const struct ie v9_fields[] = {
    {1, 8}, {2, 8}, {4, 1}, {5, 1}, {6, 1}, {7, 2}, {8, 4}, {10, 4}, {11, 2}, {12, 4},
    {14, 4}, {21, 4}, {22, 4}, {61, 1}, {56, 6}, {80, 6}, {58, 2},
};
#define V9_REC 62
#define V9_OFF_LAST 39
#define V9_OFF_FIRST 43

static size_t v9_template_flowset(uint8_t *p) {
    size_t o = 4;
    w16(p + o, 256); w16(p + o + 2, NELEM(v9_fields)); o += 4;
    for (size_t i = 0; i < NELEM(v9_fields); i++) { w16(p + o, v9_fields[i].id); w16(p + o + 2, v9_fields[i].len); o += 4; }
    w16(p, 0); w16(p + 2, (uint16_t)o);
    return o;
}
static void v9_record(uint8_t *p, const struct flow *f) {
    size_t o = 0;
    w64(p + o, f->octets); o += 8; w64(p + o, f->pkts); o += 8;
    w8(p + o++, f->proto); w8(p + o++, f->tos); w8(p + o++, f->tcp_flags);
    w16(p + o, f->sport); o += 2; w32(p + o, f->src); o += 4; w32(p + o, f->in_if); o += 4;
    w16(p + o, f->dport); o += 2; w32(p + o, f->dst); o += 4; w32(p + o, f->out_if); o += 4;
    o += 8;  /* LAST_SWITCHED / FIRST_SWITCHED: patched per datagram (uptime-relative) */
    w8(p + o++, f->dir); mac_of(p + o, f->src); o += 6; mac_of(p + o, f->dst); o += 6;
    w16(p + o, f->vlan); o += 2;
}

/* ---- sFlow v5 ---- */
#define SF_HDR_LEN 54   /* Ethernet 14 + IPv4 20 + TCP 20 */
#define SF_HDR_PAD 56
/* flow sample: 8 (format,len) + 32 (seq..nrec) + raw header record (8 + 16 + 56) + ext switch (8 + 16) */
#define SF_SAMPLE_LEN (8 + 32 + 8 + 16 + SF_HDR_PAD + 8 + 16)
#define SF_COUNTER_LEN (8 + 12 + 8 + 88)
#define SAMPLING_RATE 400

static uint16_t ip_csum(const uint8_t *h, int n) {
    uint32_t s = 0;
    for (int i = 0; i < n; i += 2) s += (h[i] << 8) | h[i + 1];
    while (s >> 16) s = (s & 0xffff) + (s >> 16);
    return (uint16_t)~s;
}

static void sflow_flow_sample(uint8_t *p, const struct flow *f, uint32_t ifidx) {
    size_t o = 0;
    w32(p, 1); w32(p + 4, SF_SAMPLE_LEN - 8); o = 8;
    o += 4;                       /* sequence: patched */
    w32(p + o, ifidx); o += 4;    /* source id: type 0, index = ifIndex */
    w32(p + o, SAMPLING_RATE); o += 4;
    o += 4;                       /* sample pool: patched */
    w32(p + o, 0); o += 4;        /* drops */
    w32(p + o, f->dir ? f->out_if : ifidx); o += 4;
    w32(p + o, f->dir ? ifidx : f->out_if); o += 4;
    w32(p + o, 2); o += 4;        /* records */
    /* raw packet header */
    uint32_t pktlen = 60 + rndr(1440);
    w32(p + o, 1); w32(p + o + 4, 16 + SF_HDR_PAD); o += 8;
    w32(p + o, 1); w32(p + o + 4, pktlen + 4); w32(p + o + 8, 4); w32(p + o + 12, SF_HDR_LEN); o += 16;
    uint8_t *h = p + o;
    memset(h, 0, SF_HDR_PAD);
    mac_of(h, f->dst); mac_of(h + 6, f->src); w16(h + 12, 0x0800);
    uint8_t *ip = h + 14;
    ip[0] = 0x45; ip[1] = f->tos; w16(ip + 2, (uint16_t)(pktlen - 14)); w16(ip + 4, (uint16_t)rnd());
    w16(ip + 6, 0x4000); ip[8] = 64; ip[9] = 6; w32(ip + 12, f->src); w32(ip + 16, f->dst);
    w16(ip + 10, ip_csum(ip, 20));
    uint8_t *tcp = ip + 20;
    w16(tcp, f->sport); w16(tcp + 2, f->dport); w32(tcp + 4, (uint32_t)rnd()); w32(tcp + 8, (uint32_t)rnd());
    /* one packet's flags, as a sampled packet has: mostly ACK or PSH|ACK, some handshakes */
    static const uint8_t pkt_flags[] = {0x10, 0x10, 0x10, 0x18, 0x18, 0x02, 0x12, 0x11, 0x04};
    tcp[12] = 0x50; tcp[13] = pkt_flags[rndr(sizeof pkt_flags)]; w16(tcp + 14, 502);
    o += SF_HDR_PAD;
    /* extended switch (1001): vlans and priorities */
    w32(p + o, 1001); w32(p + o + 4, 16); o += 8;
    w32(p + o, 0); w32(p + o + 4, 0); w32(p + o + 8, 0); w32(p + o + 12, 0); o += 16;
}

static void sflow_counter_sample(uint8_t *p, uint32_t seq, uint32_t ifidx, uint64_t scale) {
    w32(p, 2); w32(p + 4, SF_COUNTER_LEN - 8);
    w32(p + 8, seq); w32(p + 12, ifidx); w32(p + 16, 1);
    uint8_t *r = p + 20;
    w32(r, 1); w32(r + 4, 88); r += 8;
    w32(r, ifidx); w32(r + 4, 6); w64(r + 8, 10000000000ull); w32(r + 16, 1); w32(r + 20, 3);
    w64(r + 24, scale * 1500); w32(r + 32, (uint32_t)scale); w32(r + 36, 0); w32(r + 40, 0);
    w32(r + 44, 0); w32(r + 48, 0); w32(r + 52, 0);
    w64(r + 56, scale * 1400); w32(r + 64, (uint32_t)scale); w32(r + 68, 0); w32(r + 72, 0);
    w32(r + 76, 0); w32(r + 80, 0); w32(r + 84, 0);
}

/* ---- pool of data datagram bodies ---- */
struct body {
    uint8_t *buf; uint16_t len; uint16_t nrec;
    uint32_t ago[MAX_RECS][2];      /* v5/v9: start/end ms before export (patched to uptime) */
    uint8_t srcidx[MAX_RECS];       /* sFlow: which data source each sample belongs to */
};
static struct body pool[POOL];

struct exporter {
    int fd; uint32_t seq; uint32_t sf_seq[SFLOW_PORTS]; uint32_t sf_pool[SFLOW_PORTS];
    uint32_t sf_cseq; uint32_t sf_csrc[SFLOW_PORTS]; double last_tmpl; uint64_t data_dgrams; uint32_t agent;
    uint32_t id;  /* exporter index: v9 Source ID, v5 engine_id, sFlow sub-agent (streams stay apart) */
    uint8_t agent6[16];  /* sFlow agent address when the exporters send over IPv6 */
};

/* ---- options ---- */
static enum proto proto = P_IPFIX;
static int recs = -1, nexp = 1;
static double rate = 0, dps = 0, duration = 0, tmpl_interval = 10.0;
static uint64_t count = 0;
static volatile sig_atomic_t stop_flag = 0;
static void on_sig(int s) { (void)s; stop_flag = 1; }

static int sf_v6 = 0;  /* sFlow agent addresses are IPv6 (address type 2: a 40-byte header) */

static size_t hdr_len(void) {
    switch (proto) { case P_IPFIX: return 16; case P_V5: return 24; case P_V9: return 20; default: return sf_v6 ? 40 : 28; }
}

static void build_pool(void) {
    for (int b = 0; b < POOL; b++) {
        struct body *bd = &pool[b];
        bd->buf = malloc(MAX_DGRAM); bd->nrec = (uint16_t)recs;
        uint8_t *p = bd->buf; size_t o = 0;
        struct flow f;
        if (proto == P_IPFIX) {
            /* two data sets: ingress then egress records */
            int n_in = (recs + 1) / 2, n_eg = recs - n_in;
            for (int t = 0; t < 2; t++) {
                int n = t ? n_eg : n_in;
                if (!n) continue;
                size_t s = o; o += 4;
                for (int i = 0; i < n; i++) { make_flow(&f); o += ipfix_record(p + o, &f, t); }
                w16(p + s, 256 + t); w16(p + s + 2, (uint16_t)(o - s));
            }
        } else if (proto == P_V5) {
            for (int i = 0; i < recs; i++) {
                make_flow(&f); uint8_t *r = p + o;
                memset(r, 0, 48);
                w32(r, f.src); w32(r + 4, f.dst); w32(r + 8, 0);
                w16(r + 12, (uint16_t)(1 + f.in_if % 64)); w16(r + 14, (uint16_t)(1 + f.out_if % 64));  /* OpenFlow ports */
                w32(r + 16, (uint32_t)f.pkts); w32(r + 20, (uint32_t)f.octets);
                w16(r + 32, f.sport); w16(r + 34, f.dport); r[37] = f.tcp_flags; r[38] = f.proto; r[39] = f.tos;
                bd->ago[i][0] = f.start_ago_ms; bd->ago[i][1] = f.end_ago_ms;
                o += 48;
            }
        } else if (proto == P_V9) {
            size_t s = o; o += 4;
            for (int i = 0; i < recs; i++) {
                make_flow(&f); v9_record(p + o, &f);
                bd->ago[i][0] = f.start_ago_ms; bd->ago[i][1] = f.end_ago_ms; o += V9_REC;
            }
            while ((o - s) % 4) p[o++] = 0;  /* RFC 3954: pad flowsets to 32 bits */
            w16(p + s, 256); w16(p + s + 2, (uint16_t)(o - s));
        } else {
            for (int i = 0; i < recs; i++) {
                /* the sampled headers are Ethernet/IPv4/TCP: only TCP flows are drawn */
                do { make_flow(&f); } while (f.proto != 6);
                uint32_t src = rndr(SFLOW_PORTS);
                bd->srcidx[i] = (uint8_t)src;
                sflow_flow_sample(p + o, &f, 3 + src); o += SF_SAMPLE_LEN;
            }
        }
        bd->len = (uint16_t)o;
        if (hdr_len() + o + SF_COUNTER_LEN > MAX_DGRAM) { fprintf(stderr, "too many records per datagram\n"); exit(2); }
    }
}

static uint32_t uptime_ms(double t0) { return BASE_UPTIME_MS + (uint32_t)((mono_now() - t0) * 1000.0); }

/* Encode one template datagram into p; returns its length. */
static size_t make_template(uint8_t *p, struct exporter *e, double t0) {
    uint32_t sec, nsec; real_now(&sec, &nsec);
    size_t o;
    if (proto == P_IPFIX) {
        o = 16 + ipfix_template_set(p + 16);
        w16(p, 10); w16(p + 2, (uint16_t)o); w32(p + 4, sec); w32(p + 8, e->seq); w32(p + 12, 0);
    } else {  /* v9 */
        o = 20 + v9_template_flowset(p + 20);
        w16(p, 9); w16(p + 2, 1); w32(p + 4, uptime_ms(t0)); w32(p + 8, sec); w32(p + 12, e->seq); w32(p + 16, e->id);
        e->seq++;
    }
    return o;
}

/* Encode one data datagram from the pool into p; returns its length; *counters set when a
 * counter sample was appended. */
static size_t make_data(uint8_t *p, struct exporter *e, double t0, int *counters) {
    struct body *bd = &pool[rndr(POOL)];
    size_t h = hdr_len(), o = h + bd->len;
    uint32_t sec, nsec; real_now(&sec, &nsec);
    memcpy(p + h, bd->buf, bd->len);
    *counters = 0;
    switch (proto) {
    case P_IPFIX:
        w16(p, 10); w16(p + 2, (uint16_t)o); w32(p + 4, sec); w32(p + 8, e->seq); w32(p + 12, 0);
        e->seq += bd->nrec;
        break;
    case P_V5: {
        uint32_t up = uptime_ms(t0);
        w16(p, 5); w16(p + 2, bd->nrec); w32(p + 4, up); w32(p + 8, sec); w32(p + 12, nsec);
        w32(p + 16, e->seq); p[20] = 0; p[21] = (uint8_t)e->id; w16(p + 22, 0);
        for (int i = 0; i < bd->nrec; i++) {
            uint8_t *r = p + h + 48 * i;
            w32(r + 24, up - bd->ago[i][0]); w32(r + 28, up - bd->ago[i][1]);
        }
        e->seq += bd->nrec;
        break;
    }
    case P_V9: {
        uint32_t up = uptime_ms(t0);
        w16(p, 9); w16(p + 2, bd->nrec); w32(p + 4, up); w32(p + 8, sec); w32(p + 12, e->seq); w32(p + 16, e->id);
        for (int i = 0; i < bd->nrec; i++) {
            uint8_t *r = p + h + 4 + V9_REC * i;
            w32(r + V9_OFF_LAST, up - bd->ago[i][1]); w32(r + V9_OFF_FIRST, up - bd->ago[i][0]);
        }
        e->seq++;
        break;
    }
    case P_SFLOW: {
        int nsamp = bd->nrec;
        for (int i = 0; i < bd->nrec; i++) {
            uint8_t *s = p + h + SF_SAMPLE_LEN * i; int k = bd->srcidx[i];
            w32(s + 8, ++e->sf_seq[k]);
            e->sf_pool[k] += SAMPLING_RATE - 50 + rndr(100);
            w32(s + 20, e->sf_pool[k]);
        }
        if (e->data_dgrams % 100 == 0) {  /* an occasional counter sample */
            /* counter samples visit the data sources in turn; sequence numbers are per source */
            int k = e->sf_cseq++ % SFLOW_PORTS;
            sflow_counter_sample(p + o, ++e->sf_csrc[k], 3 + k, e->data_dgrams * 10);
            o += SF_COUNTER_LEN; nsamp++; *counters = 1;
        }
        size_t a = 8;
        w32(p, 5);
        if (sf_v6) { w32(p + 4, 2); memcpy(p + 8, e->agent6, 16); a += 16; }
        else { w32(p + 4, 1); w32(p + 8, e->agent); a += 4; }
        w32(p + a, e->id); w32(p + a + 4, ++e->seq); w32(p + a + 8, uptime_ms(t0)); w32(p + a + 12, nsamp);
        break;
    }
    }
    e->data_dgrams++;
    return o;
}

static int parse_hostport(const char *s, struct sockaddr_storage *ss, socklen_t *sl) {
    char host[256]; const char *port;
    if (s[0] == '[') {
        const char *e = strchr(s, ']');
        if (!e || e[1] != ':') return -1;
        snprintf(host, sizeof host, "%.*s", (int)(e - s - 1), s + 1); port = e + 2;
    } else {
        const char *c = strrchr(s, ':');
        if (!c) return -1;
        snprintf(host, sizeof host, "%.*s", (int)(c - s), s); port = c + 1;
    }
    struct addrinfo hints = {0}, *res;
    hints.ai_socktype = SOCK_DGRAM; hints.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV;
    if (getaddrinfo(host, port, &hints, &res) != 0) return -1;
    memcpy(ss, res->ai_addr, res->ai_addrlen); *sl = res->ai_addrlen;
    freeaddrinfo(res);
    return 0;
}

static void usage(void) {
    fprintf(stderr,
        "usage: loadgen --proto ipfix|v5|v9|sflow --to HOST:PORT|[V6]:PORT\n"
        "  [--rate FLOWS_PER_S | --dps DATAGRAMS_PER_S] (default: full speed)\n"
        "  [--count N data datagrams | --duration S] (default: until SIGINT/SIGTERM)\n"
        "  [--exporters K] [--src ADDR[,ADDR...]] [--records R] [--template-interval S]\n"
        "  [--pods N] [--seed N] [--sndbuf BYTES] [--no-ifname] [--print-pods]\n");
    exit(2);
}

int main(int argc, char **argv) {
    const char *to = NULL, *srcs = NULL;
    int sndbuf = 4 << 20;
    static struct option opts[] = {
        {"proto", 1, 0, 'p'}, {"to", 1, 0, 't'}, {"rate", 1, 0, 'r'}, {"dps", 1, 0, 'd'},
        {"count", 1, 0, 'c'}, {"duration", 1, 0, 'D'}, {"exporters", 1, 0, 'e'}, {"src", 1, 0, 's'},
        {"records", 1, 0, 'R'}, {"template-interval", 1, 0, 'T'}, {"pods", 1, 0, 'P'},
        {"seed", 1, 0, 'S'}, {"sndbuf", 1, 0, 'b'}, {"no-ifname", 0, 0, 'N'}, {"print-pods", 0, 0, 'L'},
        {"help", 0, 0, 'h'}, {0, 0, 0, 0}};
    int print_pods = 0;
    int c;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'p':
            if (!strcmp(optarg, "ipfix")) proto = P_IPFIX;
            else if (!strcmp(optarg, "v5")) proto = P_V5;
            else if (!strcmp(optarg, "v9")) proto = P_V9;
            else if (!strcmp(optarg, "sflow")) proto = P_SFLOW;
            else usage();
            break;
        case 't': to = optarg; break;
        case 'r': rate = atof(optarg); break;
        case 'd': dps = atof(optarg); break;
        case 'c': count = strtoull(optarg, NULL, 10); break;
        case 'D': duration = atof(optarg); break;
        case 'e': nexp = atoi(optarg); break;
        case 's': srcs = optarg; break;
        case 'R': recs = atoi(optarg); break;
        case 'T': tmpl_interval = atof(optarg); break;
        case 'P': npods = atoi(optarg); break;
        case 'S': rng_state = strtoull(optarg, NULL, 10) * 0x9E3779B97F4A7C15ull + 1; break;
        case 'b': sndbuf = atoi(optarg); break;
        case 'N': no_ifname = 1; break;
        case 'L': print_pods = 1; break;
        default: usage();
        }
    }
    if ((!to && !print_pods) || nexp < 1 || npods < 2) usage();
    if (recs < 0) recs = proto == P_V5 ? 30 : proto == P_SFLOW ? 8 : 25;
    if (recs < 1 || recs > MAX_RECS || (proto == P_V5 && recs > 30)) { fprintf(stderr, "bad --records\n"); return 2; }

    struct sockaddr_storage dst; socklen_t dstlen = 0;
    if (!print_pods && parse_hostport(to, &dst, &dstlen) < 0) { fprintf(stderr, "bad --to %s\n", to); return 2; }

    /* pods: a few thousand addresses in 10.128.0.0/14 (OVN-Kubernetes default cluster network),
     * grouped in /23 node subnets as the pod CIDR allocator does */
    pods = malloc(sizeof(uint32_t) * npods);
    for (int i = 0; i < npods; i++) {
        uint32_t node = rndr(512), host = 3 + rndr(500);
        pods[i] = (10u << 24) | (128u << 16) | (node << 9) | host;
    }
    if (print_pods) {  /* the addresses a run with the same --pods/--seed uses (for enrichment) */
        for (int i = 0; i < npods; i++)
            printf("%u.%u.%u.%u\n", pods[i] >> 24, (pods[i] >> 16) & 255, (pods[i] >> 8) & 255, pods[i] & 255);
        return 0;
    }
    build_pool();

    /* exporters: one socket each; distinct source ports, or bound source addresses */
    /* --src: as many addresses as given (exporters take them in turn) */
    char **srclist = NULL; int nsrc = 0;
    if (srcs) {
        char *dup = strdup(srcs), *tok, *sv;
        srclist = calloc(strlen(srcs) / 2 + 2, sizeof *srclist);   /* at most one per two characters */
        if (!dup || !srclist) { perror("--src"); return 1; }
        for (tok = strtok_r(dup, ",", &sv); tok; tok = strtok_r(NULL, ",", &sv)) srclist[nsrc++] = tok;
    }
    sf_v6 = dst.ss_family == AF_INET6;
    struct exporter *ex = calloc(nexp, sizeof *ex);
    for (int k = 0; k < nexp; k++) {
        int fd = socket(dst.ss_family, SOCK_DGRAM, 0);
        if (fd < 0) { perror("socket"); return 1; }
        setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof sndbuf);
        ex[k].agent = ntohl(inet_addr("127.0.0.1"));  /* sFlow agent: the exporter address */
        if (nsrc) {
            struct sockaddr_storage sa; memset(&sa, 0, sizeof sa);
            const char *a = srclist[k % nsrc];
            if (dst.ss_family == AF_INET) {
                struct sockaddr_in *s4 = (struct sockaddr_in *)&sa; s4->sin_family = AF_INET;
                if (inet_pton(AF_INET, a, &s4->sin_addr) != 1) { fprintf(stderr, "bad --src %s\n", a); return 2; }
                ex[k].agent = ntohl(s4->sin_addr.s_addr);
            } else {
                struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&sa; s6->sin6_family = AF_INET6;
                if (inet_pton(AF_INET6, a, &s6->sin6_addr) != 1) { fprintf(stderr, "bad --src %s\n", a); return 2; }
                memcpy(ex[k].agent6, &s6->sin6_addr, 16);
            }
            if (bind(fd, (struct sockaddr *)&sa, dst.ss_family == AF_INET ? sizeof(struct sockaddr_in) : sizeof(struct sockaddr_in6)) < 0) {
                perror("bind"); return 1;
            }
        }
        if (connect(fd, (struct sockaddr *)&dst, dstlen) < 0) { perror("connect"); return 1; }
        if (!nsrc && dst.ss_family == AF_INET) {  /* sFlow agent address: the exporter's own address */
            struct sockaddr_in me; socklen_t ml = sizeof me;
            getsockname(fd, (struct sockaddr *)&me, &ml); ex[k].agent = ntohl(me.sin_addr.s_addr);
        } else if (!nsrc) {
            struct sockaddr_in6 me; socklen_t ml = sizeof me;
            getsockname(fd, (struct sockaddr *)&me, &ml); memcpy(ex[k].agent6, &me.sin6_addr, 16);
        }
        ex[k].fd = fd; ex[k].last_tmpl = -1e9;
        /* exporters count independently from different starting points, as real ones do;
         * this also keeps (sequence, record) pairs unique across exporters that share an
         * address, which collectors aggregating on the sequence number rely on */
        ex[k].seq = (uint32_t)((uint64_t)k * 0xFFFFFFFFu / (uint64_t)nexp);
        ex[k].id = (uint32_t)k;
        for (int i = 0; i < SFLOW_PORTS; i++) ex[k].sf_pool[i] = rndr(1000000);
    }

    signal(SIGINT, on_sig); signal(SIGTERM, on_sig);

    static uint8_t bufs[MAX_BATCH][MAX_DGRAM];
    struct mmsghdr msgs[MAX_BATCH]; struct iovec iov[MAX_BATCH];
    memset(msgs, 0, sizeof msgs);
    for (int j = 0; j < MAX_BATCH; j++) {
        iov[j].iov_base = bufs[j]; msgs[j].msg_hdr.msg_iov = &iov[j]; msgs[j].msg_hdr.msg_iovlen = 1;
    }

    double target_dps = dps > 0 ? dps : rate > 0 ? rate / recs : 0;
    int batch = MAX_BATCH;
    if (target_dps > 0) {  /* keep batches under ~1 ms of traffic so pacing stays smooth */
        batch = (int)(target_dps / 1000.0);
        if (batch < 1) batch = 1;
        if (batch > MAX_BATCH) batch = MAX_BATCH;
    }
    if (count && nexp > 1 && (uint64_t)batch * nexp > count) {  /* spread short runs over every exporter */
        batch = (int)(count / nexp);
        if (batch < 1) batch = 1;
    }
    uint64_t data_dg = 0, tmpl_dg = 0, flows = 0, csamples = 0, bytes = 0, errors = 0, lost_sends = 0;
    double t0 = mono_now(), tend = duration > 0 ? t0 + duration : 0, tlast = t0;
    uint64_t bi = 0;
    while (!stop_flag) {
        double now = mono_now();
        if (tend && now >= tend) break;
        if (count && data_dg >= count) break;
        struct exporter *e = &ex[bi++ % nexp];
        int n = 0; uint64_t batch_data = 0;
        uint8_t kind[MAX_BATCH];  /* 0 template, 1 data, 2 data + counter sample */
        if (target_dps > 0) {  /* pace before building, so export times and uptimes are the send's */
            sleep_until(t0 + (double)data_dg / target_dps);
            now = mono_now();
        }
        while (n < batch) {
            if (count && data_dg + batch_data >= count) break;
            int cs = 0; size_t len;
            if ((proto == P_IPFIX || proto == P_V9) && now - e->last_tmpl >= tmpl_interval) {
                len = make_template(bufs[n], e, t0); e->last_tmpl = now; kind[n] = 0;
            } else {
                len = make_data(bufs[n], e, t0, &cs); batch_data++; kind[n] = (uint8_t)(1 + cs);
            }
            iov[n].iov_len = len; n++;
        }
        int sent = 0;
        while (sent < n) {
            int r = sendmmsg(e->fd, msgs + sent, n - sent, 0);
            if (r < 0) {
                errors++;
                /* EINTR: retry unless stopping; ECONNREFUSED: an earlier datagram met a closed
                 * port (ICMP) and the kernel reports it on this send: retry; ENOBUFS/EAGAIN: retry */
                if (errno == EINTR && !stop_flag) continue;
                if (errno == ECONNREFUSED || errno == ENOBUFS || errno == EAGAIN) { if (errors % 1000 == 0) usleep(100); continue; }
                break;
            }
            sent += r;
        }
        /* count only what the kernel accepted; sequence numbers of unsent datagrams are
         * consumed, which a collector sees as loss (as it should) */
        for (int j = 0; j < n; j++) {
            if (j >= sent) { lost_sends++; continue; }
            bytes += iov[j].iov_len;
            if (kind[j] == 0) tmpl_dg++;
            else { data_dg++; flows += recs; csamples += kind[j] == 2; }
        }
        tlast = mono_now();
        if (sent < n && !stop_flag) break;
    }
    double elapsed = tlast - t0;
    printf("{\"proto\":\"%s\",\"datagrams\":%llu,\"data_datagrams\":%llu,\"template_datagrams\":%llu,"
           "\"flows\":%llu,\"counter_samples\":%llu,\"records_per_datagram\":%d,\"bytes\":%llu,"
           "\"elapsed_s\":%.6f,\"flows_per_s\":%.1f,\"datagrams_per_s\":%.1f,\"target_flows_per_s\":%.1f,"
           "\"exporters\":%d,\"send_errors\":%llu,\"unsent\":%llu}\n",
           proto == P_IPFIX ? "ipfix" : proto == P_V5 ? "v5" : proto == P_V9 ? "v9" : "sflow",
           (unsigned long long)(data_dg + tmpl_dg), (unsigned long long)data_dg, (unsigned long long)tmpl_dg,
           (unsigned long long)flows, (unsigned long long)csamples, recs, (unsigned long long)bytes,
           elapsed, elapsed > 0 ? flows / elapsed : 0.0, elapsed > 0 ? (data_dg + tmpl_dg) / elapsed : 0.0,
           target_dps * recs, nexp, (unsigned long long)errors, (unsigned long long)lost_sends);
    return 0;
}
