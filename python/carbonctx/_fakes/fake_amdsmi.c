/*
 * A stand-in for libamd_smi.so: the part of the AMD SMI ABI (include/amd_smi/amdsmi.h) that
 * energy measurement uses, over simulated AMD GPUs.
 *
 * It computes no power trace. The simulator (the carbonctx-sim crate's writer thread) publishes
 * what each simulated GPU reports at every millisecond tick in a state file (`state=` in the
 * configuration); GPU K of this library follows the state file's GPU `gpuK.slot`. The one
 * definition of the waveforms is in rust/sim/src/wave.rs. Without a state file, GPUs read 0.
 *
 * Build: cc -shared -fPIC -O2 -Wall -Wextra -o <dir>/libamd_smi.so fake_amdsmi.c
 * Configuration: see README.md next to this file.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define EXPORT __attribute__((visibility("default")))

/* amdsmi_status_t values, as amdsmi.h numbers them. */
enum {
    OK = 0,
    E_INVAL = 1,
    E_NOT_SUPPORTED = 2,
    E_NOT_INIT = 32,
    E_INSUFFICIENT_SIZE = 41,
    E_UNKNOWN = 0xFFFFFFFF,
};

#define MAX_DEVICES 64
#define NAME_LEN 256
#define UUID_LEN 64
#define PROCESSOR_TYPE_AMD_GPU 1
#define PROCESSOR_TYPE_AMD_APU 6

typedef struct fake_gpu {
    unsigned int index;
    unsigned int slot;
    char name[NAME_LEN];
    char uuid[UUID_LEN];
    uint64_t bdf;
    int has_energy, has_power, zero, apu;
    char power_field[16];
    double resolution_uj;
    unsigned int energy_error, power_error;
    double energy_error_after_ms, power_error_after_ms;
    /* The accumulator as the firmware keeps it: 64 bits (MI200, MI300) or 32 (RDNA, whose
     * SmuMetrics EnergyAccumulator is a uint32_t), plus this many counts; `energy_na`: it reads
     * UINT32_MAX, what amdgpu reports where the firmware's counter is not to be trusted. */
    unsigned int energy_bits;
    unsigned long long energy_offset;
    int energy_na;
} fake_gpu;

typedef struct fake_state {
    int init_count;
    unsigned int devices, per_socket;
    unsigned int version[3];
    unsigned long long idle_mj, idle_w;
    unsigned long long t0_ns;
    char state_path[4096];
    int state_fd;
    unsigned long long tick_ns, ring_slots, state_devices;
    fake_gpu gpu[MAX_DEVICES];
    /* A socket handle is the address of its first GPU's entry here. */
    int sockets[MAX_DEVICES];
} fake_state;

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static fake_state st = {.state_fd = -1};
static unsigned long long calls;

#define COUNT() __atomic_add_fetch(&calls, 1, __ATOMIC_RELAXED)

static unsigned long long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (unsigned long long)ts.tv_sec * 1000000000ull + (unsigned long long)ts.tv_nsec;
}

/* ---------------------------------------------------------------- configuration */

static uint64_t bdf_word(unsigned dom, unsigned bus, unsigned dev, unsigned fn) {
    return ((uint64_t)dom << 16) | ((uint64_t)(bus & 0xff) << 8) | ((dev & 0x1f) << 3) | (fn & 7);
}

static void defaults(void) {
    memset(&st.gpu, 0, sizeof st.gpu);
    st.devices = 1;
    st.per_socket = 1;
    st.version[0] = 26, st.version[1] = 0, st.version[2] = 0;
    st.idle_mj = 1000000;
    st.idle_w = 100;
    st.t0_ns = 0;
    st.state_path[0] = '\0';
    for (unsigned int i = 0; i < MAX_DEVICES; i++) {
        fake_gpu *g = &st.gpu[i];
        g->index = i;
        g->slot = i;
        snprintf(g->name, sizeof g->name, "Fake AMD GPU %u", i);
        snprintf(g->uuid, sizeof g->uuid, "%08x-0000-1000-8000-%012x", 0x74a1u + i, i);
        g->bdf = bdf_word(0, 0x10 * (i + 1) & 0xff, 0, 0);
        g->has_energy = 1;
        g->has_power = 1;
        snprintf(g->power_field, sizeof g->power_field, "current");
        g->resolution_uj = 15.259;
        g->energy_bits = 64;
    }
}

