/*
 * A stand-in for libnvidia-ml.so.1: the NVML ABI over simulated GPUs.
 *
 * It computes no power trace. The simulator (the carbonctx-sim crate's writer thread) publishes
 * what each GPU reports at every millisecond tick in a state file (`state=` in the
 * configuration); a read looks up the slot of the tick it falls in. The one definition of the
 * waveforms is in rust/sim/src/wave.rs. Without a state file, GPUs read 0 mJ and 0 W.
 *
 * Build: cc -shared -fPIC -O2 -Wall -Wextra -o <dir>/libnvidia-ml.so.1 fake_nvml.c
 * Configuration: see README.md next to this file.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define EXPORT __attribute__((visibility("default")))

/* Return codes, as NVML numbers them. */
enum {
    OK = 0,
    E_UNINITIALIZED = 1,
    E_INVALID_ARGUMENT = 2,
    E_NOT_SUPPORTED = 3,
    E_NOT_FOUND = 6,
    E_INSUFFICIENT_SIZE = 7,
    E_UNKNOWN = 999,
};

#define MAX_DEVICES 64
#define NAME_LEN 96
#define UUID_LEN 96
#define MAX_MIG 8 /* MIG device slots per GPU (seven on an A100 or H100) */

struct fake_device;

/* A MIG device (a compute instance) in one of its GPU's slots; its address is its handle. */
typedef struct fake_mig {
    struct fake_device *parent;
    unsigned int slot;
    unsigned int slices;         /* the GPU slices of its GPU instance (gpuInstanceSliceCount) */
    unsigned int compute_slices; /* those of its compute instance (computeInstanceSliceCount) */
    char uuid[UUID_LEN]; /* empty: no instance in this slot */
} fake_mig;

typedef struct fake_device {
    unsigned int index;
    char name[NAME_LEN];
    char uuid[UUID_LEN];
    int has_energy;
    int has_power;
    unsigned int limit_w;
    unsigned long long memory_mib;
    int energy_error;
    double energy_error_after_ms;
    int power_error;
    double power_error_after_ms;
    int power_samples;           /* nvmlDeviceGetSamples(NVML_TOTAL_POWER_SAMPLES) offered */
    unsigned int power_sample_ms; /* one sample every this many ms */
    int power_sample_glitch;     /* 1: bad samples mixed in (NaN, negative, backwards) */
    int power_sample_strict;     /* 1: a buffer smaller than what is held: INSUFFICIENT_SIZE */
    unsigned int mig_slots;      /* 0: MIG not supported; else MIG on with this many slots */
    unsigned int mig_slices;     /* the GPU's slices (its largest profile); 0: slice calls fail */
    fake_mig mig[MAX_MIG];
} fake_device;

typedef struct fake_state {
    int init_count;
    unsigned int devices;
    unsigned long long t0_ns;
    char state_path[4096];
    int state_fd;
    unsigned long long tick_ns, ring_slots, state_devices;
    long long realtime_offset_ns; /* CLOCK_REALTIME - CLOCK_MONOTONIC when first asked */
    int have_offset;
    char driver_version[80];
    fake_device dev[MAX_DEVICES];
} fake_state;

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static fake_state st = {.state_fd = -1};
static unsigned long long calls;

/* Every exported NVML entry point counts itself here. */
#define COUNT() __atomic_add_fetch(&calls, 1, __ATOMIC_RELAXED)

static unsigned long long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (unsigned long long)ts.tv_sec * 1000000000ull + (unsigned long long)ts.tv_nsec;
}

/* ---------------------------------------------------------------- configuration */

static void defaults(void) {
    memset(&st.dev, 0, sizeof st.dev);
    st.devices = 1;
    st.t0_ns = 0;
    st.state_path[0] = '\0';
    snprintf(st.driver_version, sizeof st.driver_version, "%s", "999.99.99");
    for (unsigned int i = 0; i < MAX_DEVICES; i++) {
        fake_device *d = &st.dev[i];
        d->index = i;
        snprintf(d->name, sizeof d->name, "Fake GPU %u", i);
        snprintf(d->uuid, sizeof d->uuid, "GPU-00000000-0000-0000-0000-%012x", i);
        d->has_energy = 1;
        d->has_power = 1;
        d->limit_w = 300;
        d->memory_mib = 16384;
        d->power_samples = 1;
        d->power_sample_ms = 20;
        d->mig_slices = 7;
        for (unsigned int m = 0; m < MAX_MIG; m++) {
            d->mig[m].parent = d;
            d->mig[m].slot = m;
            d->mig[m].slices = 1;
        }
    }
    st.have_offset = 0;
}

static char *trim(char *s) {
    while (*s == ' ' || *s == '\t') s++;
    size_t n = strlen(s);
    while (n > 0 && (s[n - 1] == ' ' || s[n - 1] == '\t' || s[n - 1] == '\n' || s[n - 1] == '\r'))
        s[--n] = '\0';
    return s;
}

