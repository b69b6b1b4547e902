//! CPU energy estimated from utilisation and TDP, for machines without energy counters.

use crate::source::{Found, Roots};

/// What `/proc/cpuinfo` says about the processor.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CpuInfo {
    /// `vendor_id` of the first processor, e.g. `GenuineIntel`.
    pub vendor_id: Option<String>,
    /// `cpu family` of the first processor.
    pub family: Option<u32>,
    /// `model` of the first processor.
    pub model: Option<u32>,
    /// `model name` of the first processor.
    pub model_name: Option<String>,
    /// Number of distinct `physical id` values, at least 1.
    pub packages: u32,
}

/// Parses the text of `/proc/cpuinfo`.
pub fn parse_cpuinfo(text: &str) -> CpuInfo {
    let mut info = CpuInfo::default();
    let mut ids = std::collections::BTreeSet::new();
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let key = key.trim();
        let value = value.trim();
        match key {
            "vendor_id" if info.vendor_id.is_none() => info.vendor_id = Some(value.to_string()),
            "cpu family" if info.family.is_none() => info.family = value.parse().ok(),
            "model" if info.model.is_none() => info.model = value.parse().ok(),
            "model name" if info.model_name.is_none() => info.model_name = Some(value.to_string()),
            "physical id" => {
                ids.insert(value.to_string());
            }
            _ => {}
        }
    }
    info.packages = (ids.len() as u32).max(1);
    info
}

/// Placeholder until the estimate lands.
pub fn discover(_roots: &Roots) -> Found {
    Found::default()
}