static char *trim(char *s) {
    while (*s == ' ' || *s == '\t') s++;
    size_t n = strlen(s);
    while (n > 0 && (s[n - 1] == ' ' || s[n - 1] == '\t' || s[n - 1] == '\n' || s[n - 1] == '\r'))
        s[--n] = '\0';
    return s;
}

static int parse_ull(const char *v, unsigned long long *out) {
    char *end;
    errno = 0;
    if (*v == '-') return 0;
    unsigned long long x = strtoull(v, &end, 10);
    if (errno || end == v || *end) return 0;
    *out = x;
    return 1;
}

static int parse_uint(const char *v, unsigned int *out) {
    unsigned long long x;
    if (!parse_ull(v, &x) || x > UINT_MAX) return 0;
    *out = (unsigned int)x;
    return 1;
}

static int parse_int(const char *v, int *out) {
    unsigned int x;
    if (!parse_uint(v, &x) || x > INT_MAX) return 0;
    *out = (int)x;
    return 1;
}

static int parse_double(const char *v, double *out) {
    char *end;
    errno = 0;
    double x = strtod(v, &end);
    if (errno || end == v || *end || x < 0) return 0;
    *out = x;
    return 1;
}

/* Applies one key=value; returns 1 when understood. */
static int apply(const char *key, const char *val, unsigned int *init_error) {
    unsigned long long u;
    if (!strcmp(key, "devices")) {
        if (!parse_ull(val, &u) || u > MAX_DEVICES) return 0;
        st.devices = (unsigned int)u;
        return 1;
    }
    if (!strcmp(key, "gpus_per_socket"))
        return parse_uint(val, &st.per_socket) && st.per_socket > 0;
    if (!strcmp(key, "version"))
        return sscanf(val, "%u.%u.%u", &st.version[0], &st.version[1], &st.version[2]) == 3;
    if (!strcmp(key, "t0_ns")) return parse_ull(val, &st.t0_ns);
    if (!strcmp(key, "idle_mj")) return parse_ull(val, &st.idle_mj);
    if (!strcmp(key, "idle_w")) return parse_ull(val, &st.idle_w);
    if (!strcmp(key, "state"))
        return snprintf(st.state_path, sizeof st.state_path, "%s", val) < (int)sizeof st.state_path;
    if (!strcmp(key, "init_error")) return parse_uint(val, init_error);
    unsigned int k;
    int used = 0;
    if (sscanf(key, "gpu%u.%n", &k, &used) != 1 || used == 0 || k >= MAX_DEVICES) return 0;
    fake_gpu *g = &st.gpu[k];
    const char *f = key + used;
    if (!strcmp(f, "name")) return snprintf(g->name, sizeof g->name, "%s", val) < NAME_LEN;
    if (!strcmp(f, "uuid")) return snprintf(g->uuid, sizeof g->uuid, "%s", val) < UUID_LEN;
    if (!strcmp(f, "slot")) return parse_uint(val, &g->slot);
    if (!strcmp(f, "bdf")) {
        unsigned dom, bus, dev, fn;
        char extra;
        if (sscanf(val, "%x:%x:%x.%x%c", &dom, &bus, &dev, &fn, &extra) != 4) return 0;
        g->bdf = bdf_word(dom, bus, dev, fn);
        return 1;
    }
    if (!strcmp(f, "has_energy")) return parse_int(val, &g->has_energy);
    if (!strcmp(f, "has_power")) return parse_int(val, &g->has_power);
    if (!strcmp(f, "zero")) return parse_int(val, &g->zero);
    if (!strcmp(f, "processor_type")) {
        if (strcmp(val, "gpu") && strcmp(val, "apu")) return 0;
        g->apu = !strcmp(val, "apu");
        return 1;
    }
    if (!strcmp(f, "power_field")) {
        if (strcmp(val, "current") && strcmp(val, "average") && strcmp(val, "socket")) return 0;
        snprintf(g->power_field, sizeof g->power_field, "%s", val);
        return 1;
    }
    if (!strcmp(f, "resolution_uj")) return parse_double(val, &g->resolution_uj);
    if (!strcmp(f, "energy_bits")) {
        if (strcmp(val, "32") && strcmp(val, "64")) return 0;
        g->energy_bits = (unsigned int)atoi(val);
        return 1;
    }
    if (!strcmp(f, "energy_offset")) return parse_ull(val, &g->energy_offset);
    if (!strcmp(f, "energy_na")) return parse_int(val, &g->energy_na);
    if (!strcmp(f, "energy_error")) return parse_uint(val, &g->energy_error);
    if (!strcmp(f, "energy_error_after_ms")) return parse_double(val, &g->energy_error_after_ms);
    if (!strcmp(f, "power_error")) return parse_uint(val, &g->power_error);
    if (!strcmp(f, "power_error_after_ms")) return parse_double(val, &g->power_error_after_ms);
    return 0;
}

