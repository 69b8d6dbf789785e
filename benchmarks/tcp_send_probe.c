/* What the kernel charges a process for sending bytes over loopback TCP, by way of sending:
 * send() (a copy into the socket), MSG_ZEROCOPY (the pages lent, completions read from the
 * error queue) and vmsplice()+splice() (the pages handed through a pipe).
 *
 *     cc -O2 -o /tmp/tcp_send_probe benchmarks/tcp_send_probe.c
 *     /tmp/tcp_send_probe MODE WRITE_BYTES TOTAL_BYTES [RATE_BYTES_PER_S]
 *
 * MODE: copy, zerocopy or splice. A forked reader drains the connection (1 MiB reads). With a
 * rate the writer is paced (non-blocking socket, as the collector's event loop writes: a write
 * the socket cannot take whole waits for POLLOUT); without one it writes as fast as it can
 * (blocking). Prints the writer's CPU time (user + system, getrusage) a byte and for the ~580
 * bytes a flow enrichment adds, and the reader's CPU time; with MSG_ZEROCOPY, how many sends the
 * kernel's completions covered once the last were waited for (after the timing). The buffers
 * are reused in turn without waiting for those completions: the bytes the reader gets are not
 * checked, only the cost is measured. Not part of the collector; benchmarks/RESULTS.md says what it
 * showed. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/errqueue.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef SO_ZEROCOPY
#define SO_ZEROCOPY 60
#endif
#ifndef MSG_ZEROCOPY
#define MSG_ZEROCOPY 0x4000000
#endif

enum { COPY, ZEROCOPY, SPLICE };
#define BUFFERS 32

static double cpu_seconds(void) {
    struct rusage r;
    getrusage(RUSAGE_SELF, &r);
    return r.ru_utime.tv_sec + r.ru_utime.tv_usec / 1e6 + r.ru_stime.tv_sec + r.ru_stime.tv_usec / 1e6;
}

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static void wait_writable(int fd) {
    struct pollfd p = {fd, POLLOUT, 0};
    poll(&p, 1, -1);
}

static long zc_sends;    /* send() calls with MSG_ZEROCOPY that took bytes: the kernel numbers them */
static long zc_done;     /* of those, the ones completion notifications covered */

/* Read the completions queued (MSG_ERRQUEUE): each covers a range of zerocopy sends. */
static void read_completions(int s) {
    char control[128];
    struct msghdr m = {.msg_control = control, .msg_controllen = sizeof control};
    while (recvmsg(s, &m, MSG_ERRQUEUE | MSG_DONTWAIT) >= 0) {
        for (struct cmsghdr* c = CMSG_FIRSTHDR(&m); c; c = CMSG_NXTHDR(&m, c)) {
            struct sock_extended_err e;
            if (c->cmsg_level != SOL_IP || c->cmsg_type != IP_RECVERR) continue;
            memcpy(&e, CMSG_DATA(c), sizeof e);
            if (e.ee_origin == SO_EE_ORIGIN_ZEROCOPY) zc_done += (long)(e.ee_data - e.ee_info) + 1;
        }
        m.msg_controllen = sizeof control;
    }
}

/* One write of n bytes from b, whole. 0, or -1 on an error. */
static int write_all(int mode, int s, int pipefd[2], const char* b, size_t n) {
    size_t off = 0;
    while (off < n) {
        ssize_t k;
        if (mode == SPLICE) {
            struct iovec v = {(void*)(b + off), n - off};
            k = vmsplice(pipefd[1], &v, 1, 0);
            if (k < 0) { perror("vmsplice"); return -1; }
            for (ssize_t left = k; left > 0;) {
                ssize_t m = splice(pipefd[0], NULL, s, NULL, left, SPLICE_F_MORE);
                if (m < 0 && errno == EAGAIN) { wait_writable(s); continue; }
                if (m < 0) { perror("splice"); return -1; }
                left -= m;
            }
        } else {
            k = send(s, b + off, n - off, mode == ZEROCOPY ? MSG_ZEROCOPY : 0);
            if (k < 0 && errno == EAGAIN) { wait_writable(s); continue; }
            if (k < 0) { perror("send"); return -1; }
            if (mode == ZEROCOPY) zc_sends++;
        }
        off += k;
    }
    if (mode == ZEROCOPY) read_completions(s);
    return 0;
}

