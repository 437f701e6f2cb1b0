/*
 * A stand-in for NVIDIA's libnvidia-ml.so.1 so that Corral's GPU inventory can be tested on hosts
 * without a GPU. It exports NVML's real symbol names with NVML's real C signatures (as nvml.h and
 * nvml-wrapper-sys declare them) and answers with a fixed host: FAKE_NVML_GPU_COUNT (default 2,
 * at most FAKE_NVML_MAX_GPUS) "NVIDIA A100-SXM4-80GB" with 81920 MiB each, driver 550.54.15,
 * CUDA 12.4.
 *
 * GPU utilization (nvmlDeviceGetUtilizationRates) is read on every call from a file, one line per
 * GPU in index order: a percentage, or `error` for a GPU whose reading fails (NVML_ERROR_UNKNOWN).
 * The file is FAKE_NVML_UTILIZATION_FILE, else `utilization` next to this library (so that a test
 * with its own copy of the library changes only its own GPUs); a GPU without a line, or no file,
 * reads 0 %. Memory utilization reads the same as the GPU's.
 *
 * Health and metrics are read on every call from a second control file, FAKE_NVML_GPUS_FILE, else
 * `gpus` next to this library. Its format, one line per setting group:
 *
 *     INDEX key=value key=value ...
 *
 * fields separated by whitespace; `#` starts a comment; blank lines are ignored; several lines may
 * name the same GPU index, and a later value wins (except `xids`, which adds up). No file, no line
 * or no key gives the default. An unknown key, an unparsable value or an index past the GPUs is
 * ignored: a fake must not abort its host process. Keys (defaults in brackets):
 *
 *   mem_used_mib=N          memory in use [0]: nvmlDeviceGetMemoryInfo_v2 used = N MiB, free =
 *                           total - reserved - used; nvmlDeviceGetMemoryInfo (v1, which counts
 *                           the 452 MiB reserved as used) used = reserved + N MiB, free = total -
 *                           used. Clamped so that nothing underflows.
 *   temp=C                  nvmlDeviceGetTemperature, NVML_TEMPERATURE_GPU [34]
 *   power_w=W               nvmlDeviceGetPowerUsage, reported in milliwatts [61]
 *   sm_clock=MHz            nvmlDeviceGetClockInfo NVML_CLOCK_SM [1410]
 *   mem_clock=MHz           ... NVML_CLOCK_MEM [1593]
 *   graphics_clock=MHz      ... NVML_CLOCK_GRAPHICS [sm_clock]; NVML_CLOCK_VIDEO is always 1275
 *   throttle=MASK           nvmlDeviceGetCurrentClocksThrottleReasons and
 *                           nvmlDeviceGetCurrentClocksEventReasons, decimal or 0x hex [0]
 *   ecc_corrected_volatile=N, ecc_uncorrected_volatile=N, ecc_corrected_aggregate=N,
 *   ecc_uncorrected_aggregate=N
 *                           nvmlDeviceGetTotalEccErrors [0]
 *   retired_pending=0|1     nvmlDeviceGetRetiredPagesPendingStatus [0]
 *   remapped_corr=N, remapped_unc=N, remap_pending=0|1, remap_failure=0|1
 *                           nvmlDeviceGetRemappedRows [0]
 *   lost=0|1                1: every per-device query of the GPU, nvmlDeviceGetIndex and the
 *                           event functions included, fails with NVML_ERROR_GPU_IS_LOST; only
 *                           nvmlDeviceGetHandleByIndex_v2 still succeeds [0]
 *   xids=X[,X...]           Xid critical errors that happened on the GPU, in order; cumulative:
 *                           every entry on every line is one more Xid (at most
 *                           FAKE_NVML_MAX_XIDS per GPU) [none]
 *
 * e.g. `0 temp=81 throttle=0x40` or `1 lost=1`, and `echo '0 xids=79' >> gpus` raises an Xid.
 *
 * Events: nvmlEventSetCreate / nvmlDeviceRegisterEvents / nvmlEventSetWait_v2 / nvmlEventSetFree
 * work as NVML's do for nvmlEventTypeXidCriticalError; the other supported types
 * (nvmlDeviceGetSupportedEventTypes) register but never fire. Like real NVML, a set delivers only
 * Xids that happen after the GPU registered with it: registering notes how many `xids` entries the
 * GPU already has. A wait returns the next undelivered Xid of the lowest-indexed registered GPU
 * (eventData = the Xid), NVML_ERROR_GPU_IS_LOST when a registered GPU is `lost`, else it re-reads
 * the file every 50 ms and gives NVML_ERROR_TIMEOUT once `timeoutms` has passed. Sets are
 * independent (each delivers every Xid once) and safe to use from several threads.
 *
 * nvml-wrapper resolves every symbol when it opens the library but keeps each lookup as a
 * `Result`, so a symbol missing here only fails the call that needs it. The exception is
 * `nvmlShutdown`, which its `Drop` calls unconditionally, so it must exist.
 *
 * Build: tests/fake-nvml/build.sh OUTDIR  (or: cc -shared -fPIC -o libnvidia-ml.so.1 fake_nvml.c).
 * The Rust tests build it with `cc -shared -fPIC -Wall -Wextra -Werror`, so it must compile cleanly
 * with exactly those flags; it needs no -pthread (glibc >= 2.34 keeps the pthread functions in libc,
 * and the host process has them anyway).
 */