static int parse_double(const char *v, double *out) {
    char *end;
    errno = 0;
    double x = strtod(v, &end);
    if (errno || end == v || *end) return 0;
    *out = x;
    return 1;
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

static int parse_int(const char *v, int *out) {
    char *end;
    errno = 0;
    long x = strtol(v, &end, 10);
    if (errno || end == v || *end || x < INT_MIN || x > INT_MAX) return 0;
    *out = (int)x;
    return 1;
}

/* gpuK.mig: the MIG instances' UUIDs, comma-separated, one per slot (an empty item is a slot
 * without an instance), each optionally followed by `:S`, its GPU instance's slices (1 to 8,
 * default 1), and `:C`, its compute instance's (1 to S, default S); MIG is then on, with as many
 * slots as items. */
static int parse_mig(fake_device *d, const char *val) {
    unsigned int n = 0;
    const char *p = val;
    for (;;) {
        const char *end = strchr(p, ',');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        if (n >= MAX_MIG || len >= UUID_LEN) return 0;
        char item[UUID_LEN];
        memcpy(item, p, len);
        item[len] = '\0';
        char *colon = strchr(item, ':');
        unsigned long long slices = 1, compute = 0;
        if (colon) {
            *colon = '\0';
            char *second = strchr(colon + 1, ':');
            if (second) {
                *second = '\0';
                if (!parse_ull(trim(second + 1), &compute) || compute < 1) return 0;
            }
            if (!parse_ull(trim(colon + 1), &slices) || slices < 1 || slices > 8) return 0;
            if (compute > slices) return 0;
        }
        snprintf(d->mig[n].uuid, UUID_LEN, "%s", trim(item));
        d->mig[n].slices = (unsigned int)slices;
        d->mig[n].compute_slices = compute ? (unsigned int)compute : (unsigned int)slices;
        n++;
        if (!end) break;
        p = end + 1;
    }
    for (unsigned int m = n; m < MAX_MIG; m++) d->mig[m].uuid[0] = '\0';
    d->mig_slots = n;
    return 1;
}

/* Applies one key=value; returns 1 when understood. */
static int apply(const char *key, const char *val, int *init_error) {
    unsigned long long u;
    double x;
    if (!strcmp(key, "devices")) {
        if (!parse_ull(val, &u) || u > MAX_DEVICES) return 0;
        st.devices = (unsigned int)u;
        return 1;
    }
    if (!strcmp(key, "t0_ns")) return parse_ull(val, &st.t0_ns);
    if (!strcmp(key, "state"))
        return snprintf(st.state_path, sizeof st.state_path, "%s", val) < (int)sizeof st.state_path;
    if (!strcmp(key, "init_error")) return parse_int(val, init_error);
    if (!strcmp(key, "driver_version")) {
        snprintf(st.driver_version, sizeof st.driver_version, "%s", val);
        return 1;
    }
    unsigned int k;
    int used = 0;
    if (sscanf(key, "gpu%u.%n", &k, &used) != 1 || used == 0 || k >= MAX_DEVICES) return 0;
    fake_device *d = &st.dev[k];
    const char *f = key + used;
    if (!strcmp(f, "name")) return snprintf(d->name, sizeof d->name, "%s", val) < NAME_LEN;
    if (!strcmp(f, "uuid")) return snprintf(d->uuid, sizeof d->uuid, "%s", val) < UUID_LEN;
    if (!strcmp(f, "has_energy")) return parse_int(val, &d->has_energy);
    if (!strcmp(f, "has_power")) return parse_int(val, &d->has_power);
    if (!strcmp(f, "limit_w")) {
        if (!parse_ull(val, &u) || u > 100000) return 0;
        d->limit_w = (unsigned int)u;
        return 1;
    }
    if (!strcmp(f, "memory_mib")) return parse_ull(val, &d->memory_mib);
    if (!strcmp(f, "energy_error")) return parse_int(val, &d->energy_error);
    if (!strcmp(f, "energy_error_after_ms"))
        return parse_double(val, &x) && x >= 0 && ((d->energy_error_after_ms = x), 1);
    if (!strcmp(f, "power_error")) return parse_int(val, &d->power_error);
    if (!strcmp(f, "power_error_after_ms"))
        return parse_double(val, &x) && x >= 0 && ((d->power_error_after_ms = x), 1);
    if (!strcmp(f, "power_samples")) return parse_int(val, &d->power_samples);
    if (!strcmp(f, "power_sample_ms")) {
        if (!parse_ull(val, &u) || u == 0 || u > 1000) return 0;
        d->power_sample_ms = (unsigned int)u;
        return 1;
    }
    if (!strcmp(f, "power_sample_glitch")) return parse_int(val, &d->power_sample_glitch);
    if (!strcmp(f, "power_sample_strict")) return parse_int(val, &d->power_sample_strict);
    if (!strcmp(f, "mig")) return parse_mig(d, val);
    if (!strcmp(f, "mig_slices")) {
        if (!parse_ull(val, &u) || u > 8 || u == 5) return 0;
        d->mig_slices = (unsigned int)u;
        return 1;
    }
    return 0;
}

/* The config file: $FAKE_NVML_CONFIG, else fake_nvml.conf beside this library, else none. */
static int config_path(char *out, size_t len) {
    const char *env = getenv("FAKE_NVML_CONFIG");
    if (env && *env) return snprintf(out, len, "%s", env) < (int)len;
    Dl_info info;
    if (!dladdr((void *)&config_path, &info) || !info.dli_fname) return 0;
    const char *slash = strrchr(info.dli_fname, '/');
    if (!slash) return 0;
    int n = (int)(slash - info.dli_fname);
    if (snprintf(out, len, "%.*s/fake_nvml.conf", n, info.dli_fname) >= (int)len) return 0;
    FILE *probe = fopen(out, "r");
    if (!probe) return 0;
    fclose(probe);
    return 1;
}

static int open_state(void);

/* Loads the configuration; returns the code nvmlInit should return. Caller holds the lock. */
static int load_config(void) {
    defaults();
    int init_error = 0;
    char path[4096];
    if (config_path(path, sizeof path)) {
        FILE *fp = fopen(path, "r");
        if (!fp) {
            fprintf(stderr, "fake_nvml: cannot open config %s: %s\n", path, strerror(errno));
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
                fprintf(stderr, "fake_nvml: %s:%u: expected key=value\n", path, lineno);
                fclose(fp);
                return E_UNKNOWN;
            }
            *eq = '\0';
            char *key = trim(s), *val = trim(eq + 1);
            if (!apply(key, val, &init_error)) {
                fprintf(stderr, "fake_nvml: %s:%u: bad key or value: %s=%s\n", path, lineno, key,
                        val);
                fclose(fp);
                return E_UNKNOWN;
            }
        }
        fclose(fp);
    }
    if (st.state_path[0] && init_error == 0) {
        int ret = open_state();
        if (ret != OK) return ret;
    }
    if (!st.t0_ns) st.t0_ns = now_ns();
    return init_error;
}