int main(int argc, char** argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: %s copy|zerocopy|splice WRITE_BYTES TOTAL_BYTES [RATE_BYTES_PER_S]\n", argv[0]);
        return 2;
    }
    int mode = !strcmp(argv[1], "zerocopy") ? ZEROCOPY : !strcmp(argv[1], "splice") ? SPLICE
               : !strcmp(argv[1], "copy") ? COPY : -1;
    size_t chunk = strtoul(argv[2], NULL, 10);
    double total = atof(argv[3]), rate = argc > 4 ? atof(argv[4]) : 0;
    if (mode < 0 || chunk == 0 || total <= 0) {
        fprintf(stderr, "bad arguments\n");
        return 2;
    }
    int ls = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(0x7f000001)};
    socklen_t alen = sizeof a;
    if (bind(ls, (void*)&a, sizeof a) || listen(ls, 1) || getsockname(ls, (void*)&a, &alen)) {
        perror("listen");
        return 1;
    }
    pid_t reader = fork();
    if (reader == 0) {
        int c = accept(ls, NULL, NULL);
        char* b = malloc(1 << 20);
        while (read(c, b, 1 << 20) > 0) {}
        fprintf(stderr, "reader: %.3f s CPU\n", cpu_seconds());
        _exit(0);
    }
    int s = socket(AF_INET, SOCK_STREAM, 0);
    if (connect(s, (void*)&a, sizeof a)) { perror("connect"); return 1; }
    int one = 1;
    if (mode == ZEROCOPY && setsockopt(s, SOL_SOCKET, SO_ZEROCOPY, &one, sizeof one)) {
        perror("SO_ZEROCOPY");
        return 1;
    }
    if (rate > 0) fcntl(s, F_SETFL, O_NONBLOCK);
    int pipefd[2];
    if (pipe(pipefd)) { perror("pipe"); return 1; }
    fcntl(pipefd[1], F_SETPIPE_SZ, 1 << 20);
    char* bufs[BUFFERS];
    for (int i = 0; i < BUFFERS; i++) {
        bufs[i] = aligned_alloc(4096, (chunk + 4095) / 4096 * 4096);
        memset(bufs[i], 'a' + i, chunk);
    }
    double c0 = cpu_seconds(), t0 = now(), sent = 0;
    for (int i = 0; sent < total; i++) {
        if (write_all(mode, s, pipefd, bufs[i % BUFFERS], chunk) < 0) return 1;
        sent += chunk;
        double due = rate > 0 ? t0 + sent / rate : 0, t = now();
        if (due > t) {
            struct timespec d = {(time_t)(due - t), (long)((due - t - (time_t)(due - t)) * 1e9)};
            nanosleep(&d, NULL);
        }
    }
    double cpu = cpu_seconds() - c0, wall = now() - t0;
    /* the last completions come with the reader's acknowledgements: waited for (not timed) */
    for (double until = now() + 5; mode == ZEROCOPY && zc_done < zc_sends && now() < until;) {
        struct pollfd p = {s, 0, 0};   /* POLLERR: the error queue holds something */
        poll(&p, 1, 100);
        read_completions(s);
    }
    printf("%-8s writes of %8zu bytes%s: writer %.3f ns a byte, %5.1f ns for 580 bytes; %.2f s; "
           "zerocopy sends %ld, completed %ld\n", argv[1], chunk, rate > 0 ? " (paced)" : "", cpu * 1e9 / sent,
           cpu * 1e9 / sent * 580, wall, zc_sends, zc_done);
    fflush(stdout);
    shutdown(s, SHUT_WR);
    close(s);
    waitpid(reader, NULL, 0);
    return 0;
}