/* The config file: $FAKE_AMDSMI_CONFIG, else fake_amdsmi.conf beside this library, else none. */
static int config_path(char *out, size_t len) {
    const char *env = getenv("FAKE_AMDSMI_CONFIG");
    if (env && *env) return snprintf(out, len, "%s", env) < (int)len;
    Dl_info info;
    if (!dladdr((void *)&config_path, &info) || !info.dli_fname) return 0;
    const char *slash = strrchr(info.dli_fname, '/');
    if (!slash) return 0;
    int n = (int)(slash - info.dli_fname);
    if (snprintf(out, len, "%.*s/fake_amdsmi.conf", n, info.dli_fname) >= (int)len) return 0;
    FILE *probe = fopen(out, "r");
    if (!probe) return 0;
    fclose(probe);
    return 1;
}

/* ---------------------------------------------------------------- the published trace */

/* The simulator's state file (rust/sim/src/gpu.rs): a header of 8 native-endian 64-bit words
 * (magic "CCXGPU01", version 1, tick ns, t0 ns, GPUs, slots per GPU, last tick published plus
 * one, reserved), then per GPU a ring of slots of 8 words (tick plus one, energy mJ, power mW,
 * instantaneous power mW, busy, reserved x3). */
#define STATE_MAGIC 0x3130555047584343ull
#define HEADER_WORDS 8
#define SLOT_WORDS 8
#define LAST_TICK_WORD 6

static int read_words(unsigned long long *out, size_t n, unsigned long long word) {
    size_t len = n * sizeof *out;
    return pread(st.state_fd, out, len, (off_t)(word * sizeof *out)) == (ssize_t)len;
}

static int open_state(void) {
    st.state_fd = open(st.state_path, O_RDONLY | O_CLOEXEC);
    if (st.state_fd < 0) {
        fprintf(stderr, "fake_amdsmi: cannot open state %s: %s\n", st.state_path, strerror(errno));
        return E_UNKNOWN;
    }
    unsigned long long h[HEADER_WORDS];
    if (!read_words(h, HEADER_WORDS, 0) || h[0] != STATE_MAGIC || h[1] != 1 || !h[2] || !h[5]) {
        fprintf(stderr, "fake_amdsmi: %s is not a carbonctx-sim GPU state file\n", st.state_path);
        close(st.state_fd);
        st.state_fd = -1;
        return E_UNKNOWN;
    }
    st.tick_ns = h[2];
    if (!st.t0_ns) st.t0_ns = h[3];
    st.state_devices = h[4];
    st.ring_slots = h[5];
    return OK;
}

/* Energy (mJ) and power (mW) of GPU `g` now: the slot of the current tick, or of the last tick
 * published; without a state file (or beyond its GPUs), the idle values (a counter that does
 * not move). Caller holds the lock. */
