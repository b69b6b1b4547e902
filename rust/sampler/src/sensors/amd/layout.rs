//! The layouts of `amdsmi_power_info_t` across AMD SMI releases, chosen by the library's
//! version (the structs are read from a zeroed buffer larger than any of them).

/// What an unsupported `uint32_t` member of `amdsmi_power_info_t` holds: `UINT32_MAX` as the
/// header says from 25.x, but `0xFFFF` in 24.x, whose `amdsmi_get_power_info` sets every member
/// to it first and copies the `uint16_t` fields of the driver's gpu_metrics table, which hold
/// `0xFFFF` where the part lacks them (`average_socket_power` on an MI300,
/// `current_socket_power` on RDNA). No GPU draws 65,535 W: either is "not supported".
const UNSUPPORTED_U32: [u32; 2] = [u32::MAX, 0xFFFF];

/// Where `amdsmi_power_info_t` keeps the socket power (whole watts) in this library's release.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum PowerLayout {
    /// Releases 24.x (ROCm 6.1 to 6.3): `uint32_t current_socket_power, average_socket_power`
    /// first.
    V24,
    /// Releases 25.x and later (ROCm 6.4, 7.x): `uint64_t socket_power` first (watts on bare
    /// metal from 26.x), then `uint32_t current_socket_power, average_socket_power`.
    V25,
    /// Older releases, or a version that cannot be read: power is not read from this library.
    Unknown,
}

/// One field of `amdsmi_power_info_t`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum PowerField {
    Current,
    Average,
    Socket,
}

impl PowerField {
    pub(super) fn name(self) -> &'static str {
        match self {
            PowerField::Current => "current_socket_power",
            PowerField::Average => "average_socket_power",
            PowerField::Socket => "socket_power",
        }
    }
}

/// The power layout of a release whose version starts with `first` (the year-style number of
/// 6.x, the major number from 7.0: 24 for ROCm 6.1 to 6.3, 25 for 6.4, 26 and up for 7.x).
pub(super) fn layout_of(first: u32) -> PowerLayout {
    match first {
        24 => PowerLayout::V24,
        25..=99 => PowerLayout::V25,
        _ => PowerLayout::Unknown,
    }
}

pub(super) fn u32_at(buf: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes(buf[at..at + 4].try_into().expect("4 bytes"))
}

pub(super) fn u64_at(buf: &[u8], at: usize) -> u64 {
    u64::from_ne_bytes(buf[at..at + 8].try_into().expect("8 bytes"))
}

fn watts32(v: u32) -> Option<f64> {
    (!UNSUPPORTED_U32.contains(&v)).then_some(f64::from(v))
}

/// The fields of an `amdsmi_power_info_t` read into `buf`, in order of preference: the current
/// (instantaneous) socket power, the average, and (26.x and later) `socket_power`.
pub(super) fn decode_power(
    buf: &[u8],
    layout: PowerLayout,
    version: &str,
) -> Vec<(PowerField, Option<f64>)> {
    match layout {
        PowerLayout::V24 => vec![
            (PowerField::Current, watts32(u32_at(buf, 0))),
            (PowerField::Average, watts32(u32_at(buf, 4))),
        ],
        PowerLayout::V25 => {
            let mut out = vec![
                (PowerField::Current, watts32(u32_at(buf, 8))),
                (PowerField::Average, watts32(u32_at(buf, 12))),
            ];
            // In 25.x `socket_power` is for virtualisation hosts (µW); from 26.x it is the
            // bare-metal socket power in watts.
            if major(version) >= 26 {
                let v = u64_at(buf, 0);
                let ok = v != u64::MAX && v != u64::from(u32::MAX);
                out.push((PowerField::Socket, ok.then_some(v as f64)));
            }
            out
        }
        PowerLayout::Unknown => Vec::new(),
    }
}

fn major(version: &str) -> u32 {
    version
        .split('.')
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn power_layouts() {
        let mut buf = vec![0u8; 64];
        buf[0..4].copy_from_slice(&250u32.to_ne_bytes());
        buf[4..8].copy_from_slice(&u32::MAX.to_ne_bytes());
        let v24 = decode_power(&buf, PowerLayout::V24, "24.7.1");
        assert_eq!(v24[0], (PowerField::Current, Some(250.0)));
        assert_eq!(v24[1], (PowerField::Average, None));
        // 24.x marks a member the part lacks with 0xFFFF (an MI300's average, RDNA's current).
        buf[0..4].copy_from_slice(&0xFFFFu32.to_ne_bytes());
        buf[4..8].copy_from_slice(&212u32.to_ne_bytes());
        let rdna = decode_power(&buf, PowerLayout::V24, "24.7.1");
        assert_eq!(rdna[0], (PowerField::Current, None));
        assert_eq!(rdna[1], (PowerField::Average, Some(212.0)));
        let mut buf = vec![0u8; 64];
        buf[0..8].copy_from_slice(&300u64.to_ne_bytes());
        buf[8..12].copy_from_slice(&u32::MAX.to_ne_bytes());
        buf[12..16].copy_from_slice(&180u32.to_ne_bytes());
        let v25 = decode_power(&buf, PowerLayout::V25, "25.3.0");
        assert_eq!(v25.len(), 2, "socket_power is for hosts in 25.x");
        assert_eq!(v25[1], (PowerField::Average, Some(180.0)));
        let v26 = decode_power(&buf, PowerLayout::V25, "26.0.0");
        assert_eq!(v26[2], (PowerField::Socket, Some(300.0)));
    }
}
