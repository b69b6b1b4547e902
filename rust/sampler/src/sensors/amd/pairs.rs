//! Paired dies: the GPUs AMD SMI lists but does not measure, matched with the die that reports
//! their package's energy (see the rule in the [`super`] module documentation).

use super::{SmiGpu, BACKEND};
use crate::sensors::Unavailable;

/// A GPU AMD SMI measures.
pub(super) struct Measured {
    pub(super) name: String,
    pub(super) bdf: String,
    pub(super) source: SmiGpu,
}

/// A GPU AMD SMI lists but does not measure: every reading 0 (`unusable` None), or none
/// readable, or (`shared`) a partition of a device already measured through another of its
/// partitions.
pub(super) struct Unmeasured {
    pub(super) index: u32,
    pub(super) name: String,
    pub(super) bdf: String,
    pub(super) label: String,
    pub(super) unusable: Option<Box<Unavailable>>,
    pub(super) shared: bool,
}

/// Reports each GPU AMD SMI does not measure as unavailable, naming its partner where it has
/// one, and notes on the partner's label that it covers the package. The partner of a die that
/// reads 0 is the nearest lower-numbered measured GPU of the same name (an MI250X's GCDs sit at
/// different PCI addresses); a GPU with no reading at all has a partner only at its own PCI
/// address (a partition of one device), else it keeps its own reason. A partition whose device
/// is measured through another partition (whatever it reads: the device's one counter) has that
/// partition as partner.
pub(super) fn pair_dies(
    unavailable: &mut Vec<Unavailable>,
    measured: &mut [Measured],
    unmeasured: Vec<Unmeasured>,
) {
    let mut partners: Vec<(usize, Vec<u32>)> = Vec::new();
    for u in unmeasured {
        let partner = measured
            .iter()
            .enumerate()
            .filter(|(_, m)| {
                if u.shared {
                    m.bdf == u.bdf
                } else {
                    m.source.info.index < u.index
                        && if u.unusable.is_some() {
                            m.bdf == u.bdf
                        } else {
                            m.name == u.name
                        }
                }
            })
            .max_by_key(|(_, m)| m.source.info.index)
            .map(|(slot, m)| (slot, m.source.info.index));
        let reads = if u.shared {
            "a partition of the device at its PCI address, whose partitions share one energy \
             counter and power"
        } else if u.unusable.is_some() {
            "it has no energy or power reading of its own"
        } else {
            "its energy counter and power read 0"
        };
        let reason = match (partner, u.unusable) {
            (Some((slot, p)), _) => {
                match partners.iter_mut().find(|(s, _)| *s == slot) {
                    Some((_, v)) => v.push(u.index),
                    None => partners.push((slot, vec![u.index])),
                }
                format!(
                    "{reads}: energy reported on its partner die, GPU {p} (paired-die parts \
                     such as the MI250X or a partitioned MI300X report a package's energy on \
                     one die); counted there, once"
                )
            }
            (None, Some(own)) => {
                unavailable.push(*own);
                continue;
            }
            (None, None) => format!(
                "{reads}: a paired die whose partner is not visible to this process \
                 (paired-die parts such as the MI250X report a package's energy on one die); \
                 not counted"
            ),
        };
        unavailable.push(Unavailable {
            backend: BACKEND,
            what: u.label,
            reason,
            hint: String::new(),
        });
    }
    for (slot, dies) in partners {
        let list: Vec<String> = dies.iter().map(u32::to_string).collect();
        measured[slot].source.info.label.push_str(&format!(
            " (covers its package: paired die(s) GPU {} report nothing of their own)",
            list.join(", ")
        ));
    }
}
