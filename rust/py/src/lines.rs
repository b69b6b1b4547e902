//! The compact region lines of a drained batch (JSON Lines, format 2: the format is described
//! in `carbonctx/_output/compact.py`, the batch's layout in `carbonctx/_measure/compact.py`).
//!
//! The ordinary lines (a region whose name has been written before) are made here from the
//! batch's columns, with no Python object per line; the rare parts stay Python's and are asked
//! for through callbacks: a name's JSON text and whether it is new (its first line is the full
//! record, made by Python), the JSON of a region's tags, and a region's own carbon details when
//! the batch's span crosses two intensity periods. The numbers are written as Python writes
//! them (`repr` of a float, `%.2g`, integers), so the lines are those the Python formatter
//! wrote before.

use std::collections::HashMap;

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyString, PyTuple};

use crate::numtext::{
    push_i64, push_int, push_micro, push_repr, push_u64, push_u_cached, rint, UText, U_SLOTS,
};

/// One output file's compact lines: the written columns, those that add into `energy_j`, and
/// the threads seen so far (each line names its thread by an index, written in `threads`
/// records).
#[pyclass(module = "carbonctx._native")]
pub(crate) struct CompactLines {
    /// Joules per row in the batch (every source of the sampler).
    width: usize,
    /// The columns written (in the context's order) and whether each counts in `energy_j`.
    cols: Vec<(usize, bool)>,
    threads: HashMap<u64, u64>,
    /// The texts of uncertainties met lately, by their bits: a counter's readings come in
    /// steps, so a batch has few distinct uncertainties (a dozen per source in thousands of
    /// regions), each worked out once.
    u_texts: Vec<(u64, UText)>,
}

/// A batch's lines (UTF-8) and the threads first seen in them: (index, ident).
type Lines<'py> = (Bound<'py, PyBytes>, Vec<(u64, u64)>);

/// The parts of a batch's lines that Python gives (see the module's doc).
struct Callbacks<'a, 'py> {
    name_json: &'a Bound<'py, PyAny>,
    full_line: &'a Bound<'py, PyAny>,
    tags_json: &'a Bound<'py, PyAny>,
    row_carbon: Option<&'a Bound<'py, PyAny>>,
}

fn column(b: &[u8], what: &str, n: usize) -> PyResult<Vec<u64>> {
    if b.len() != n * 8 {
        return Err(pyo3::exceptions::PyValueError::new_err(format!(
            "{what}: {} bytes for {n} rows",
            b.len()
        )));
    }
    Ok(b.chunks_exact(8)
        .map(|c| u64::from_ne_bytes(c.try_into().expect("8 bytes")))
        .collect())
}

fn floats(b: &[u8]) -> Vec<f64> {
    b.chunks_exact(8)
        .map(|c| f64::from_ne_bytes(c.try_into().expect("8 bytes")))
        .collect()
}

#[pymethods]
impl CompactLines {
    #[new]
    fn new(width: usize, cols: Vec<usize>, counted: Vec<usize>) -> PyResult<Self> {
        if cols.iter().any(|&c| c >= width) || counted.iter().any(|&k| k >= cols.len()) {
            return Err(pyo3::exceptions::PyValueError::new_err(
                "a column past the batch's width",
            ));
        }
        Ok(CompactLines {
            width,
            cols: cols
                .iter()
                .enumerate()
                .map(|(k, &c)| (c, counted.contains(&k)))
                .collect(),
            threads: HashMap::new(),
            u_texts: vec![(0, UText::default()); U_SLOTS],
        })
    }

    /// The first start and the last end (ns) of `rows` of a batch's `t0`, `t1` columns.
    fn span(&self, t0: &[u8], t1: &[u8], rows: Vec<usize>) -> PyResult<(u64, u64)> {
        let n = t0.len() / 8;
        let (t0, t1) = (column(t0, "t0", n)?, column(t1, "t1", n)?);
        let mut lo = u64::MAX;
        let mut hi = 0;
        for &k in &rows {
            if k >= n {
                return Err(pyo3::exceptions::PyIndexError::new_err("row out of range"));
            }
            lo = lo.min(t0[k]);
            hi = hi.max(t1[k]);
        }
        Ok((if rows.is_empty() { 0 } else { lo }, hi))
    }

