/* The realistic stream scenario's client, in C: what bench/paced_client.py does, cheaply enough that 500
 * streams of 50 events a second (25,000 lines a second) leave the load core room to spare.  Compiled by the
 * benchmark into its scratch directory (cc -O2); the Python client is the fallback when there is no
 * compiler.  It prints its raw findings as lines for bench/paced_client.py to summarise:
 *
 *   stream INDEX OPENED DONE EVENTS FIRST_AT ENDED_AT STATUS ERROR
 *   sample T PROXY_CPU_S LOAD_CPU_S OWN_CPU_S PROXY_RSS_BYTES
 *   end SECONDS
 *
 * and writes each event's (arrival time, latency) as two native doubles to --events-out.  Times are
 * CLOCK_MONOTONIC seconds, the clock the paced backend stamps its events with.  Loopback only; every loop
 * is bounded by --timeout. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define LINE_MAX_BYTES 65536
#define SAMPLE_INTERVAL 0.25

enum { CH_SIZE, CH_DATA, CH_CRLF, CH_DONE };

typedef struct {
    int fd, index, connected, opened, done, closed, status, chunked;
    char head[8192];
    int head_len, head_done;
    int ch_state;
    long ch_remaining, ch_size;
    int ch_size_digits, ch_ext;
    char *line;
    int line_len;
    long events;
    double first_at, ended_at;
    char error[48];
} stream_t;

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static double own_cpu(void) {
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* user + system CPU seconds of a process, from /proc/PID/stat (fields 14 and 15) */
static double proc_cpu(int pid) {
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    int fd = open(path, O_RDONLY);
    if (fd < 0) return 0.0;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0) return 0.0;
    buf[n] = 0;
    char *p = strrchr(buf, ')');
    if (!p) return 0.0;
    p += 2; /* field 3, the state */
    for (int field = 3; field < 14 && p; field++) {
        p = strchr(p, ' ');
        if (p) p++;
    }
    if (!p) return 0.0;
    unsigned long utime = 0, stime = 0;
    if (sscanf(p, "%lu %lu", &utime, &stime) != 2) return 0.0;
    return (double)(utime + stime) / sysconf(_SC_CLK_TCK);
}

static long proc_rss(int pid) {
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/statm", pid);
    FILE *f = fopen(path, "r");
    if (!f) return 0;
    long size = 0, resident = 0;
    if (fscanf(f, "%ld %ld", &size, &resident) != 2) resident = 0;
    fclose(f);
    return resident * sysconf(_SC_PAGESIZE);
}

static double *events_buf;
static size_t events_len, events_cap;

static void record(double at, double latency) {
    if (events_len + 2 > events_cap) {
        events_cap = events_cap ? events_cap * 2 : 1 << 16;
        events_buf = realloc(events_buf, events_cap * sizeof(double));
        if (!events_buf) {
            perror("realloc");
            exit(2);
        }
    }
    events_buf[events_len++] = at;
    events_buf[events_len++] = latency;
}

static int epfd, active;

static void finish(stream_t *s, const char *error) {
    if (s->closed) return;
    if (error && !s->error[0]) snprintf(s->error, sizeof s->error, "%s", error);
    if (!s->ended_at) s->ended_at = now();
    epoll_ctl(epfd, EPOLL_CTL_DEL, s->fd, NULL);
    close(s->fd);
    s->closed = 1;
    active--;
}

/* one complete line of the body: its stamps ("t=SECONDS") and whether it ends the stream */
static void line(stream_t *s, char *text, int len, double at) {
    text[len] = 0;
    for (char *p = text; (p = strstr(p, "t=")) != NULL;) {
        p += 2;
        if (*p < '0' || *p > '9') continue;
        char *end;
        double sent = strtod(p, &end);
        if (end > p) {
            if (!s->events) s->first_at = at;
            s->events++;
            record(at, at - sent);
            p = end;
        }
    }
    if (strstr(text, "\"done\":true") || strstr(text, "\"done\": true") || strstr(text, "[DONE]")) {
        s->done = 1;
        s->ended_at = at;
    }
}

static void body(stream_t *s, const char *data, long len, double at) {
    for (long i = 0; i < len && !s->done; i++) {
        if (data[i] == '\n') {
            line(s, s->line, s->line_len, at);
            s->line_len = 0;
        } else if (s->line_len < LINE_MAX_BYTES - 1) {
            s->line[s->line_len++] = data[i];
        }
    }
}