#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* nvmlReturn_t values, from nvml.h. */
typedef int nvmlReturn_t;
#define NVML_SUCCESS 0
#define NVML_ERROR_UNINITIALIZED 1
#define NVML_ERROR_INVALID_ARGUMENT 2
#define NVML_ERROR_NOT_SUPPORTED 3
#define NVML_ERROR_INSUFFICIENT_SIZE 7
#define NVML_ERROR_TIMEOUT 10
#define NVML_ERROR_GPU_IS_LOST 15
#define NVML_ERROR_UNKNOWN 999
#define NVML_ERROR_ARGUMENT_VERSION_MISMATCH 25

#define FAKE_NVML_MAX_GPUS 16
#define FAKE_NVML_DEFAULT_GPUS 2
/* The most `xids` entries one GPU may have; further ones are ignored. */
#define FAKE_NVML_MAX_XIDS 256
/* How often a waiting nvmlEventSetWait_v2 re-reads the control file. */
#define FAKE_NVML_POLL_MS 50

struct nvmlDevice_st {
    unsigned int index;
};
typedef struct nvmlDevice_st *nvmlDevice_t;

/* Layouts as in nvml.h (and nvml-wrapper-sys's bindings). */
typedef struct {
    char busIdLegacy[16];
    unsigned int domain;
    unsigned int bus;
    unsigned int device;
    unsigned int pciDeviceId;
    unsigned int pciSubSystemId;
    char busId[32];
} nvmlPciInfo_t;

typedef struct {
    unsigned long long total;
    unsigned long long free;
    unsigned long long used;
} nvmlMemory_t;

typedef struct {
    unsigned int gpu;
    unsigned int memory;
} nvmlUtilization_t;

typedef struct {
    unsigned int version;
    unsigned long long total;
    unsigned long long reserved;
    unsigned long long free;
    unsigned long long used;
} nvmlMemory_v2_t;

/* NVML's enums are C enums, an unsigned int in the bindings. */
typedef unsigned int nvmlTemperatureSensors_t;
#define NVML_TEMPERATURE_GPU 0
typedef unsigned int nvmlClockType_t;
#define NVML_CLOCK_GRAPHICS 0
#define NVML_CLOCK_SM 1
#define NVML_CLOCK_MEM 2
#define NVML_CLOCK_VIDEO 3
typedef unsigned int nvmlMemoryErrorType_t;
#define NVML_MEMORY_ERROR_TYPE_CORRECTED 0
#define NVML_MEMORY_ERROR_TYPE_UNCORRECTED 1
typedef unsigned int nvmlEccCounterType_t;
#define NVML_VOLATILE_ECC 0
#define NVML_AGGREGATE_ECC 1
typedef unsigned int nvmlEnableState_t;
#define NVML_FEATURE_DISABLED 0
#define NVML_FEATURE_ENABLED 1

/* Event types, from nvml.h. */
#define nvmlEventTypeSingleBitEccError 0x0001ULL
#define nvmlEventTypeDoubleBitEccError 0x0002ULL
#define nvmlEventTypePState 0x0004ULL
#define nvmlEventTypeXidCriticalError 0x0008ULL
#define nvmlEventTypeClock 0x0010ULL
#define nvmlEventTypePowerSourceChange 0x0080ULL
#define nvmlEventMigConfigChange 0x0100ULL
#define FAKE_SUPPORTED_EVENTS                                                                          \
    (nvmlEventTypeSingleBitEccError | nvmlEventTypeDoubleBitEccError | nvmlEventTypePState |          \
     nvmlEventTypeXidCriticalError | nvmlEventTypeClock | nvmlEventTypePowerSourceChange |            \
     nvmlEventMigConfigChange)

typedef struct {
    nvmlDevice_t device;
    unsigned long long eventType;
    unsigned long long eventData;
    unsigned int gpuInstanceId;
    unsigned int computeInstanceId;
} nvmlEventData_t;