static int trace_now(const fake_gpu *g, unsigned long long *mj, unsigned long long *mw) {
    *mj = st.idle_mj, *mw = st.idle_w * 1000;
    if (st.state_fd < 0 || g->slot >= st.state_devices) return OK;
    unsigned long long now = now_ns();
    unsigned long long tick = now > st.t0_ns ? (now - st.t0_ns) / st.tick_ns : 0;
    for (int attempt = 0; attempt < 1000; attempt++) {
        unsigned long long last, w[SLOT_WORDS];
        if (!read_words(&last, 1, LAST_TICK_WORD)) return E_UNKNOWN;
        if (last == 0) return OK;
        unsigned long long t = tick < last - 1 ? tick : last - 1;
        unsigned long long slot = g->slot * st.ring_slots + t % st.ring_slots;
        if (!read_words(w, SLOT_WORDS, HEADER_WORDS + slot * SLOT_WORDS)) return E_UNKNOWN;
        if (w[0] != t + 1) continue;
        *mj = w[1];
        *mw = w[2];
        return OK;
    }
    return E_UNKNOWN;
}

/* Loads the configuration; returns what amdsmi_init should return. Caller holds the lock. */
static unsigned int load_config(void) {
    defaults();
    unsigned int init_error = 0;
    char path[4096];
    if (config_path(path, sizeof path)) {
        FILE *fp = fopen(path, "r");
        if (!fp) {
            fprintf(stderr, "fake_amdsmi: cannot open config %s: %s\n", path, strerror(errno));
            return E_UNKNOWN;
        }
        char line[1024];
        unsigned int lineno = 0;
        while (fgets(line, sizeof line, fp)) {
            lineno++;
            char *s = trim(line);
            if (!*s || *s == '#') continue;
            char *eq = strchr(s, '=');
            if (!eq) {
                fprintf(stderr, "fake_amdsmi: %s:%u: expected key=value\n", path, lineno);
                fclose(fp);
                return E_UNKNOWN;
            }
            *eq = '\0';
            char *key = trim(s), *val = trim(eq + 1);
            if (!apply(key, val, &init_error)) {
                fprintf(stderr, "fake_amdsmi: %s:%u: bad key or value: %s=%s\n", path, lineno,
                        key, val);
                fclose(fp);
                return E_UNKNOWN;
            }
        }
        fclose(fp);
    }
    if (st.state_path[0] && init_error == 0) {
        unsigned int ret = open_state();
        if (ret != OK) return ret;
    }
    if (!st.t0_ns) st.t0_ns = now_ns();
    return init_error;
}

/* ---------------------------------------------------------------- lifecycle */

EXPORT unsigned int amdsmi_init(uint64_t flags) {
    COUNT();
    pthread_mutex_lock(&lock);
    unsigned int ret = OK;
    if (!(flags & (1u << 1))) {
        ret = E_INVAL; /* this stand-in models GPUs only */
    } else if (st.init_count == 0) {
        ret = load_config();
        if (ret == OK) st.init_count = 1;
    } else {
        st.init_count++;
    }
    pthread_mutex_unlock(&lock);
    return ret;
}

EXPORT unsigned int amdsmi_shut_down(void) {
    COUNT();
    pthread_mutex_lock(&lock);
    unsigned int ret = st.init_count > 0 ? OK : E_NOT_INIT;
    if (st.init_count > 0 && --st.init_count == 0) {
        if (st.state_fd >= 0) close(st.state_fd);
        st.state_fd = -1;
    }
    pthread_mutex_unlock(&lock);
    return ret;
}

EXPORT unsigned int amdsmi_status_code_to_string(unsigned int status, const char **out) {
    COUNT();
    if (!out) return E_INVAL;
    switch (status) {
    case 0: *out = "AMDSMI_STATUS_SUCCESS: Call succeeded"; break;
    case 1: *out = "AMDSMI_STATUS_INVAL: Invalid parameters"; break;
    case 2: *out = "AMDSMI_STATUS_NOT_SUPPORTED: Command not supported"; break;
    case 8: *out = "AMDSMI_STATUS_TIMEOUT: Timeout in API call"; break;
    case 10: *out = "AMDSMI_STATUS_NO_PERM: Permission Denied"; break;
    case 12: *out = "AMDSMI_STATUS_IO: I/O Error"; break;
    case 32: *out = "AMDSMI_STATUS_NOT_INIT: Device not initialized"; break;
    case 34: *out = "AMDSMI_STATUS_DRIVER_NOT_LOADED: Processor driver not loaded"; break;
    default: *out = "AMDSMI_STATUS_UNKNOWN_ERROR: An unknown error occurred"; break;
    }
    return OK;
}