    /// The lines of `rows` of a batch whose columns are `ids`, `t0`, `t1` (u64 each), `joules`
    /// and `unc` (f64, `width` per row), with `infos[row]` its region's `(name, thread,
    /// parent, tags)`, `base` the batch's first start. Returns the lines (UTF-8) and the
    /// threads first seen (index, ident) for a `threads` record.
    ///
    /// `name_json(name) -> (text, new)`: a new name's first line is `full_line(row)`, the
    /// region's full record; `tags_json(tags) -> text`; `row_carbon(energy_j, t0, t1) -> text`
    /// (`,"carbon":...` or empty), for every compact line, or None when the batch shares one
    /// intensity period.
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (ids, t0, t1, joules, unc, rows, infos, base, name_json, full_line,
                        tags_json, row_carbon=None))]
    fn lines<'py>(
        &mut self,
        py: Python<'py>,
        ids: &[u8],
        t0: &[u8],
        t1: &[u8],
        joules: &[u8],
        unc: &[u8],
        rows: Vec<usize>,
        infos: &Bound<'py, PyList>,
        base: u64,
        name_json: &Bound<'py, PyAny>,
        full_line: &Bound<'py, PyAny>,
        tags_json: &Bound<'py, PyAny>,
        row_carbon: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Lines<'py>> {
        let n = ids.len() / 8;
        let (ids, t0, t1) = (
            column(ids, "ids", n)?,
            column(t0, "t0", n)?,
            column(t1, "t1", n)?,
        );
        let (joules, unc) = (floats(joules), floats(unc));
        if joules.len() != n * self.width || unc.len() != n * self.width {
            return Err(pyo3::exceptions::PyValueError::new_err(
                "joules or uncertainties of another width",
            ));
        }
        let cb = Callbacks {
            name_json,
            full_line,
            tags_json,
            row_carbon,
        };
        let mut out = String::with_capacity(rows.len() * 160);
        // Each name's text, by the name object (few per batch; alive in `infos` meanwhile).
        let mut names: Vec<String> = Vec::new();
        // Looked up by the name object, then by its text: equal names made anew for each region
        // (an f-string) are one name, found without a call into Python or a search per row.
        let mut by_object: HashMap<usize, usize> = HashMap::new();
        let mut by_text: HashMap<String, usize> = HashMap::new();
        let mut last_thread = (0, 0); // (ident, index) of the previous line
        let mut new_threads = Vec::new();
        let mut prev_end = base;
        let mut last_th = 0;
        for &k in &rows {
            if k >= n {
                return Err(pyo3::exceptions::PyIndexError::new_err("row out of range"));
            }
            let info = infos.get_item(k)?;
            let info = info.cast::<PyTuple>()?;
            let name = info.get_item(0)?;
            let key = name.as_ptr() as usize; // alive in `infos` for the whole call
            let at = match by_object.get(&key) {
                Some(&at) => at,
                None => {
                    // Text that is not UTF-8 (a lone surrogate) is left to Python each time.
                    let text = name
                        .cast::<PyString>()
                        .ok()
                        .and_then(|s| s.to_str().ok().map(str::to_owned));
                    match text.as_ref().and_then(|t| by_text.get(t)) {
                        Some(&at) => {
                            by_object.insert(key, at);
                            at
                        }
                        None => {
                            let (json, new): (String, bool) =
                                cb.name_json.call1((&name,))?.extract()?;
                            names.push(json);
                            let at = names.len() - 1;
                            by_object.insert(key, at);
                            if let Some(t) = text {
                                by_text.insert(t, at);
                            }
                            if new {
                                // The first line of a name is its full record (made by Python).
                                out.push_str(&cb.full_line.call1((k,))?.extract::<String>()?);
                                continue;
                            }
                            at
                        }
                    }
                }
            };
            let name_text = &names[at];
            let thread: u64 = info.get_item(1)?.extract()?;
            let parent: Option<u64> = info.get_item(2)?.extract()?;
            let th = if thread == 0 {
                0
            } else if thread == last_thread.0 {
                last_thread.1
            } else {
                let next = self.threads.len() as u64 + 1;
                let th = *self.threads.entry(thread).or_insert_with(|| {
                    new_threads.push((next, thread));
                    next
                });
                last_thread = (thread, th);
                th
            };
            let (start, end) = (t0[k], t1[k]);
            let row = k * self.width;
            out.push_str("{\"kind\":\"region\",\"name\":");
            out.push_str(name_text);
            out.push_str(",\"id\":");
            push_u64(&mut out, ids[k]);
            out.push_str(",\"parent\":");
            match parent {
                Some(p) => push_u64(&mut out, p),
                None => out.push_str("null"),
            }
            out.push_str(",\"t\":");
            push_i64(&mut out, start as i64 - prev_end as i64);
            out.push_str(",\"dt\":");
            push_i64(&mut out, end as i64 - start as i64);
            out.push_str(",\"energy_j\":");
            prev_end = end;
            let mut energy = 0.0;
            for &(c, counted) in &self.cols {
                let uj = rint(joules[row + c] * 1e6);
                if counted && uj.is_finite() {
                    energy += uj;
                }
            }
            if energy.abs() < 1e15 {
                push_micro(&mut out, energy as i64); // a sum of whole numbers, exact
            } else {
                push_repr(&mut out, energy / 1e6);
            }
            out.push_str(",\"j\":[");
            for (i, &(c, _)) in self.cols.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                push_int(&mut out, rint(joules[row + c] * 1e6));
            }
            out.push_str("],\"u\":[");
            for (i, &(c, _)) in self.cols.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                push_u_cached(&mut self.u_texts, &mut out, unc[row + c]);
            }
            out.push(']');
            if th != last_th {
                out.push_str(",\"th\":");
                push_u64(&mut out, th);
                last_th = th;
            }
            let tags = info.get_item(3)?;
            if !tags.is_none() && tags.is_truthy()? {
                out.push_str(",\"tags\":");
                out.push_str(&cb.tags_json.call1((tags,))?.extract::<String>()?);
            }
            if let Some(f) = cb.row_carbon {
                out.push_str(&f.call1((energy / 1e6, start, end))?.extract::<String>()?);
            }
            out.push_str("}\n");
        }
        Ok((PyBytes::new(py, out.as_bytes()), new_threads))
    }

    /// The threads seen so far, by index (their `threads` records' content).
    fn threads<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        for (ident, idx) in &self.threads {
            d.set_item(idx.to_string(), ident)?;
        }
        Ok(d)
    }
}
