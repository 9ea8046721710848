"""The few NVML calls the energy suite needs, through ctypes (libnvidia-ml ships with the
driver; no Python package)."""
import ctypes

NVML_SUCCESS, NVML_CLOCK_SM = 0, 1


class Nvml:
    """A GPU's board energy counter and SM clock; device: a CUDA device of torch."""

    def __init__(self, device):
        import torch

        self.lib = ctypes.CDLL("libnvidia-ml.so.1")
        self._check(self.lib.nvmlInit_v2(), "nvmlInit_v2")
        props = torch.cuda.get_device_properties(device)
        bus_id = b"%08x:%02x:%02x.0" % (props.pci_domain_id, props.pci_bus_id, props.pci_device_id)
        self.handle = ctypes.c_void_p()
        self._check(self.lib.nvmlDeviceGetHandleByPciBusId_v2(bus_id, ctypes.byref(self.handle)),
                    "nvmlDeviceGetHandleByPciBusId_v2(%s)" % bus_id.decode())

    @staticmethod
    def _check(result, what):
        if result != NVML_SUCCESS:
            raise RuntimeError("%s: NVML error %d" % (what, result))

    def energy_mj(self):
        value = ctypes.c_ulonglong()
        self._check(self.lib.nvmlDeviceGetTotalEnergyConsumption(self.handle, ctypes.byref(value)),
                    "nvmlDeviceGetTotalEnergyConsumption")
        return value.value

    def sm_clock_mhz(self):
        value = ctypes.c_uint()
        self._check(self.lib.nvmlDeviceGetClockInfo(self.handle, NVML_CLOCK_SM, ctypes.byref(value)),
                    "nvmlDeviceGetClockInfo")
        return value.value