/* Opaque to callers. `types[i]` is what GPU i registered (0: nothing), `delivered[i]` how many of
 * its `xids` entries this set has delivered or found already there when it registered. */
#define FAKE_EVENT_SET_MAGIC 0xFA4E5E7u
struct nvmlEventSet_st {
    unsigned int magic;
    unsigned long long types[FAKE_NVML_MAX_GPUS];
    unsigned int delivered[FAKE_NVML_MAX_GPUS];
};
typedef struct nvmlEventSet_st *nvmlEventSet_t;

#define NVML_STRUCT_VERSION(size, ver) ((unsigned int)(size) | ((unsigned int)(ver) << 24U))
#define nvmlMemory_v2 NVML_STRUCT_VERSION(sizeof(nvmlMemory_v2_t), 2)

#define FAKE_NAME "NVIDIA A100-SXM4-80GB"
#define FAKE_DRIVER "550.54.15"
#define FAKE_NVML_VERSION "12.550.54.15"
#define FAKE_CUDA 12040
#define MIB (1024ULL * 1024ULL)
#define FAKE_MEMORY (81920ULL * MIB)
#define FAKE_RESERVED (452ULL * MIB)
/* 0x20B2 is the A100-SXM4-80GB's device id, 0x10DE NVIDIA's vendor id. */
#define FAKE_PCI_DEVICE_ID 0x20B210DEU
#define FAKE_PCI_SUBSYSTEM_ID 0x147F10DEU
#define FAKE_VIDEO_CLOCK 1275

/* The bus numbers of the eight GPUs in a DGX A100; further GPUs count on from 0xC0. */
static const unsigned int dgx_buses[8] = {0x07, 0x0F, 0x47, 0x4E, 0x87, 0x90, 0xB7, 0xBD};

static struct nvmlDevice_st devices[FAKE_NVML_MAX_GPUS];
static int init_count = 0;
/* Guards every event set's bookkeeping. */
static pthread_mutex_t events_lock = PTHREAD_MUTEX_INITIALIZER;

static unsigned int gpu_count(void) {
    const char *v = getenv("FAKE_NVML_GPU_COUNT");
    if (v == NULL || *v == '\0') {
        return FAKE_NVML_DEFAULT_GPUS;
    }
    char *end = NULL;
    long n = strtol(v, &end, 10);
    if (*end != '\0' || n < 0) {
        return FAKE_NVML_DEFAULT_GPUS;
    }
    return n > FAKE_NVML_MAX_GPUS ? FAKE_NVML_MAX_GPUS : (unsigned int)n;
}

static unsigned int bus_of(unsigned int index) {
    return index < 8 ? dgx_buses[index] : 0xC0 + index;
}

static int valid(nvmlDevice_t device) {
    return device != NULL && device >= &devices[0] && device < &devices[FAKE_NVML_MAX_GPUS] &&
           device->index < gpu_count();
}

/* Copies `s` into `buf` the way NVML does: an error, not truncation, when it does not fit. */
static nvmlReturn_t copy_out(char *buf, unsigned int length, const char *s) {
    if (buf == NULL) {
        return NVML_ERROR_INVALID_ARGUMENT;
    }
    if (strlen(s) + 1 > length) {
        return NVML_ERROR_INSUFFICIENT_SIZE;
    }
    memcpy(buf, s, strlen(s) + 1);
    return NVML_SUCCESS;
}

/* A control file's path: the environment variable `env`, else `name` in this library's directory.
 * 0 when there is none. */
static int control_path(const char *env, const char *name, char *buf, size_t size) {
    const char *v = getenv(env);
    if (v != NULL && *v != '\0') {
        return snprintf(buf, size, "%s", v) < (int)size;
    }
    Dl_info info;
    if (dladdr((void *)&control_path, &info) == 0 || info.dli_fname == NULL) {
        return 0;
    }
    const char *slash = strrchr(info.dli_fname, '/');
    if (slash == NULL) {
        return snprintf(buf, size, "%s", name) < (int)size;
    }
    return snprintf(buf, size, "%.*s/%s", (int)(slash - info.dli_fname), info.dli_fname, name) < (int)size;
}

/* One GPU's settings from the `gpus` file. */
struct gpu_settings {
    unsigned long long mem_used_mib;
    unsigned long long temp;
    unsigned long long power_w;
    unsigned long long sm_clock;
    unsigned long long mem_clock;
    unsigned long long graphics_clock; /* ULLONG_MAX: follow sm_clock */
    unsigned long long throttle;
    unsigned long long ecc[2][2]; /* [nvmlMemoryErrorType_t][nvmlEccCounterType_t] */
    unsigned long long retired_pending;
    unsigned long long remapped_corr;
    unsigned long long remapped_unc;
    unsigned long long remap_pending;
    unsigned long long remap_failure;
    unsigned long long lost;
    unsigned int xid_count;
    unsigned long long xids[FAKE_NVML_MAX_XIDS];
};