/* amdsmi_version_t: {year, major, minor, release, build} in 6.x, {major, minor, release, build}
 * from 7.0; either way three leading words, then (at 16) the build string. */
EXPORT unsigned int amdsmi_get_lib_version(void *version) {
    COUNT();
    if (!version) return E_INVAL;
    pthread_mutex_lock(&lock);
    uint32_t words[4] = {st.version[0], st.version[1], st.version[2], 0};
    pthread_mutex_unlock(&lock);
    static const char *build = "fake";
    memcpy(version, words, sizeof words);
    memcpy((char *)version + 16, &build, sizeof build);
    return OK;
}

/* ---------------------------------------------------------------- enumeration */

#define WITH_INIT()                                                                                \
    pthread_mutex_lock(&lock);                                                                     \
    if (st.init_count <= 0) {                                                                      \
        pthread_mutex_unlock(&lock);                                                               \
        return E_NOT_INIT;                                                                         \
    }

#define DONE(code)                                                                                 \
    do {                                                                                           \
        pthread_mutex_unlock(&lock);                                                               \
        return (code);                                                                             \
    } while (0)

static unsigned int socket_count(void) { return (st.devices + st.per_socket - 1) / st.per_socket; }

/* Two-step lists: count with NULL, then fill up to *n. */
static unsigned int fill(uint32_t *n, void **out, void **items, unsigned int count) {
    if (!out) {
        *n = count;
        return OK;
    }
    unsigned int w = *n < count ? *n : count;
    for (unsigned int i = 0; i < w; i++) out[i] = items[i];
    *n = count;
    return w < count ? E_INSUFFICIENT_SIZE : OK;
}

EXPORT unsigned int amdsmi_get_socket_handles(uint32_t *n, void **handles) {
    COUNT();
    if (!n) return E_INVAL;
    WITH_INIT();
    void *items[MAX_DEVICES];
    unsigned int c = socket_count();
    for (unsigned int s = 0; s < c; s++) items[s] = &st.sockets[s];
    DONE(fill(n, handles, items, c));
}

EXPORT unsigned int amdsmi_get_processor_handles(void *socket, uint32_t *n, void **handles) {
    COUNT();
    if (!n) return E_INVAL;
    WITH_INIT();
    long s = (int *)socket - st.sockets;
    if (s < 0 || s >= (long)socket_count()) DONE(E_INVAL);
    void *items[MAX_DEVICES];
    unsigned int c = 0;
    for (unsigned int i = (unsigned int)s * st.per_socket;
         i < st.devices && i < ((unsigned int)s + 1) * st.per_socket; i++)
        items[c++] = &st.gpu[i];
    DONE(fill(n, handles, items, c));
}

static fake_gpu *gpu_of(void *h) {
    for (unsigned int i = 0; i < st.devices; i++)
        if (h == (void *)&st.gpu[i]) return &st.gpu[i];
    return NULL;
}

#define WITH_GPU(h, g)                                                                             \
    WITH_INIT();                                                                                   \
    fake_gpu *g = gpu_of(h);                                                                       \
    if (!g) DONE(E_INVAL);

EXPORT unsigned int amdsmi_get_processor_type(void *h, unsigned int *type) {
    COUNT();
    if (!type) return E_INVAL;
    WITH_GPU(h, g);
    *type = g->apu ? PROCESSOR_TYPE_AMD_APU : PROCESSOR_TYPE_AMD_GPU;
    DONE(OK);
}

EXPORT unsigned int amdsmi_get_gpu_device_bdf(void *h, uint64_t *bdf) {
    COUNT();
    if (!bdf) return E_INVAL;
    WITH_GPU(h, g);
    *bdf = g->bdf;
    DONE(OK);
}

EXPORT unsigned int amdsmi_get_gpu_device_uuid(void *h, unsigned int *len, char *uuid) {
    COUNT();
    if (!len || !uuid) return E_INVAL;
    WITH_GPU(h, g);
    size_t need = strlen(g->uuid) + 1;
    if (*len < need) DONE(E_INSUFFICIENT_SIZE);
    memcpy(uuid, g->uuid, need);
    *len = (unsigned int)need - 1;
    DONE(OK);
}

