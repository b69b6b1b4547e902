//! The table of sources a segment describes: written once at creation, read by every
//! process that opens the segment.

use std::path::PathBuf;
use std::time::Duration;

use super::segment::*;
use crate::sensors::{CounterSpec, Domain, Method, SourceInfo};

/// One source as the segment describes it.
#[derive(Clone, Debug, PartialEq)]
pub struct Published {
    pub info: SourceInfo,
    /// How long the owner waits for an idle counter before taking it as settled, ns.
    pub settle_ns: u64,
}

impl Segment {
    pub(super) fn describe(&mut self, i: usize, p: &Published) {
        let d = self.desc(i);
        let info = &p.info;
        let domain = DOMAINS.iter().position(|x| *x == info.domain).unwrap_or(0) as u8;
        let method = METHODS.iter().position(|x| *x == info.method).unwrap_or(0) as u8;
        self.put_bytes(
            d + S_DOMAIN,
            &[domain, method, u8::from(info.counter.is_some())],
        );
        self.put_bytes(d + S_INDEX, &info.index.to_le_bytes());
        let spec = info.counter.unwrap_or(CounterSpec {
            joules_per_unit: 0.0,
            wrap: None,
        });
        self.put_bytes(d + S_JPU, &spec.joules_per_unit.to_le_bytes());
        self.put_bytes(d + S_WRAP, &spec.wrap.unwrap_or(u64::MAX).to_le_bytes());
        self.put_bytes(
            d + S_INTERVAL,
            &(info.interval.as_nanos() as u64).to_le_bytes(),
        );
        self.put_bytes(d + S_SETTLE, &p.settle_ns.to_le_bytes());
        self.put_text(d + S_ID.0, S_ID.1, &info.id);
        self.put_text(d + S_BACKEND.0, S_BACKEND.1, info.backend);
        self.put_text(d + S_LABEL.0, S_LABEL.1, &info.label);
        self.put_text(d + S_UUID.0, S_UUID.1, info.uuid.as_deref().unwrap_or(""));
        let path = info
            .path
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        self.put_text(d + S_PATH.0, S_PATH.1, &path);
    }

    /// The sources the segment describes, in its order.
    pub fn sources(&self) -> Vec<Published> {
        (0..self.n).map(|i| self.source(i)).collect()
    }

    fn source(&self, i: usize) -> Published {
        let d = self.desc(i);
        let b = self.bytes(d + S_DOMAIN, 48);
        let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap_or([0; 8]));
        let index = u32::from_le_bytes(b[4..8].try_into().unwrap_or([0; 4]));
        let jpu = f64::from_bits(u64_at(S_JPU - S_DOMAIN));
        let wrap = u64_at(S_WRAP - S_DOMAIN);
        let counter = (b[S_HAS_COUNTER - S_DOMAIN] != 0).then_some(CounterSpec {
            joules_per_unit: jpu,
            wrap: (wrap != u64::MAX).then_some(wrap),
        });
        let uuid = self.text(d + S_UUID.0, S_UUID.1);
        let path = self.text(d + S_PATH.0, S_PATH.1);
        Published {
            info: SourceInfo {
                id: self.text(d + S_ID.0, S_ID.1),
                backend: static_backend(&self.text(d + S_BACKEND.0, S_BACKEND.1)),
                domain: DOMAINS[(b[0] as usize).min(DOMAINS.len() - 1)],
                index,
                label: self.text(d + S_LABEL.0, S_LABEL.1),
                method: METHODS[(b[S_METHOD - S_DOMAIN] as usize).min(METHODS.len() - 1)],
                counter,
                interval: Duration::from_nanos(u64_at(S_INTERVAL - S_DOMAIN)),
                path: (!path.is_empty()).then(|| PathBuf::from(path)),
                uuid: (!uuid.is_empty()).then_some(uuid),
            },
            settle_ns: u64_at(S_SETTLE - S_DOMAIN),
        }
    }
}

const DOMAINS: [Domain; 9] = [
    Domain::Package,
    Domain::Core,
    Domain::Uncore,
    Domain::Dram,
    Domain::Psys,
    Domain::Gpu,
    Domain::Module,
    Domain::Rail,
    Domain::Node,
];
const METHODS: [Method; 3] = [Method::Counter, Method::IntegratedPower, Method::Estimate];

fn static_backend(name: &str) -> &'static str {
    match name {
        "powercap" => "powercap",
        "msr" => "msr",
        "perf" => "perf",
        "nvml" => "nvml",
        "amdsmi" => "amdsmi",
        "hwmon" => "hwmon",
        "redfish" => "redfish",
        "estimate" => "estimate",
        _ => "other",
    }
}
