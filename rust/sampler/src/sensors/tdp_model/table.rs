//! The embedded TDP table and its lookup by model name (see [`super`] for where the table
//! comes from and how the estimate uses it).

use std::sync::OnceLock;

/// The embedded TDP table (`Name,TDP`; names as vendors write them). Attribution in the
/// documentation of [`super`] and in `data/SOURCES.md`. Rows without a positive TDP are skipped.
const TDP_TABLE: &str = include_str!("../../../data/cpu-tdp.csv");

/// A model name reduced to comparable words: lower case, without `(R)`, `(TM)`, `CPU`,
/// `Processor`, the `@ x.xxGHz` suffix, commas and extra spaces.
pub fn normalise_model(name: &str) -> Vec<String> {
    let mut s = name.to_lowercase();
    if let Some(at) = s.find('@') {
        s.truncate(at);
    }
    for mark in ["(r)", "(tm)", "®", "™", ","] {
        s = s.replace(mark, " ");
    }
    s.split_whitespace()
        .filter(|w| *w != "cpu" && *w != "processor")
        .map(str::to_string)
        .collect()
}

struct TableEntry {
    name: &'static str,
    words: Vec<String>,
    /// Entries without a vendor word (`FX-8350`, `A10-7850K`, `6140`) are AMD parts: they
    /// match only model names that say AMD.
    needs_amd: bool,
    tdp_w: f64,
}

fn table() -> &'static [TableEntry] {
    static TABLE: OnceLock<Vec<TableEntry>> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut entries = Vec::new();
        for line in TDP_TABLE.lines().skip(1) {
            let (name, rest) = match line.strip_prefix('"') {
                Some(quoted) => match quoted.split_once("\",") {
                    Some(parts) => parts,
                    None => continue,
                },
                None => match line.rsplit_once(',') {
                    Some(parts) => parts,
                    None => continue,
                },
            };
            let Ok(tdp_w) = rest.trim().parse::<f64>() else {
                continue;
            };
            let words = normalise_model(name);
            if words.is_empty() || !(tdp_w.is_finite() && tdp_w > 0.0) {
                continue;
            }
            let needs_amd = !matches!(words[0].as_str(), "intel" | "amd" | "apple");
            entries.push(TableEntry {
                name,
                words,
                needs_amd,
                tdp_w,
            });
        }
        entries
    })
}

/// Looks a `/proc/cpuinfo` model name up in the embedded table: the longest table name whose
/// words appear, in order and next to each other, among the model's words (after
/// [`normalise_model`]). Returns the table's name and its TDP in watts.
pub fn lookup_tdp(model_name: &str) -> Option<(&'static str, f64)> {
    let words = normalise_model(model_name);
    let is_amd = words.iter().any(|w| w == "amd");
    let mut best: Option<(&TableEntry, usize)> = None;
    for entry in table() {
        if entry.needs_amd && !is_amd {
            continue;
        }
        let n = entry.words.len();
        if n > words.len() || !words.windows(n).any(|w| w == entry.words.as_slice()) {
            continue;
        }
        let len: usize = entry.words.iter().map(|w| w.len() + 1).sum();
        let better = match best {
            Some((_, l)) => len > l,
            None => true,
        };
        if better {
            best = Some((entry, len));
        }
    }
    best.map(|(e, _)| (e.name, e.tdp_w))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_loads_whole() {
        // 4,918 rows, of which 5 have no usable TDP (a 0 W entry and four like "27.29.5").
        assert_eq!(table().len(), 4913);
    }
}