/* amdsmi_asic_info_t starts with char market_name[256], then uint32_t vendor_id. */
EXPORT unsigned int amdsmi_get_gpu_asic_info(void *h, void *info) {
    COUNT();
    if (!info) return E_INVAL;
    WITH_GPU(h, g);
    memset(info, 0, NAME_LEN + 4);
    snprintf((char *)info, NAME_LEN, "%s", g->name);
    uint32_t vendor = 0x1002;
    memcpy((char *)info + NAME_LEN, &vendor, sizeof vendor);
    DONE(OK);
}

/* ---------------------------------------------------------------- power and energy */

static double ms_since_t0(void) {
    unsigned long long t = now_ns();
    return t > st.t0_ns ? (double)(t - st.t0_ns) / 1e6 : 0.0;
}

static unsigned int injected(unsigned int code, double after_ms) {
    return code != 0 && ms_since_t0() >= after_ms ? code : 0;
}

EXPORT unsigned int amdsmi_get_energy_count(void *h, uint64_t *acc, float *res, uint64_t *ts) {
    COUNT();
    if (!acc || !res || !ts) return E_INVAL;
    WITH_GPU(h, g);
    if (!g->has_energy) DONE(E_NOT_SUPPORTED);
    unsigned int err = injected(g->energy_error, g->energy_error_after_ms);
    if (err) DONE(err);
    unsigned long long mj, mw;
    err = trace_now(g, &mj, &mw);
    if (err) DONE(err);
    *res = (float)g->resolution_uj;
    uint64_t count = (uint64_t)((double)mj * 1000.0 / (double)*res) + g->energy_offset;
    if (g->energy_bits == 32) count &= 0xFFFFFFFFull;
    *acc = g->zero ? 0 : g->energy_na ? UINT32_MAX : count;
    struct timespec wall;
    clock_gettime(CLOCK_REALTIME, &wall);
    *ts = (uint64_t)wall.tv_sec * 1000000000ull + (uint64_t)wall.tv_nsec;
    DONE(OK);
}

/* amdsmi_power_info_t, per release: 24.x {u32 current, u32 average, ...}; 25.x and later
 * {u64 socket_power, u32 current, u32 average, ...}. Unsupported members hold UINT32_MAX, but
 * in 24.x 0xFFFF (what its amdsmi_get_power_info sets first, and the gpu_metrics table's
 * uint16_t fields hold where the part lacks them: average on an MI300, current on RDNA). */
EXPORT unsigned int amdsmi_get_power_info(void *h, void *info) {
    COUNT();
    if (!info) return E_INVAL;
    WITH_GPU(h, g);
    if (!g->has_power) DONE(E_NOT_SUPPORTED);
    unsigned int err = injected(g->power_error, g->power_error_after_ms);
    if (err) DONE(err);
    unsigned long long mj, mw;
    err = trace_now(g, &mj, &mw);
    if (err) DONE(err);
    uint32_t w = g->zero ? 0 : (uint32_t)((mw + 500) / 1000);
    uint32_t na = st.version[0] == 24 ? 0xFFFF : UINT32_MAX;
    uint32_t current = na, average = na;
    uint64_t socket = UINT32_MAX;
    if (!strcmp(g->power_field, "current")) current = w;
    if (!strcmp(g->power_field, "average")) average = w;
    if (!strcmp(g->power_field, "socket")) socket = w;
    if (st.version[0] == 24) {
        memset(info, 0xff, 68);
        memcpy(info, &current, 4);
        memcpy((char *)info + 4, &average, 4);
    } else {
        memset(info, 0xff, 192);
        memcpy(info, &socket, 8);
        memcpy((char *)info + 8, &current, 4);
        memcpy((char *)info + 12, &average, 4);
    }
    DONE(OK);
}

/* ---------------------------------------------------------------- for tests */

EXPORT unsigned long long fake_amdsmi_call_count(void) {
    return __atomic_load_n(&calls, __ATOMIC_RELAXED);
}

EXPORT int fake_amdsmi_init_count(void) {
    pthread_mutex_lock(&lock);
    int n = st.init_count;
    pthread_mutex_unlock(&lock);
    return n;
}