static void dechunk(stream_t *s, const char *data, long len, double at) {
    long i = 0;
    while (i < len && s->ch_state != CH_DONE && !s->done) {
        if (s->ch_state == CH_DATA) {
            long take = len - i < s->ch_remaining ? len - i : s->ch_remaining;
            body(s, data + i, take, at);
            i += take;
            s->ch_remaining -= take;
            if (!s->ch_remaining) s->ch_state = CH_CRLF;
            continue;
        }
        char c = data[i++];
        if (s->ch_state == CH_CRLF) {
            if (c == '\n') s->ch_state = CH_SIZE;
        } else if (c == '\n') { /* the end of a chunk-size line */
            if (!s->ch_size_digits) continue; /* a stray CRLF */
            s->ch_remaining = s->ch_size;
            s->ch_state = s->ch_size ? CH_DATA : CH_DONE;
            s->ch_size = 0;
            s->ch_size_digits = 0;
            s->ch_ext = 0;
        } else if (!s->ch_ext) {
            int digit = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10
                      : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
            if (digit >= 0) {
                s->ch_size = s->ch_size * 16 + digit;
                s->ch_size_digits++;
            } else {
                s->ch_ext = 1; /* "\r" or a chunk extension: the rest of the line is ignored */
            }
        }
    }
    if (s->ch_state == CH_DONE && !s->done) finish(s, "body-ended-before-the-last-line");
}

static void readable(stream_t *s, char *buf, size_t size) {
    ssize_t n = recv(s->fd, buf, size, 0);
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) return;
    double at = now();
    if (n <= 0) {
        finish(s, s->done ? NULL : s->opened ? "closed-before-the-last-line" : "closed-before-a-reply");
        return;
    }
    char *data = buf;
    long len = n;
    if (!s->head_done) {
        long room = (long)sizeof s->head - 1 - s->head_len;
        long copy = len < room ? len : room;
        memcpy(s->head + s->head_len, data, copy);
        s->head_len += copy;
        s->head[s->head_len] = 0;
        char *end = strstr(s->head, "\r\n\r\n");
        if (!end) {
            if (copy < len) finish(s, "response-head-too-long");
            return;
        }
        long head_bytes = end + 4 - s->head;
        long consumed_here = head_bytes - (s->head_len - copy);
        data += consumed_here;
        len -= consumed_here;
        s->head_done = 1;
        s->status = atoi(strchr(s->head, ' ') ? strchr(s->head, ' ') + 1 : "0");
        if (s->status != 200) {
            char why[32];
            snprintf(why, sizeof why, "HTTP-%d", s->status);
            finish(s, why);
            return;
        }
        s->opened = 1;
        for (char *p = s->head; *p; p++) *p = (char)(*p >= 'A' && *p <= 'Z' ? *p + 32 : *p);
        s->chunked = strstr(s->head, "transfer-encoding: chunked") != NULL;
    }
    if (s->chunked)
        dechunk(s, data, len, at);
    else
        body(s, data, len, at);
    if (s->done) finish(s, NULL);
}

