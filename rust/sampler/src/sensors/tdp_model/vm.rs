//! The estimate in a virtual machine: the guest's share of its host's package.
//!
//! A guest's `/proc/cpuinfo` names the host's processor (so the TDP table gives the whole
//! package's TDP) while `/proc/stat` counts only the guest's virtual CPUs. Counting the whole
//! TDP for two vCPUs makes one busy thread read as half a server socket. Where the package's
//! size is known (AMD names it: `AMD EPYC 7B13 64-Core Processor`), the TDP is scaled by the
//! vCPUs over the package's cores; cores rather than threads, so that the figure stays an upper
//! bound when the host runs two threads a core. Where it is not known, the whole TDP stays and
//! the label says it is an upper bound and how to give the VM's share.
//!
//! A guest is recognised by the `hypervisor` CPU flag, which hypervisors set for their guests
//! (CPUID leaf 1, ECX bit 31) and Linux lists in `flags`.

use super::{fmt_w, CpuInfo, TDP_SETTING};

/// A virtual machine's view of the processor.
#[derive(Clone, Debug, PartialEq)]
pub struct VmShare {
    /// Logical CPUs the guest sees (`processor` entries of `/proc/cpuinfo`).
    pub vcpus: u32,
    /// Cores of one host package, when the model name says.
    pub package_cores: Option<u32>,
}

impl VmShare {
    /// The guest's view, or `None` on bare metal (no `hypervisor` flag).
    pub fn detect(info: &CpuInfo) -> Option<VmShare> {
        if !info.hypervisor {
            return None;
        }
        Some(VmShare {
            vcpus: info.logical.max(1),
            package_cores: info.model_name.as_deref().and_then(cores_in_name),
        })
    }

    /// How many packages' TDP the guest can draw at most: its vCPUs over the package's cores,
    /// no more than the `packages` it sees. `None` when the package's size is unknown.
    pub fn packages_share(&self, packages: u32) -> Option<f64> {
        let cores = self.package_cores?;
        Some((f64::from(self.vcpus) / f64::from(cores)).min(f64::from(packages.max(1))))
    }

    /// What the label adds, given the TDP per package and the packages seen.
    pub fn describe(&self, tdp_w: f64, packages: u32) -> String {
        let v = self.vcpus;
        match (self.packages_share(packages), self.package_cores) {
            (Some(share), Some(cores)) => format!(
                "; in a virtual machine: {v} vCPUs of a {cores}-core package, so {} W of its \
                 TDP, an upper bound",
                fmt_w((tdp_w * share * 100.0).round() / 100.0)
            ),
            _ => format!(
                "; in a virtual machine with {v} vCPUs on a package of unknown size: the whole \
                 package's TDP, an upper bound (set {TDP_SETTING} to this machine's share)"
            ),
        }
    }
}

/// The core count a model name states (`64-Core`), if any.
pub fn cores_in_name(model: &str) -> Option<u32> {
    model.split_whitespace().find_map(|w| {
        let lower = w.to_ascii_lowercase();
        let n = lower.strip_suffix("-core")?;
        n.parse::<u32>().ok().filter(|&c| c > 0)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_core_counts_from_names() {
        assert_eq!(cores_in_name("AMD EPYC 7B13 64-Core Processor"), Some(64));
        assert_eq!(
            cores_in_name("AMD Ryzen 9 5950X 16-Core Processor"),
            Some(16)
        );
        assert_eq!(
            cores_in_name("Intel(R) Xeon(R) Platinum 8259CL CPU @ 2.50GHz"),
            None
        );
        assert_eq!(cores_in_name("Quad-Core"), None);
    }
}