static const struct {
    const char *key;
    size_t offset;
} setting_keys[] = {
    {"mem_used_mib", offsetof(struct gpu_settings, mem_used_mib)},
    {"temp", offsetof(struct gpu_settings, temp)},
    {"power_w", offsetof(struct gpu_settings, power_w)},
    {"sm_clock", offsetof(struct gpu_settings, sm_clock)},
    {"mem_clock", offsetof(struct gpu_settings, mem_clock)},
    {"graphics_clock", offsetof(struct gpu_settings, graphics_clock)},
    {"throttle", offsetof(struct gpu_settings, throttle)},
    {"ecc_corrected_volatile", offsetof(struct gpu_settings, ecc[0][0])},
    {"ecc_corrected_aggregate", offsetof(struct gpu_settings, ecc[0][1])},
    {"ecc_uncorrected_volatile", offsetof(struct gpu_settings, ecc[1][0])},
    {"ecc_uncorrected_aggregate", offsetof(struct gpu_settings, ecc[1][1])},
    {"retired_pending", offsetof(struct gpu_settings, retired_pending)},
    {"remapped_corr", offsetof(struct gpu_settings, remapped_corr)},
    {"remapped_unc", offsetof(struct gpu_settings, remapped_unc)},
    {"remap_pending", offsetof(struct gpu_settings, remap_pending)},
    {"remap_failure", offsetof(struct gpu_settings, remap_failure)},
    {"lost", offsetof(struct gpu_settings, lost)},
};

/* A whole non-negative number: decimal, or hex after 0x when `hex`. 0 when `s` is not one. */
static int parse_number(const char *s, int hex, unsigned long long *out) {
    int base = 10;
    if (hex && s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) {
        s += 2;
        base = 16;
    }
    if (!(base == 16 ? (s[0] >= '0' && s[0] <= '9') || (s[0] >= 'a' && s[0] <= 'f') ||
                           (s[0] >= 'A' && s[0] <= 'F')
                     : s[0] >= '0' && s[0] <= '9')) {
        return 0;
    }
    char *end = NULL;
    errno = 0;
    unsigned long long n = strtoull(s, &end, base);
    if (errno != 0 || *end != '\0') {
        return 0;
    }
    *out = n;
    return 1;
}

static void apply_setting(struct gpu_settings *s, const char *key, char *value) {
    if (strcmp(key, "xids") == 0) {
        char *save = NULL;
        for (char *x = strtok_r(value, ",", &save); x != NULL; x = strtok_r(NULL, ",", &save)) {
            unsigned long long n;
            if (parse_number(x, 0, &n) && s->xid_count < FAKE_NVML_MAX_XIDS) {
                s->xids[s->xid_count++] = n;
            }
        }
        return;
    }
    for (size_t i = 0; i < sizeof setting_keys / sizeof setting_keys[0]; i++) {
        if (strcmp(key, setting_keys[i].key) == 0) {
            unsigned long long n;
            if (parse_number(value, strcmp(key, "throttle") == 0, &n)) {
                *(unsigned long long *)((char *)s + setting_keys[i].offset) = n;
            }
            return;
        }
    }
}

/* GPU `index`'s settings: the defaults, overridden by the `gpus` file's lines for it. */
static void read_settings(unsigned int index, struct gpu_settings *s) {
    memset(s, 0, sizeof *s);
    s->temp = 34;
    s->power_w = 61;
    s->sm_clock = 1410;
    s->mem_clock = 1593;
    s->graphics_clock = ULLONG_MAX;
    char path[4096];
    FILE *f = control_path("FAKE_NVML_GPUS_FILE", "gpus", path, sizeof path) ? fopen(path, "r") : NULL;
    if (f != NULL) {
        char *line = NULL;
        size_t cap = 0;
        while (getline(&line, &cap, f) != -1) {
            char *hash = strchr(line, '#');
            if (hash != NULL) {
                *hash = '\0';
            }
            char *save = NULL;
            char *field = strtok_r(line, " \t\r\n\v\f", &save);
            unsigned long long n;
            if (field == NULL || !parse_number(field, 0, &n) || n != index) {
                continue;
            }
            while ((field = strtok_r(NULL, " \t\r\n\v\f", &save)) != NULL) {
                char *eq = strchr(field, '=');
                if (eq != NULL) {
                    *eq = '\0';
                    apply_setting(s, field, eq + 1);
                }
            }
        }
        free(line);
        fclose(f);
    }
    if (s->graphics_clock == ULLONG_MAX) {
        s->graphics_clock = s->sm_clock;
    }
}

