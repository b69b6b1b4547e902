/* Keeps simulated powercap energy_uj files current for the peer benchmark.
 *
 * Each update replaces a file's content with ONE pwrite of the same length (the value
 * zero-padded, then a newline), so every read parses, as on real sysfs where a read of
 * energy_uj is always a whole number. (The library's own simulator guards its writes with an
 * intermediate unparseable state that its reader retries; the peers do not retry and would fail
 * on it, which says nothing about them.) Values follow the same model as the library's
 * simulator: at each update, every `period_ns` since t0 on absolute deadlines, the writer takes
 * the current CLOCK_MONOTONIC time t and writes floor((offset_j + E(t - t0)) * 1e6) mod wrap,
 * with E the exact energy of a square wave (low_w, high_w, period_s, duty).
 *
 * usage: rapl_writer T0_NS PERIOD_NS STOP_FILE  (PATH LOW HIGH PERIOD_S DUTY OFFSET_J WRAP)...
 * Runs until STOP_FILE exists (checked every 100 ms of updates) or it is killed. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

typedef struct {
    int fd;
    double low, high, period, duty, offset;
    unsigned long long wrap;
    int width;
} zone_t;

static double energy(const zone_t *z, double s) {
    if (s <= 0) return 0;
    if (z->period <= 0) return (z->high * z->duty + z->low * (1 - z->duty)) * s;
    double hi = z->duty * z->period, per = z->high * hi + z->low * (z->period - hi);
    double full = floor(s / z->period), rem = s - full * z->period;
    double part = rem <= hi ? z->high * rem : z->high * hi + z->low * (rem - hi);
    return full * per + part;
}

static unsigned long long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (unsigned long long)ts.tv_sec * 1000000000ull + ts.tv_nsec;
}

int main(int argc, char **argv) {
    if (argc < 4 || (argc - 4) % 7 != 0) {
        fprintf(stderr, "usage: %s T0_NS PERIOD_NS STOP_FILE (PATH LOW HIGH PERIOD_S DUTY OFFSET_J WRAP)...\n", argv[0]);
        return 2;
    }
    unsigned long long t0 = strtoull(argv[1], 0, 10), period = strtoull(argv[2], 0, 10);
    const char *stop = argv[3];
    int n = (argc - 4) / 7;
    zone_t *z = calloc(n, sizeof *z);
    for (int i = 0; i < n; i++) {
        char **a = argv + 4 + 7 * i;
        z[i].fd = open(a[0], O_WRONLY | O_CREAT, 0644);
        if (z[i].fd < 0) { perror(a[0]); return 1; }
        z[i].low = atof(a[1]); z[i].high = atof(a[2]); z[i].period = atof(a[3]);
        z[i].duty = atof(a[4]); z[i].offset = atof(a[5]); z[i].wrap = strtoull(a[6], 0, 10);
        char tmp[32];
        z[i].width = snprintf(tmp, sizeof tmp, "%llu", z[i].wrap - 1);
    }
    unsigned long long k = (now_ns() > t0 ? (now_ns() - t0) / period : 0);
    for (;;) {
        unsigned long long t = now_ns();
        for (int i = 0; i < n; i++) {
            double e = z[i].offset + energy(&z[i], (double)(t > t0 ? t - t0 : 0) * 1e-9);
            unsigned long long v = (unsigned long long)floor(e * 1e6) % z[i].wrap;
            char buf[40];
            int len = snprintf(buf, sizeof buf, "%0*llu\n", z[i].width, v);
            if (pwrite(z[i].fd, buf, len, 0) != len) { perror("pwrite"); return 1; }
        }
        if (k % 100 == 0 && access(stop, F_OK) == 0) return 0;
        k++;
        unsigned long long dl = t0 + k * period;
        struct timespec ts = {(time_t)(dl / 1000000000ull), (long)(dl % 1000000000ull)};
        clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, 0);
    }
}
