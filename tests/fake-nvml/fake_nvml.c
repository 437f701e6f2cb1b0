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
 * nvml-wrapper resolves every symbol when it opens the library but keeps each lookup as a
 * `Result`, so a symbol missing here only fails the call that needs it. The exception is
 * `nvmlShutdown`, which its `Drop` calls unconditionally, so it must exist.
 *
 * Build: tests/fake-nvml/build.sh OUTDIR  (or: cc -shared -fPIC -o libnvidia-ml.so.1 fake_nvml.c)
 */

#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* nvmlReturn_t values, from nvml.h. */
typedef int nvmlReturn_t;
#define NVML_SUCCESS 0
#define NVML_ERROR_UNINITIALIZED 1
#define NVML_ERROR_INVALID_ARGUMENT 2
#define NVML_ERROR_INSUFFICIENT_SIZE 7
#define NVML_ERROR_UNKNOWN 999
#define NVML_ERROR_ARGUMENT_VERSION_MISMATCH 25

#define FAKE_NVML_MAX_GPUS 16
#define FAKE_NVML_DEFAULT_GPUS 2

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

#define NVML_STRUCT_VERSION(size, ver) ((unsigned int)(size) | ((unsigned int)(ver) << 24U))
#define nvmlMemory_v2 NVML_STRUCT_VERSION(sizeof(nvmlMemory_v2_t), 2)

#define FAKE_NAME "NVIDIA A100-SXM4-80GB"
#define FAKE_DRIVER "550.54.15"
#define FAKE_NVML_VERSION "12.550.54.15"
#define FAKE_CUDA 12040
#define FAKE_MEMORY (81920ULL * 1024ULL * 1024ULL)
#define FAKE_RESERVED (452ULL * 1024ULL * 1024ULL)
/* 0x20B2 is the A100-SXM4-80GB's device id, 0x10DE NVIDIA's vendor id. */
#define FAKE_PCI_DEVICE_ID 0x20B210DEU
#define FAKE_PCI_SUBSYSTEM_ID 0x147F10DEU

/* The bus numbers of the eight GPUs in a DGX A100; further GPUs count on from 0xC0. */
static const unsigned int dgx_buses[8] = {0x07, 0x0F, 0x47, 0x4E, 0x87, 0x90, 0xB7, 0xBD};

static struct nvmlDevice_st devices[FAKE_NVML_MAX_GPUS];
static int init_count = 0;

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
    case NVML_ERROR_INSUFFICIENT_SIZE:
        return "Insufficient Size";
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
    *index = device->index;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetName(nvmlDevice_t device, char *name, unsigned int length) {
    if (!valid(device)) {
        return NVML_ERROR_INVALID_ARGUMENT;
    }
    return copy_out(name, length, FAKE_NAME);
}

nvmlReturn_t nvmlDeviceGetUUID(nvmlDevice_t device, char *uuid, unsigned int length) {
    if (!valid(device)) {
        return NVML_ERROR_INVALID_ARGUMENT;
    }
    char s[96];
    snprintf(s, sizeof s, "GPU-fa4e0000-0000-4000-8000-0000000000%02x", device->index);
    return copy_out(uuid, length, s);
}

nvmlReturn_t nvmlDeviceGetPciInfo_v3(nvmlDevice_t device, nvmlPciInfo_t *pci) {
    if (!valid(device) || pci == NULL) {
        return NVML_ERROR_INVALID_ARGUMENT;
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

nvmlReturn_t nvmlDeviceGetMemoryInfo(nvmlDevice_t device, nvmlMemory_t *memory) {
    if (!valid(device) || memory == NULL) {
        return NVML_ERROR_INVALID_ARGUMENT;
    }
    memory->total = FAKE_MEMORY;
    memory->used = FAKE_RESERVED;
    memory->free = FAKE_MEMORY - FAKE_RESERVED;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetMemoryInfo_v2(nvmlDevice_t device, nvmlMemory_v2_t *memory) {
    if (!valid(device) || memory == NULL) {
        return NVML_ERROR_INVALID_ARGUMENT;
    }
    if (memory->version != nvmlMemory_v2) {
        return NVML_ERROR_ARGUMENT_VERSION_MISMATCH;
    }
    memory->total = FAKE_MEMORY;
    memory->reserved = FAKE_RESERVED;
    memory->used = 0;
    memory->free = FAKE_MEMORY - FAKE_RESERVED;
    return NVML_SUCCESS;
}

/* The utilization file's path: FAKE_NVML_UTILIZATION_FILE, else `utilization` in this library's
 * directory. 0 when there is none. */
static int utilization_path(char *buf, size_t size) {
    const char *v = getenv("FAKE_NVML_UTILIZATION_FILE");
    if (v != NULL && *v != '\0') {
        return snprintf(buf, size, "%s", v) < (int)size;
    }
    Dl_info info;
    if (dladdr((void *)&utilization_path, &info) == 0 || info.dli_fname == NULL) {
        return 0;
    }
    const char *slash = strrchr(info.dli_fname, '/');
    if (slash == NULL) {
        return snprintf(buf, size, "utilization") < (int)size;
    }
    return snprintf(buf, size, "%.*s/utilization", (int)(slash - info.dli_fname), info.dli_fname) < (int)size;
}

nvmlReturn_t nvmlDeviceGetUtilizationRates(nvmlDevice_t device, nvmlUtilization_t *utilization) {
    if (!valid(device) || utilization == NULL) {
        return NVML_ERROR_INVALID_ARGUMENT;
    }
    unsigned int percent = 0;
    char path[4096];
    FILE *f = utilization_path(path, sizeof path) ? fopen(path, "r") : NULL;
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
