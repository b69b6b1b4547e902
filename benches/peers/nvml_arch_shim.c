/* The stand-in NVML does not export nvmlDeviceGetArchitecture; Zeus calls it to decide whether a
 * GPU has the total-energy counter (Volta and later) and fails without it. This library is put in
 * front of the stand-in (it links to a copy of it, so every other symbol resolves there) and
 * answers Hopper (NVML_DEVICE_ARCH_HOPPER = 9), which matches the simulated H100-like counter. */
typedef int nvmlReturn_t;
typedef struct nvmlDevice_st *nvmlDevice_t;

nvmlReturn_t nvmlDeviceGetArchitecture(nvmlDevice_t device, unsigned int *arch) {
    if (device == 0 || arch == 0) return 2; /* NVML_ERROR_INVALID_ARGUMENT */
    *arch = 9;
    return 0;
}