/* Whether `device` (a valid handle) is `lost` in the `gpus` file. */
static int lost(nvmlDevice_t device) {
    struct gpu_settings s;
    read_settings(device->index, &s);
    return s.lost != 0;
}

/* A valid, not lost device's settings; else the error every query of it returns. */
static nvmlReturn_t device_settings(nvmlDevice_t device, struct gpu_settings *s) {
    if (!valid(device)) {
        return NVML_ERROR_INVALID_ARGUMENT;
    }
    read_settings(device->index, s);
    return s->lost ? NVML_ERROR_GPU_IS_LOST : NVML_SUCCESS;
}

static unsigned int clamp_uint(unsigned long long n) {
    return n > UINT_MAX ? UINT_MAX : (unsigned int)n;
}

nvmlReturn_t nvmlInit_v2(void) {
    for (unsigned int i = 0; i < FAKE_NVML_MAX_GPUS; i++) {
        devices[i].index = i;
    }
    init_count++;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlInitWithFlags(unsigned int flags) {
    (void)flags;
    return nvmlInit_v2();
}

nvmlReturn_t nvmlShutdown(void) {
    if (init_count == 0) {
        return NVML_ERROR_UNINITIALIZED;
    }
    init_count--;
    return NVML_SUCCESS;
}

const char *nvmlErrorString(nvmlReturn_t result) {
    switch (result) {
    case NVML_SUCCESS:
        return "Success";
    case NVML_ERROR_UNINITIALIZED:
        return "Uninitialized";
    case NVML_ERROR_INVALID_ARGUMENT:
        return "Invalid Argument";
    case NVML_ERROR_NOT_SUPPORTED:
        return "Not Supported";
    case NVML_ERROR_INSUFFICIENT_SIZE:
        return "Insufficient Size";
    case NVML_ERROR_TIMEOUT:
        return "Timeout";
    case NVML_ERROR_GPU_IS_LOST:
        return "GPU is lost";
    case NVML_ERROR_ARGUMENT_VERSION_MISMATCH:
        return "Argument Version Mismatch";
    default:
        return "Unknown Error";
    }
}

nvmlReturn_t nvmlSystemGetDriverVersion(char *version, unsigned int length) {
    if (init_count == 0) {
        return NVML_ERROR_UNINITIALIZED;
    }
    return copy_out(version, length, FAKE_DRIVER);
}

nvmlReturn_t nvmlSystemGetNVMLVersion(char *version, unsigned int length) {
    return copy_out(version, length, FAKE_NVML_VERSION);
}

nvmlReturn_t nvmlSystemGetCudaDriverVersion(int *cudaDriverVersion) {
    if (cudaDriverVersion == NULL) {
        return NVML_ERROR_INVALID_ARGUMENT;
    }
    *cudaDriverVersion = FAKE_CUDA;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlSystemGetCudaDriverVersion_v2(int *cudaDriverVersion) {
    return nvmlSystemGetCudaDriverVersion(cudaDriverVersion);
}

nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int *deviceCount) {
    if (init_count == 0) {
        return NVML_ERROR_UNINITIALIZED;
    }
    if (deviceCount == NULL) {
        return NVML_ERROR_INVALID_ARGUMENT;
    }
    *deviceCount = gpu_count();
    return NVML_SUCCESS;
}

/* Succeeds for a lost GPU too, as NVML's does: the handle is what a caller asks the others with. */
nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int index, nvmlDevice_t *device) {
    if (init_count == 0) {
        return NVML_ERROR_UNINITIALIZED;
    }
    if (device == NULL || index >= gpu_count()) {
        return NVML_ERROR_INVALID_ARGUMENT;
    }
    *device = &devices[index];
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetIndex(nvmlDevice_t device, unsigned int *index) {
    if (!valid(device) || index == NULL) {
        return NVML_ERROR_INVALID_ARGUMENT;
    }
    if (lost(device)) {
        return NVML_ERROR_GPU_IS_LOST;
    }
    *index = device->index;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetName(nvmlDevice_t device, char *name, unsigned int length) {
    if (!valid(device)) {
        return NVML_ERROR_INVALID_ARGUMENT;
    }
    if (lost(device)) {
        return NVML_ERROR_GPU_IS_LOST;
    }
    return copy_out(name, length, FAKE_NAME);
}

nvmlReturn_t nvmlDeviceGetUUID(nvmlDevice_t device, char *uuid, unsigned int length) {
    if (!valid(device)) {
        return NVML_ERROR_INVALID_ARGUMENT;
    }
    if (lost(device)) {
        return NVML_ERROR_GPU_IS_LOST;
    }
    char s[96];
    snprintf(s, sizeof s, "GPU-fa4e0000-0000-4000-8000-0000000000%02x", device->index);
    return copy_out(uuid, length, s);
}

nvmlReturn_t nvmlDeviceGetPciInfo_v3(nvmlDevice_t device, nvmlPciInfo_t *pci) {
    if (!valid(device) || pci == NULL) {
        return NVML_ERROR_INVALID_ARGUMENT;
    }
    if (lost(device)) {
        return NVML_ERROR_GPU_IS_LOST;
    }
    memset(pci, 0, sizeof *pci);
    pci->domain = 0;
    pci->bus = bus_of(device->index);
    pci->device = 0;
    pci->pciDeviceId = FAKE_PCI_DEVICE_ID;
    pci->pciSubSystemId = FAKE_PCI_SUBSYSTEM_ID;
    snprintf(pci->busIdLegacy, sizeof pci->busIdLegacy, "0000:%02X:00.0", pci->bus);
    snprintf(pci->busId, sizeof pci->busId, "00000000:%02X:00.0", pci->bus);
    return NVML_SUCCESS;
}

/* `mem_used_mib` in bytes, at most `room`. */
static unsigned long long used_bytes(const struct gpu_settings *s, unsigned long long room) {
    return s->mem_used_mib > room / MIB ? room : s->mem_used_mib * MIB;
}

/* v1 counts the reserved memory as used, as NVML's does. */
nvmlReturn_t nvmlDeviceGetMemoryInfo(nvmlDevice_t device, nvmlMemory_t *memory) {
    struct gpu_settings s;
    nvmlReturn_t r = device_settings(device, &s);
    if (r != NVML_SUCCESS) {
        return r;
    }
    if (memory == NULL) {
        return NVML_ERROR_INVALID_ARGUMENT;
    }
    memory->total = FAKE_MEMORY;
    memory->used = FAKE_RESERVED + used_bytes(&s, FAKE_MEMORY - FAKE_RESERVED);
    memory->free = FAKE_MEMORY - memory->used;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetMemoryInfo_v2(nvmlDevice_t device, nvmlMemory_v2_t *memory) {
    struct gpu_settings s;
    nvmlReturn_t r = device_settings(device, &s);
    if (r != NVML_SUCCESS) {
        return r;
    }
    if (memory == NULL) {
        return NVML_ERROR_INVALID_ARGUMENT;
    }
    if (memory->version != nvmlMemory_v2) {
        return NVML_ERROR_ARGUMENT_VERSION_MISMATCH;
    }
    memory->total = FAKE_MEMORY;
    memory->reserved = FAKE_RESERVED;
    memory->used = used_bytes(&s, FAKE_MEMORY - FAKE_RESERVED);
    memory->free = FAKE_MEMORY - FAKE_RESERVED - memory->used;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetUtilizationRates(nvmlDevice_t device, nvmlUtilization_t *utilization) {
    if (!valid(device) || utilization == NULL) {
        return NVML_ERROR_INVALID_ARGUMENT;
    }
    if (lost(device)) {
        return NVML_ERROR_GPU_IS_LOST;
    }
    unsigned int percent = 0;
    char path[4096];
    FILE *f = control_path("FAKE_NVML_UTILIZATION_FILE", "utilization", path, sizeof path) ? fopen(path, "r")
                                                                                           : NULL;
    if (f != NULL) {
        char line[64];
        unsigned int i = 0;
        while (fgets(line, sizeof line, f) != NULL) {
            if (i++ != device->index) {
                continue;
            }
            if (strncmp(line, "error", 5) == 0) {
                fclose(f);
                return NVML_ERROR_UNKNOWN;
            }
            long n = strtol(line, NULL, 10);
            percent = n < 0 ? 0 : n > 100 ? 100 : (unsigned int)n;
            break;
        }
        fclose(f);
    }
    utilization->gpu = percent;
    utilization->memory = percent;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetTemperature(nvmlDevice_t device, nvmlTemperatureSensors_t sensorType,
                                      unsigned int *temp) {
    struct gpu_settings s;
    nvmlReturn_t r = device_settings(device, &s);
    if (r != NVML_SUCCESS) {
        return r;
    }
    if (sensorType != NVML_TEMPERATURE_GPU || temp == NULL) {
        return NVML_ERROR_INVALID_ARGUMENT;
    }
    *temp = clamp_uint(s.temp);
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetPowerUsage(nvmlDevice_t device, unsigned int *power) {
    struct gpu_settings s;
    nvmlReturn_t r = device_settings(device, &s);
    if (r != NVML_SUCCESS) {
        return r;
    }
    if (power == NULL) {
        return NVML_ERROR_INVALID_ARGUMENT;
    }
    *power = s.power_w > UINT_MAX / 1000 ? UINT_MAX : (unsigned int)s.power_w * 1000;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetClockInfo(nvmlDevice_t device, nvmlClockType_t type, unsigned int *clock) {
    struct gpu_settings s;
    nvmlReturn_t r = device_settings(device, &s);
    if (r != NVML_SUCCESS) {
        return r;
    }
    if (clock == NULL) {
        return NVML_ERROR_INVALID_ARGUMENT;
    }
    switch (type) {
    case NVML_CLOCK_GRAPHICS:
        *clock = clamp_uint(s.graphics_clock);
        return NVML_SUCCESS;
    case NVML_CLOCK_SM:
        *clock = clamp_uint(s.sm_clock);
        return NVML_SUCCESS;
    case NVML_CLOCK_MEM:
        *clock = clamp_uint(s.mem_clock);
        return NVML_SUCCESS;
    case NVML_CLOCK_VIDEO:
        *clock = FAKE_VIDEO_CLOCK;
        return NVML_SUCCESS;
    default:
        return NVML_ERROR_INVALID_ARGUMENT;
    }
}

nvmlReturn_t nvmlDeviceGetCurrentClocksEventReasons(nvmlDevice_t device,
                                                    unsigned long long *clocksEventReasons) {
    struct gpu_settings s;
    nvmlReturn_t r = device_settings(device, &s);
    if (r != NVML_SUCCESS) {
        return r;
    }
    if (clocksEventReasons == NULL) {
        return NVML_ERROR_INVALID_ARGUMENT;
    }
    *clocksEventReasons = s.throttle;
    return NVML_SUCCESS;
}

/* The older name of nvmlDeviceGetCurrentClocksEventReasons. */
nvmlReturn_t nvmlDeviceGetCurrentClocksThrottleReasons(nvmlDevice_t device,
                                                       unsigned long long *clocksThrottleReasons) {
    return nvmlDeviceGetCurrentClocksEventReasons(device, clocksThrottleReasons);
}

nvmlReturn_t nvmlDeviceGetTotalEccErrors(nvmlDevice_t device, nvmlMemoryErrorType_t errorType,
                                         nvmlEccCounterType_t counterType, unsigned long long *eccCounts) {
    struct gpu_settings s;
    nvmlReturn_t r = device_settings(device, &s);
    if (r != NVML_SUCCESS) {
        return r;
    }
    if (errorType > NVML_MEMORY_ERROR_TYPE_UNCORRECTED || counterType > NVML_AGGREGATE_ECC ||
        eccCounts == NULL) {
        return NVML_ERROR_INVALID_ARGUMENT;
    }
    *eccCounts = s.ecc[errorType][counterType];
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetRetiredPagesPendingStatus(nvmlDevice_t device, nvmlEnableState_t *isPending) {
    struct gpu_settings s;
    nvmlReturn_t r = device_settings(device, &s);
    if (r != NVML_SUCCESS) {
        return r;
    }
    if (isPending == NULL) {
        return NVML_ERROR_INVALID_ARGUMENT;
    }
    *isPending = s.retired_pending ? NVML_FEATURE_ENABLED : NVML_FEATURE_DISABLED;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetRemappedRows(nvmlDevice_t device, unsigned int *corrRows, unsigned int *uncRows,
                                       unsigned int *isPending, unsigned int *failureOccurred) {
    struct gpu_settings s;
    nvmlReturn_t r = device_settings(device, &s);
    if (r != NVML_SUCCESS) {
        return r;
    }
    if (corrRows == NULL || uncRows == NULL || isPending == NULL || failureOccurred == NULL) {
        return NVML_ERROR_INVALID_ARGUMENT;
    }
    *corrRows = clamp_uint(s.remapped_corr);
    *uncRows = clamp_uint(s.remapped_unc);
    *isPending = s.remap_pending != 0;
    *failureOccurred = s.remap_failure != 0;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetSupportedEventTypes(nvmlDevice_t device, unsigned long long *eventTypes) {
    struct gpu_settings s;
    nvmlReturn_t r = device_settings(device, &s);
    if (r != NVML_SUCCESS) {
        return r;
    }
    if (eventTypes == NULL) {
        return NVML_ERROR_INVALID_ARGUMENT;
    }
    *eventTypes = FAKE_SUPPORTED_EVENTS;
    return NVML_SUCCESS;
}

static int valid_set(nvmlEventSet_t set) {
    return set != NULL && set->magic == FAKE_EVENT_SET_MAGIC;
}

nvmlReturn_t nvmlEventSetCreate(nvmlEventSet_t *set) {
    if (set == NULL) {
        return NVML_ERROR_INVALID_ARGUMENT;
    }
    if (init_count == 0) {
        return NVML_ERROR_UNINITIALIZED;
    }
    nvmlEventSet_t s = calloc(1, sizeof *s);
    if (s == NULL) {
        return NVML_ERROR_UNKNOWN;
    }
    s->magic = FAKE_EVENT_SET_MAGIC;
    *set = s;
    return NVML_SUCCESS;
}

/* Registering for Xids notes how many the GPU already has: a set sees only later ones. */
nvmlReturn_t nvmlDeviceRegisterEvents(nvmlDevice_t device, unsigned long long eventTypes,
                                      nvmlEventSet_t set) {
    struct gpu_settings s;
    nvmlReturn_t r = device_settings(device, &s);
    if (r != NVML_SUCCESS) {
        return r;
    }
    if (!valid_set(set)) {
        return NVML_ERROR_INVALID_ARGUMENT;
    }
    if ((eventTypes & ~FAKE_SUPPORTED_EVENTS) != 0) {
        return NVML_ERROR_NOT_SUPPORTED;
    }
    pthread_mutex_lock(&events_lock);
    unsigned int i = device->index;
    if ((eventTypes & nvmlEventTypeXidCriticalError) &&
        !(set->types[i] & nvmlEventTypeXidCriticalError)) {
        set->delivered[i] = s.xid_count;
    }
    set->types[i] |= eventTypes;
    pthread_mutex_unlock(&events_lock);
    return NVML_SUCCESS;
}

static unsigned long long now_ms(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (unsigned long long)t.tv_sec * 1000ULL + (unsigned long long)t.tv_nsec / 1000000ULL;
}

/* One look at the registered GPUs, lowest index first: NVML_SUCCESS with `data` filled for an
 * undelivered Xid, NVML_ERROR_GPU_IS_LOST for a lost GPU, NVML_ERROR_TIMEOUT for nothing. */
static nvmlReturn_t next_event(nvmlEventSet_t set, nvmlEventData_t *data) {
    struct gpu_settings s;
    unsigned int count = gpu_count();
    for (unsigned int i = 0; i < count; i++) {
        pthread_mutex_lock(&events_lock);
        unsigned long long types = set->types[i];
        pthread_mutex_unlock(&events_lock);
        if (types == 0) {
            continue;
        }
        read_settings(i, &s);
        if (s.lost) {
            return NVML_ERROR_GPU_IS_LOST;
        }
        if (!(types & nvmlEventTypeXidCriticalError)) {
            continue;
        }
        pthread_mutex_lock(&events_lock);
        int found = set->delivered[i] < s.xid_count;
        if (found) {
            data->eventData = s.xids[set->delivered[i]++];
        }
        pthread_mutex_unlock(&events_lock);
        if (found) {
            data->device = &devices[i];
            data->eventType = nvmlEventTypeXidCriticalError;
            /* Not attributable to a MIG instance. */
            data->gpuInstanceId = 0xFFFFFFFFU;
            data->computeInstanceId = 0xFFFFFFFFU;
            return NVML_SUCCESS;
        }
    }
    return NVML_ERROR_TIMEOUT;
}

nvmlReturn_t nvmlEventSetWait_v2(nvmlEventSet_t set, nvmlEventData_t *data, unsigned int timeoutms) {
    if (!valid_set(set) || data == NULL) {
        return NVML_ERROR_INVALID_ARGUMENT;
    }
    unsigned long long deadline = now_ms() + timeoutms;
    for (;;) {
        nvmlReturn_t r = next_event(set, data);
        if (r != NVML_ERROR_TIMEOUT) {
            return r;
        }
        unsigned long long now = now_ms();
        if (now >= deadline) {
            return NVML_ERROR_TIMEOUT;
        }
        unsigned long long nap = deadline - now < FAKE_NVML_POLL_MS ? deadline - now : FAKE_NVML_POLL_MS;
        struct timespec t = {(time_t)(nap / 1000), (long)(nap % 1000) * 1000000L};
        while (nanosleep(&t, &t) != 0 && errno == EINTR) {
        }
    }
}

nvmlReturn_t nvmlEventSetFree(nvmlEventSet_t set) {
    if (!valid_set(set)) {
        return NVML_ERROR_INVALID_ARGUMENT;
    }
    pthread_mutex_lock(&events_lock);
    set->magic = 0;
    pthread_mutex_unlock(&events_lock);
    free(set);
    return NVML_SUCCESS;
}