/* ---------------------------------------------------------------- the published trace */

/* The state file's layout (native-endian 64-bit words; see rust/sim/src/gpu.rs): a header of 8
 * words (magic "CCXGPU01", version 1, tick ns, t0 ns, GPUs, slots per GPU, last tick published
 * plus one, reserved), then per GPU a ring of slots of 8 words (tick plus one, energy mJ, power
 * mW, instantaneous power mW, busy, reserved x3). */
#define STATE_MAGIC 0x3130555047584343ull /* "CCXGPU01" read as a little-endian word */
#define HEADER_WORDS 8
#define SLOT_WORDS 8
#define LAST_TICK_WORD 6

typedef struct trace_point {
    unsigned long long energy_mj, power_mw, instant_mw, busy;
} trace_point;

static int read_words(unsigned long long *out, size_t n, unsigned long long word) {
    size_t len = n * sizeof *out;
    return pread(st.state_fd, out, len, (off_t)(word * sizeof *out)) == (ssize_t)len;
}

/* Opens the state file and reads its header; caller holds the lock. */
static int open_state(void) {
    st.state_fd = open(st.state_path, O_RDONLY | O_CLOEXEC);
    if (st.state_fd < 0) {
        fprintf(stderr, "fake_nvml: cannot open state %s: %s\n", st.state_path, strerror(errno));
        return E_UNKNOWN;
    }
    unsigned long long h[HEADER_WORDS];
    if (!read_words(h, HEADER_WORDS, 0) || h[0] != STATE_MAGIC || h[1] != 1 || !h[2] || !h[5]) {
        fprintf(stderr, "fake_nvml: %s is not a carbonctx-sim GPU state file\n", st.state_path);
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

static void close_state(void) {
    if (st.state_fd >= 0) close(st.state_fd);
    st.state_fd = -1;
}

/* What device `d` reports now: the published slot of the current tick, or of the last tick
 * published when the simulator is behind or stopped. Caller holds the lock. */
static int trace_at(const fake_device *d, unsigned long long tick, trace_point *p);
static int trace_now(const fake_device *d, trace_point *p) {
    unsigned long long now = now_ns();
    if (!st.tick_ns) return trace_at(d, 0, p); /* no state file: reads 0 */
    return trace_at(d, now > st.t0_ns ? (now - st.t0_ns) / st.tick_ns : 0, p);
}

/* What device `d` reported during `tick` (one still in the ring), or the last tick published
 * when that one is not published yet. Caller holds the lock. */
static int trace_at(const fake_device *d, unsigned long long tick, trace_point *p) {
    memset(p, 0, sizeof *p);
    if (st.state_fd < 0 || d->index >= st.state_devices) return OK;
    for (int attempt = 0; attempt < 1000; attempt++) {
        unsigned long long last, w[SLOT_WORDS];
        if (!read_words(&last, 1, LAST_TICK_WORD)) return E_UNKNOWN;
        if (last == 0) return OK;
        unsigned long long t = tick < last - 1 ? tick : last - 1;
        unsigned long long slot = d->index * st.ring_slots + t % st.ring_slots;
        if (!read_words(w, SLOT_WORDS, HEADER_WORDS + slot * SLOT_WORDS)) return E_UNKNOWN;
        if (w[0] != t + 1) continue; /* being rewritten: read again */
        p->energy_mj = w[1];
        p->power_mw = w[2];
        p->instant_mw = w[3];
        p->busy = w[4];
        return OK;
    }
    return E_UNKNOWN;
}

static double ms_since_t0(unsigned long long t) {
    return t > st.t0_ns ? (double)(t - st.t0_ns) / 1e6 : 0.0;
}

static int injected(int code, double after_ms, double ms) {
    return code != 0 && ms >= after_ms ? code : 0;
}

/* Looks a handle up; caller holds the lock. */
static fake_device *device(void *handle) {
    if (st.init_count <= 0) return NULL;
    for (unsigned int i = 0; i < st.devices; i++)
        if (handle == (void *)&st.dev[i]) return &st.dev[i];
    return NULL;
}

/* Looks a MIG device's handle up (one with an instance); caller holds the lock. */
static fake_mig *mig_device(void *handle) {
    if (st.init_count <= 0) return NULL;
    for (unsigned int i = 0; i < st.devices; i++)
        for (unsigned int m = 0; m < st.dev[i].mig_slots; m++)
            if (handle == (void *)&st.dev[i].mig[m] && st.dev[i].mig[m].uuid[0])
                return &st.dev[i].mig[m];
    return NULL;
}

/* A GPU's handle, else NOT_SUPPORTED for a MIG device's (the calls that answer for one look it
 * up first: NVML reads power and energy per GPU, not per instance), else INVALID_ARGUMENT. */
#define WITH_DEVICE(handle, d)                                                                     \
    pthread_mutex_lock(&lock);                                                                     \
    if (st.init_count <= 0) {                                                                      \
        pthread_mutex_unlock(&lock);                                                               \
        return E_UNINITIALIZED;                                                                    \
    }                                                                                              \
    fake_device *d = device(handle);                                                               \
    if (!d) {                                                                                      \
        int bad_ = mig_device(handle) ? E_NOT_SUPPORTED : E_INVALID_ARGUMENT;                     \
        pthread_mutex_unlock(&lock);                                                               \
        return bad_;                                                                               \
    }

#define DONE(code)                                                                                 \
    do {                                                                                           \
        pthread_mutex_unlock(&lock);                                                               \
        return (code);                                                                             \
    } while (0)

static int copy_string(char *out, unsigned int len, const char *s) {
    if (!out) return E_INVALID_ARGUMENT;
    if (strlen(s) + 1 > len) return E_INSUFFICIENT_SIZE;
    memcpy(out, s, strlen(s) + 1);
    return OK;
}

/* ---------------------------------------------------------------- lifecycle */

static int init_common(void) {
    pthread_mutex_lock(&lock);
    int ret = OK;
    if (st.init_count == 0) {
        ret = load_config();
        if (ret == OK) st.init_count = 1;
    } else {
        st.init_count++;
    }
    pthread_mutex_unlock(&lock);
    return ret;
}

EXPORT int nvmlInit(void) { COUNT(); return init_common(); }
EXPORT int nvmlInit_v2(void) { COUNT(); return init_common(); }
EXPORT int nvmlInitWithFlags(unsigned int flags) { (void)flags; COUNT(); return init_common(); }

EXPORT int nvmlShutdown(void) {
    COUNT();
    pthread_mutex_lock(&lock);
    int ret = st.init_count > 0 ? OK : E_UNINITIALIZED;
    if (st.init_count > 0 && --st.init_count == 0) close_state();
    pthread_mutex_unlock(&lock);
    return ret;
}

EXPORT const char *nvmlErrorString(int code) {
    COUNT();
    switch (code) {
    case 0: return "Success";
    case 1: return "Uninitialized";
    case 2: return "Invalid Argument";
    case 3: return "Not Supported";
    case 4: return "Insufficient Permissions";
    case 5: return "Already Initialized";
    case 6: return "Not Found";
    case 7: return "Insufficient Size";
    case 8: return "Insufficient External Power";
    case 9: return "Driver Not Loaded";
    case 10: return "Timeout";
    case 11: return "Interrupt request issue";
    case 12: return "NVML Shared Library Not Found";
    case 13: return "Function Not Found";
    case 14: return "Corrupted infoROM";
    case 15: return "GPU is lost";
    case 16: return "GPU requires restart";
    case 17: return "The operating system has blocked the request";
    case 18: return "RM has detected an NVML/RM version mismatch";
    case 19: return "In use by another client";
    case 20: return "Insufficient Memory";
    case 21: return "No data";
    default: return "Unknown Error";
    }
}

/* ---------------------------------------------------------------- system */

EXPORT int nvmlSystemGetDriverVersion(char *version, unsigned int length) {
    COUNT();
    pthread_mutex_lock(&lock);
    int ret = st.init_count > 0 ? copy_string(version, length, st.driver_version) : E_UNINITIALIZED;
    DONE(ret);
}

EXPORT int nvmlSystemGetNVMLVersion(char *version, unsigned int length) {
    COUNT();
    return copy_string(version, length, "12.999.99");
}

static int cuda_version(int *v) {
    COUNT();
    if (!v) return E_INVALID_ARGUMENT;
    *v = 12040;
    return OK;
}
EXPORT int nvmlSystemGetCudaDriverVersion(int *v) { return cuda_version(v); }
EXPORT int nvmlSystemGetCudaDriverVersion_v2(int *v) { return cuda_version(v); }

/* ---------------------------------------------------------------- enumeration */

static int get_count(unsigned int *count) {
    COUNT();
    if (!count) return E_INVALID_ARGUMENT;
    pthread_mutex_lock(&lock);
    if (st.init_count <= 0) DONE(E_UNINITIALIZED);
    *count = st.devices;
    DONE(OK);
}
EXPORT int nvmlDeviceGetCount(unsigned int *count) { return get_count(count); }
EXPORT int nvmlDeviceGetCount_v2(unsigned int *count) { return get_count(count); }

static int by_index(unsigned int index, void **handle) {
    COUNT();
    if (!handle) return E_INVALID_ARGUMENT;
    pthread_mutex_lock(&lock);
    if (st.init_count <= 0) DONE(E_UNINITIALIZED);
    if (index >= st.devices) DONE(E_INVALID_ARGUMENT);
    *handle = &st.dev[index];
    DONE(OK);
}
EXPORT int nvmlDeviceGetHandleByIndex(unsigned int i, void **h) { return by_index(i, h); }
EXPORT int nvmlDeviceGetHandleByIndex_v2(unsigned int i, void **h) { return by_index(i, h); }

EXPORT int nvmlDeviceGetHandleByUUID(const char *uuid, void **handle) {
    COUNT();
    if (!uuid || !handle) return E_INVALID_ARGUMENT;
    pthread_mutex_lock(&lock);
    if (st.init_count <= 0) DONE(E_UNINITIALIZED);
    for (unsigned int i = 0; i < st.devices; i++) {
        if (!strcmp(st.dev[i].uuid, uuid)) {
            *handle = &st.dev[i];
            DONE(OK);
        }
        /* A MIG instance's UUID gives its MIG device handle. */
        for (unsigned int m = 0; m < st.dev[i].mig_slots; m++) {
            if (st.dev[i].mig[m].uuid[0] && !strcmp(st.dev[i].mig[m].uuid, uuid)) {
                *handle = &st.dev[i].mig[m];
                DONE(OK);
            }
        }
    }
    DONE(E_NOT_FOUND);
}

/* ---------------------------------------------------------------- identity */

EXPORT int nvmlDeviceGetIndex(void *h, unsigned int *index) {
    COUNT();
    if (!index) return E_INVALID_ARGUMENT;
    pthread_mutex_lock(&lock);
    fake_mig *mig = mig_device(h);
    pthread_mutex_unlock(&lock);
    if (mig) {
        *index = mig->slot; /* a MIG device's index is its slot under its GPU */
        return OK;
    }
    WITH_DEVICE(h, d);
    *index = d->index;
    DONE(OK);
}

EXPORT int nvmlDeviceGetName(void *h, char *name, unsigned int length) {
    COUNT();
    pthread_mutex_lock(&lock);
    fake_mig *mig = mig_device(h);
    if (mig) {
        /* As drivers name a MIG device: the GPU's name, then its profile (slices, memory). */
        const fake_device *p = mig->parent;
        unsigned long long gb =
            p->mig_slices ? (p->memory_mib * mig->slices / p->mig_slices + 512) / 1024 : 0;
        char full[NAME_LEN + 40];
        char ci[16] = ""; /* a compute instance smaller than its GPU instance: `1c.` first */
        if (mig->compute_slices < mig->slices) snprintf(ci, sizeof ci, "%uc.", mig->compute_slices);
        snprintf(full, sizeof full, "%s MIG %s%ug.%llugb", p->name, ci, mig->slices, gb);
        DONE(copy_string(name, length, full));
    }
    pthread_mutex_unlock(&lock);
    WITH_DEVICE(h, d);
    DONE(copy_string(name, length, d->name));
}

EXPORT int nvmlDeviceGetUUID(void *h, char *uuid, unsigned int length) {
    COUNT();
    pthread_mutex_lock(&lock);
    fake_mig *mig = mig_device(h);
    if (mig) DONE(copy_string(uuid, length, mig->uuid));
    pthread_mutex_unlock(&lock);
    WITH_DEVICE(h, d);
    DONE(copy_string(uuid, length, d->uuid));
}

typedef struct {
    char busIdLegacy[16];
    unsigned int domain, bus, device, pciDeviceId, pciSubSystemId;
    char busId[32];
} pci_info_v3;

EXPORT int nvmlDeviceGetPciInfo_v3(void *h, pci_info_v3 *pci) {
    COUNT();
    if (!pci) return E_INVALID_ARGUMENT;
    WITH_DEVICE(h, d);
    memset(pci, 0, sizeof *pci);
    pci->bus = d->index + 1;
    snprintf(pci->busIdLegacy, sizeof pci->busIdLegacy, "0000:%02X:00.0", pci->bus);
    snprintf(pci->busId, sizeof pci->busId, "00000000:%02X:00.0", pci->bus);
    DONE(OK);
}

/* ---------------------------------------------------------------- power and energy */

EXPORT int nvmlDeviceGetTotalEnergyConsumption(void *h, unsigned long long *energy) {
    COUNT();
    if (!energy) return E_INVALID_ARGUMENT;
    WITH_DEVICE(h, d);
    if (!d->has_energy) DONE(E_NOT_SUPPORTED);
    double ms = ms_since_t0(now_ns());
    int err = injected(d->energy_error, d->energy_error_after_ms, ms);
    if (err) DONE(err);
    trace_point p;
    err = trace_now(d, &p);
    if (err) DONE(err);
    *energy = p.energy_mj;
    DONE(OK);
}

EXPORT int nvmlDeviceGetPowerUsage(void *h, unsigned int *power) {
    COUNT();
    if (!power) return E_INVALID_ARGUMENT;
    WITH_DEVICE(h, d);
    if (!d->has_power) DONE(E_NOT_SUPPORTED);
    double ms = ms_since_t0(now_ns());
    int err = injected(d->power_error, d->power_error_after_ms, ms);
    if (err) DONE(err);
    trace_point p;
    err = trace_now(d, &p);
    if (err) DONE(err);
    *power = (unsigned int)p.power_mw;
    DONE(OK);
}

static int power_limit(void *h, unsigned int *limit) {
    COUNT();
    if (!limit) return E_INVALID_ARGUMENT;
    WITH_DEVICE(h, d);
    *limit = d->limit_w * 1000u;
    DONE(OK);
}
EXPORT int nvmlDeviceGetPowerManagementLimit(void *h, unsigned int *l) { return power_limit(h, l); }
EXPORT int nvmlDeviceGetEnforcedPowerLimit(void *h, unsigned int *l) { return power_limit(h, l); }

typedef union {
    double dVal;
    int siVal;
    unsigned int uiVal;
    unsigned long ulVal;
    unsigned long long ullVal;
    signed long long sllVal;
    unsigned short usVal;
} nvml_value;

typedef struct {
    unsigned int fieldId;
    unsigned int scopeId;
    long long timestamp;
    long long latencyUsec;
    int valueType;
    int nvmlReturn;
    nvml_value value;
} nvml_field_value;

#define FI_POWER_AVERAGE 185
#define FI_POWER_INSTANT 186
#define VALUE_TYPE_UNSIGNED_INT 1

EXPORT int nvmlDeviceGetFieldValues(void *h, int count, nvml_field_value *values) {
    COUNT();
    if (count <= 0 || !values) return E_INVALID_ARGUMENT;
    WITH_DEVICE(h, d);
    struct timespec wall;
    clock_gettime(CLOCK_REALTIME, &wall);
    double ms = ms_since_t0(now_ns());
    trace_point p;
    int trace_err = trace_now(d, &p);
    for (int i = 0; i < count; i++) {
        nvml_field_value *v = &values[i];
        v->timestamp = (long long)wall.tv_sec * 1000000LL + wall.tv_nsec / 1000;
        v->latencyUsec = 0;
        v->value.ullVal = 0;
        int err = injected(d->power_error, d->power_error_after_ms, ms);
        if (v->fieldId != FI_POWER_INSTANT && v->fieldId != FI_POWER_AVERAGE) {
            v->nvmlReturn = E_NOT_SUPPORTED;
        } else if (!d->has_power) {
            v->nvmlReturn = E_NOT_SUPPORTED;
        } else if (err || trace_err) {
            v->nvmlReturn = err ? err : trace_err;
        } else {
            /* Instant power is the trace now; the average is what nvmlDeviceGetPowerUsage says. */
            v->valueType = VALUE_TYPE_UNSIGNED_INT;
            v->value.uiVal = (unsigned int)(v->fieldId == FI_POWER_INSTANT ? p.instant_mw : p.power_mw);
            v->nvmlReturn = OK;
        }
    }
    DONE(OK);
}

/* ---------------------------------------------------------------- the driver's power samples */

typedef struct {
    unsigned long long timeStamp;
    nvml_value sampleValue;
} nvml_sample;

#define TOTAL_POWER_SAMPLES 0
#define VALUE_TYPE_DOUBLE 0
/* The driver's buffer: the most recent 0.8 s of samples (the trace's ring keeps about 1 s). */
#define SAMPLES_KEPT_MS 800

/* The mean power (mW) over the `ticks` ticks before tick `end` (exclusive). */
static int mean_mw(const fake_device *d, unsigned long long end, unsigned long long ticks,
                   double *out) {
    double sum = 0;
    for (unsigned long long k = end - ticks; k < end; k++) {
        trace_point p;
        int err = trace_at(d, k, &p);
        if (err) return err;
        sum += (double)p.instant_mw;
    }
    *out = sum / (double)ticks;
    return OK;
}

/* NVML_TOTAL_POWER_SAMPLES: one sample every `power_sample_ms` since t0, each the mean power
 * over the period it ends, stamped with CLOCK_REALTIME in µs (the monotonic instant plus the
 * clocks' offset, taken once). Those newer than `last_seen`, oldest first; with `samples` NULL,
 * how many there are. None: NVML_ERROR_NOT_FOUND. With `power_sample_glitch`, the samples come
 * as doubles (mW) and each is followed by a bad one: NaN, negative, or stamped before it. With
 * `power_sample_strict`, a buffer too small for them all is NVML_ERROR_INSUFFICIENT_SIZE. */
EXPORT int nvmlDeviceGetSamples(void *h, int type, unsigned long long last_seen, int *value_type,
                                unsigned int *count, nvml_sample *samples) {
    COUNT();
    if (!value_type || !count) return E_INVALID_ARGUMENT;
    WITH_DEVICE(h, d);
    if (type != TOTAL_POWER_SAMPLES || !d->power_samples || !d->has_power) DONE(E_NOT_SUPPORTED);
    unsigned long long now = now_ns();
    int err = injected(d->power_error, d->power_error_after_ms, ms_since_t0(now));
    if (err) DONE(err);
    if (!st.have_offset) {
        struct timespec rt;
        clock_gettime(CLOCK_REALTIME, &rt);
        unsigned long long mono = now_ns();
        long long rt_ns = (long long)rt.tv_sec * 1000000000LL + (long long)rt.tv_nsec;
        st.realtime_offset_ns = rt_ns - (long long)mono;
        st.have_offset = 1;
    }
    unsigned long long period_ns = (unsigned long long)d->power_sample_ms * 1000000ull;
    unsigned long long since = now > st.t0_ns ? now - st.t0_ns : 0;
    unsigned long long newest = since / period_ns; /* samples 1..newest exist */
    unsigned long long kept = SAMPLES_KEPT_MS / d->power_sample_ms;
    unsigned long long oldest = newest > kept ? newest - kept + 1 : 1;
    int per = d->power_sample_glitch ? 2 : 1;
    unsigned int cap = samples ? *count : UINT_MAX;
    unsigned int n = 0;
    if (samples && d->power_sample_strict) {
        /* A driver that refuses a buffer smaller than the samples it holds (nvml.h says it fills
         * what fits; the sampler copes with either). */
        unsigned long long held = 0;
        for (unsigned long long j = oldest; j <= newest; j++) {
            unsigned long long mono = st.t0_ns + j * period_ns;
            if ((unsigned long long)((long long)mono + st.realtime_offset_ns) / 1000ull > last_seen)
                held += (unsigned long long)per;
        }
        if (held > cap) DONE(E_INSUFFICIENT_SIZE);
    }
    *value_type = d->power_sample_glitch ? VALUE_TYPE_DOUBLE : VALUE_TYPE_UNSIGNED_INT;
    for (unsigned long long j = oldest; j <= newest; j++) {
        unsigned long long mono = st.t0_ns + j * period_ns;
        unsigned long long us =
            (unsigned long long)((long long)mono + st.realtime_offset_ns) / 1000ull;
        if (us <= last_seen) continue;
        if (n + per > cap) break;
        if (samples) {
            double mw;
            unsigned long long ticks = period_ns / (st.tick_ns ? st.tick_ns : 1000000ull);
            err = mean_mw(d, j * ticks, ticks ? ticks : 1, &mw);
            if (err) DONE(err);
            samples[n].timeStamp = us;
            if (d->power_sample_glitch) {
                samples[n].sampleValue.dVal = mw;
                samples[n + 1].timeStamp = j % 3 == 2 ? us - 10000 : us + 1;
                samples[n + 1].sampleValue.dVal = j % 3 == 0 ? NAN : j % 3 == 1 ? -5e5 : 5e9;
            } else {
                samples[n].sampleValue.uiVal = (unsigned int)(mw + 0.5);
            }
        }
        n += per;
    }
    *count = n;
    DONE(n ? OK : E_NOT_FOUND);
}

/* ---------------------------------------------------------------- other common queries */

typedef struct {
    unsigned long long total, free, used;
} memory_v1;

typedef struct {
    unsigned int version;
    unsigned long long total, reserved, free, used;
} memory_v2;

EXPORT int nvmlDeviceGetMemoryInfo(void *h, memory_v1 *m) {
    COUNT();
    if (!m) return E_INVALID_ARGUMENT;
    WITH_DEVICE(h, d);
    m->total = d->memory_mib << 20;
    m->free = m->total;
    m->used = 0;
    DONE(OK);
}

EXPORT int nvmlDeviceGetMemoryInfo_v2(void *h, memory_v2 *m) {
    COUNT();
    if (!m) return E_INVALID_ARGUMENT;
    WITH_DEVICE(h, d);
    m->total = d->memory_mib << 20;
    m->reserved = 0;
    m->free = m->total;
    m->used = 0;
    DONE(OK);
}

typedef struct {
    unsigned int gpu, memory;
} utilization;

EXPORT int nvmlDeviceGetUtilizationRates(void *h, utilization *u) {
    COUNT();
    if (!u) return E_INVALID_ARGUMENT;
    WITH_DEVICE(h, d);
    /* Busy while the trace is high. */
    trace_point p;
    int err = trace_now(d, &p);
    if (err) DONE(err);
    int high = p.busy != 0;
    u->gpu = high ? 100 : 0;
    u->memory = high ? 50 : 0;
    DONE(OK);
}

EXPORT int nvmlDeviceGetTemperature(void *h, int sensor, unsigned int *temp) {
    COUNT();
    if (!temp || sensor != 0) return E_INVALID_ARGUMENT;
    WITH_DEVICE(h, d);
    *temp = 40 + d->index;
    DONE(OK);
}

static int no_processes(void *h, unsigned int *count, void *infos) {
    COUNT();
    (void)infos;
    if (!count) return E_INVALID_ARGUMENT;
    WITH_DEVICE(h, d);
    (void)d;
    *count = 0;
    DONE(OK);
}
EXPORT int nvmlDeviceGetComputeRunningProcesses(void *h, unsigned int *c, void *i) {
    return no_processes(h, c, i);
}
EXPORT int nvmlDeviceGetComputeRunningProcesses_v2(void *h, unsigned int *c, void *i) {
    return no_processes(h, c, i);
}
EXPORT int nvmlDeviceGetComputeRunningProcesses_v3(void *h, unsigned int *c, void *i) {
    return no_processes(h, c, i);
}

/* Queries the stand-in does not model. */
static int unsupported(void) { COUNT(); return E_NOT_SUPPORTED; }
EXPORT int nvmlDeviceGetClockInfo(void *h, int t, unsigned int *c) {
    (void)h, (void)t, (void)c;
    return unsupported();
}
EXPORT int nvmlDeviceGetArchitecture(void *h, unsigned int *a) { (void)h, (void)a; return unsupported(); }
EXPORT int nvmlDeviceGetCudaComputeCapability(void *h, int *major, int *minor) {
    (void)h, (void)major, (void)minor;
    return unsupported();
}
EXPORT int nvmlDeviceGetComputeMode(void *h, int *m) { (void)h, (void)m; return unsupported(); }

/* ---------------------------------------------------------------- MIG */

#ifndef FAKE_NVML_NO_MIG /* built without: a driver older than MIG (before R450) */

#define MIG_ENABLE 1

EXPORT int nvmlDeviceGetMigMode(void *h, unsigned int *current, unsigned int *pending) {
    COUNT();
    if (!current || !pending) return E_INVALID_ARGUMENT;
    WITH_DEVICE(h, d);
    if (!d->mig_slots) DONE(E_NOT_SUPPORTED);
    *current = *pending = MIG_ENABLE;
    DONE(OK);
}

/* Zero where MIG is off or not supported, as NVML says. */
EXPORT int nvmlDeviceGetMaxMigDeviceCount(void *h, unsigned int *count) {
    COUNT();
    if (!count) return E_INVALID_ARGUMENT;
    WITH_DEVICE(h, d);
    *count = d->mig_slots;
    DONE(OK);
}

EXPORT int nvmlDeviceGetMigDeviceHandleByIndex(void *h, unsigned int index, void **mig) {
    COUNT();
    if (!mig) return E_INVALID_ARGUMENT;
    WITH_DEVICE(h, d);
    if (!d->mig_slots) DONE(E_NOT_SUPPORTED);
    if (index >= d->mig_slots) DONE(E_INVALID_ARGUMENT);
    if (!d->mig[index].uuid[0]) DONE(E_NOT_FOUND);
    *mig = &d->mig[index];
    DONE(OK);
}

EXPORT int nvmlDeviceIsMigDeviceHandle(void *h, unsigned int *is_mig) {
    COUNT();
    if (!is_mig) return E_INVALID_ARGUMENT;
    pthread_mutex_lock(&lock);
    if (st.init_count <= 0) DONE(E_UNINITIALIZED);
    if (mig_device(h)) {
        *is_mig = 1;
        DONE(OK);
    }
    if (!device(h)) DONE(E_INVALID_ARGUMENT);
    *is_mig = 0;
    DONE(OK);
}

EXPORT int nvmlDeviceGetDeviceHandleFromMigDeviceHandle(void *h, void **parent) {
    COUNT();
    if (!parent) return E_INVALID_ARGUMENT;
    pthread_mutex_lock(&lock);
    if (st.init_count <= 0) DONE(E_UNINITIALIZED);
    fake_mig *mig = mig_device(h);
    if (!mig) DONE(E_INVALID_ARGUMENT);
    *parent = mig->parent;
    DONE(OK);
}

/* A MIG device's GPU instance id (its slot + 1) and compute instance id (0), as the legacy
 * MIG-GPU-<uuid>/<gi>/<ci> names them. */
EXPORT int nvmlDeviceGetGpuInstanceId(void *h, unsigned int *id) {
    COUNT();
    if (!id) return E_INVALID_ARGUMENT;
    pthread_mutex_lock(&lock);
    if (st.init_count <= 0) DONE(E_UNINITIALIZED);
    fake_mig *mig = mig_device(h);
    if (!mig) DONE(device(h) ? E_NOT_SUPPORTED : E_INVALID_ARGUMENT);
    *id = mig->slot + 1;
    DONE(OK);
}

EXPORT int nvmlDeviceGetComputeInstanceId(void *h, unsigned int *id) {
    COUNT();
    if (!id) return E_INVALID_ARGUMENT;
    pthread_mutex_lock(&lock);
    if (st.init_count <= 0) DONE(E_UNINITIALIZED);
    fake_mig *mig = mig_device(h);
    if (!mig) DONE(device(h) ? E_NOT_SUPPORTED : E_INVALID_ARGUMENT);
    *id = 0;
    DONE(OK);
}

#ifndef FAKE_NVML_NO_MIG_SLICES /* built without: a driver without the slice calls */

/* nvmlDeviceAttributes_t (nvml.h): eight unsigned ints, then memorySizeMB. */
typedef struct {
    unsigned int multiprocessorCount, sharedCopyEngineCount, sharedDecoderCount,
        sharedEncoderCount, sharedJpegCount, sharedOfaCount, gpuInstanceSliceCount,
        computeInstanceSliceCount;
    unsigned long long memorySizeMB;
} fake_attributes;

/* nvmlGpuInstanceProfileInfo_t (nvml.h): ten unsigned ints, then memorySizeMB. */
typedef struct {
    unsigned int id, isP2pSupported, sliceCount, instanceCount, multiprocessorCount,
        copyEngineCount, decoderCount, encoderCount, jpegCount, ofaCount;
    unsigned long long memorySizeMB;
} fake_profile_info;

/* Only a MIG device's handle has attributes (as NVML documents); NOT_SUPPORTED on a GPU's, and
 * where the GPU's `mig_slices` is 0. */
EXPORT int nvmlDeviceGetAttributes_v2(void *h, fake_attributes *a) {
    COUNT();
    if (!a) return E_INVALID_ARGUMENT;
    pthread_mutex_lock(&lock);
    if (st.init_count <= 0) DONE(E_UNINITIALIZED);
    fake_mig *mig = mig_device(h);
    if (!mig) DONE(device(h) ? E_NOT_SUPPORTED : E_INVALID_ARGUMENT);
    const fake_device *p = mig->parent;
    if (!p->mig_slices) DONE(E_NOT_SUPPORTED);
    memset(a, 0, sizeof *a);
    a->multiprocessorCount = 14 * mig->compute_slices;
    a->gpuInstanceSliceCount = mig->slices;
    a->computeInstanceSliceCount = mig->compute_slices;
    a->memorySizeMB = p->memory_mib * mig->slices / p->mig_slices;
    DONE(OK);
}

/* NVML_GPU_INSTANCE_PROFILE_<n>_SLICE, by profile constant 0 to 6: 1, 2, 3, 4, 7, 8, 6 slices.
 * The GPU supports those of at most 4 slices and the one of all its slices; the later constants
 * (REV1, REV2, ...) are NOT_SUPPORTED, those past NVML's count INVALID_ARGUMENT. */
#define PROFILE_COUNT 17
static const unsigned int profile_slices[] = {1, 2, 3, 4, 7, 8, 6};

EXPORT int nvmlDeviceGetGpuInstanceProfileInfo(void *h, unsigned int profile,
                                               fake_profile_info *info) {
    COUNT();
    if (!info || profile >= PROFILE_COUNT) return E_INVALID_ARGUMENT;
    WITH_DEVICE(h, d);
    if (!d->mig_slots || !d->mig_slices || profile >= sizeof profile_slices / sizeof(unsigned))
        DONE(E_NOT_SUPPORTED);
    unsigned int s = profile_slices[profile];
    if (s > d->mig_slices || (s > 4 && s != d->mig_slices)) DONE(E_NOT_SUPPORTED);
    memset(info, 0, sizeof *info);
    info->id = profile;
    info->sliceCount = s;
    info->instanceCount = d->mig_slices / s;
    info->multiprocessorCount = 14 * s;
    info->memorySizeMB = d->memory_mib * s / d->mig_slices;
    DONE(OK);
}

#endif
#endif

/* ---------------------------------------------------------------- for tests */

/* How many NVML entry points have been called since the library was loaded (or last reset). */
EXPORT unsigned long long fake_nvml_call_count(void) {
    return __atomic_load_n(&calls, __ATOMIC_RELAXED);
}

EXPORT void fake_nvml_reset_call_count(void) { __atomic_store_n(&calls, 0, __ATOMIC_RELAXED); }

/* The trace origin in CLOCK_MONOTONIC ns (0 before the first nvmlInit). */
EXPORT unsigned long long fake_nvml_t0_ns(void) {
    pthread_mutex_lock(&lock);
    unsigned long long t0 = st.t0_ns;
    pthread_mutex_unlock(&lock);
    return t0;
}

/* How many nvmlInit calls are not yet balanced by nvmlShutdown. */
EXPORT int fake_nvml_init_count(void) {
    pthread_mutex_lock(&lock);
    int n = st.init_count;
    pthread_mutex_unlock(&lock);
    return n;
}