int main(int argc, char **argv) {
    int port = 0, streams = 100, pid = 0, load_pids[8], nload = 0;
    double ramp = 1.0, timeout = 120.0;
    const char *path = "/api/chat", *model = "bench-paced", *events_out = NULL;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--port")) port = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--streams")) streams = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--path")) path = argv[i + 1];
        else if (!strcmp(argv[i], "--model")) model = argv[i + 1];
        else if (!strcmp(argv[i], "--ramp")) ramp = atof(argv[i + 1]);
        else if (!strcmp(argv[i], "--timeout")) timeout = atof(argv[i + 1]);
        else if (!strcmp(argv[i], "--pid")) pid = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--load-pid") && nload < 8) load_pids[nload++] = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--events-out")) events_out = argv[i + 1];
        else {
            fprintf(stderr, "unknown option %s\n", argv[i]);
            return 2;
        }
    }
    if (!port || !events_out || streams < 1) {
        fprintf(stderr, "usage: paced_client --port N --events-out FILE [--streams N --path P --model M "
                        "--ramp S --timeout S --pid PID --load-pid PID]\n");
        return 2;
    }
    struct rlimit lim;
    if (!getrlimit(RLIMIT_NOFILE, &lim)) {
        lim.rlim_cur = lim.rlim_max;
        setrlimit(RLIMIT_NOFILE, &lim);
    }
    char body_json[512], request[1024];
    if (!strcmp(path, "/api/generate"))
        snprintf(body_json, sizeof body_json, "{\"model\":\"%s\",\"prompt\":\"stream\",\"stream\":true}", model);
    else if (!strcmp(path, "/api/chat"))
        snprintf(body_json, sizeof body_json,
                 "{\"model\":\"%s\",\"messages\":[{\"role\":\"user\",\"content\":\"stream\"}],\"stream\":true}", model);
    else
        snprintf(body_json, sizeof body_json,
                 "{\"model\":\"%s\",\"messages\":[{\"role\":\"user\",\"content\":\"stream\"}],\"stream\":true,"
                 "\"stream_options\":{\"include_usage\":true}}", model);
    int request_len = snprintf(request, sizeof request,
                               "POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                               "Content-Length: %zu\r\nConnection: close\r\n\r\n%s",
                               path, strlen(body_json), body_json);

    stream_t *all = calloc(streams, sizeof(stream_t));
    epfd = epoll_create1(0);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(port)};
    inet_pton(AF_INET, "127.0.0.1", &addr.sin_addr);
    size_t bufsize = 262144;
    char *buf = malloc(bufsize);
    struct epoll_event ready[512];

    double started = now(), deadline = started + ramp + timeout, next_sample = started;
    double gap = streams > 1 ? ramp / (streams - 1) : 0.0;
    int next_open = 0;
    while ((next_open < streams || active > 0) && now() < deadline) {
        double t = now();
        while (next_open < streams && started + next_open * gap <= t) {
            stream_t *s = &all[next_open];
            s->index = next_open++;
            s->line = malloc(LINE_MAX_BYTES);
            s->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
            int one = 1;
            setsockopt(s->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
            active++;
            if (connect(s->fd, (struct sockaddr *)&addr, sizeof addr) < 0 && errno != EINPROGRESS) {
                finish(s, "connect-failed");
                continue;
            }
            struct epoll_event ev = {.events = EPOLLOUT, .data.ptr = s};
            epoll_ctl(epfd, EPOLL_CTL_ADD, s->fd, &ev);
        }
        if (t >= next_sample) {
            double load = 0.0;
            for (int i = 0; i < nload; i++) load += proc_cpu(load_pids[i]);
            printf("sample %.6f %.3f %.3f %.6f %ld\n", t, pid ? proc_cpu(pid) : 0.0, load, own_cpu(),
                   pid ? proc_rss(pid) : 0L);
            next_sample = t + SAMPLE_INTERVAL;
        }
        double wake = next_sample;
        if (next_open < streams && started + next_open * gap < wake) wake = started + next_open * gap;
        int wait_ms = (int)((wake - now()) * 1000);
        if (wait_ms < 0) wait_ms = 0;
        if (wait_ms > 500) wait_ms = 500;
        int n = epoll_wait(epfd, ready, 512, wait_ms);
        for (int i = 0; i < n; i++) {
            stream_t *s = ready[i].data.ptr;
            if (s->closed) continue;
            if (!s->connected) {
                int err = 0;
                socklen_t len = sizeof err;
                getsockopt(s->fd, SOL_SOCKET, SO_ERROR, &err, &len);
                if (err) {
                    finish(s, "connect-failed");
                    continue;
                }
                s->connected = 1;
                if (send(s->fd, request, request_len, 0) != request_len) {
                    finish(s, "send-failed");
                    continue;
                }
                struct epoll_event ev = {.events = EPOLLIN, .data.ptr = s};
                epoll_ctl(epfd, EPOLL_CTL_MOD, s->fd, &ev);
                continue;
            }
            readable(s, buf, bufsize);
        }
    }
    for (int i = 0; i < next_open; i++)
        if (!all[i].closed) finish(&all[i], "timed-out");
    FILE *out = fopen(events_out, "wb");
    if (!out || fwrite(events_buf, sizeof(double), events_len, out) != events_len) {
        perror(events_out);
        return 2;
    }
    fclose(out);
    for (int i = 0; i < streams; i++) {
        stream_t *s = &all[i];
        printf("stream %d %d %d %ld %.6f %.6f %d %s\n", i, s->opened, s->done, s->events, s->first_at,
               s->ended_at, s->status, s->error[0] ? s->error : "-");
    }
    printf("end %.3f\n", now() - started);
    return 0;
}
