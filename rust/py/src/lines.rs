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
use std::fmt::Write as _;
use std::sync::OnceLock;

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyTuple};

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

/// The text of an uncertainty (at most `-1.2e-308`: ten bytes).
#[derive(Clone, Copy, Default)]
struct UText {
    len: u8,
    bytes: [u8; 11],
}

/// Slots of [`CompactLines::u_texts`] (a power of two).
const U_SLOTS: usize = 256;

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
        let mut names: Vec<(usize, String)> = Vec::new();
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
            let at = match names.iter().position(|(p, _)| *p == key) {
                Some(at) => at,
                None => {
                    let (text, new): (String, bool) = cb.name_json.call1((&name,))?.extract()?;
                    names.push((key, text));
                    if new {
                        // The first line of a name is its full record (made by Python).
                        out.push_str(&cb.full_line.call1((k,))?.extract::<String>()?);
                        continue;
                    }
                    names.len() - 1
                }
            };
            let name_text = &names[at].1;
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
            if !tags.is_none() {
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

/// [`push_u`] through a table of the texts met lately ([`CompactLines::u_texts`]).
fn push_u_cached(table: &mut [(u64, UText)], out: &mut String, u: f64) {
    let bits = u.to_bits();
    let slot = (bits.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as usize % U_SLOTS;
    let (key, text) = &mut table[slot];
    if *key == bits && text.len > 0 {
        // SAFETY: the bytes were copied from a `String` (UTF-8), as many as `len`.
        out.push_str(unsafe {
            std::str::from_utf8_unchecked(&text.bytes[..usize::from(text.len)])
        });
        return;
    }
    let at = out.len();
    push_u(out, u);
    let new = &out.as_bytes()[at..];
    if new.len() <= text.bytes.len() {
        text.bytes[..new.len()].copy_from_slice(new);
        text.len = new.len() as u8;
        *key = bits;
    }
}

/// `u` rounded up to two significant digits (an uncertainty that still bounds the error); NaN,
/// infinities, zeros and negative values as they are. The same operations as the Python
/// `ceil2_array`.
fn ceil2(u: f64) -> f64 {
    match ceil2_parts(u) {
        Some((c, scale, _)) => c * scale,
        None => u,
    }
}

/// The parts of [`ceil2`] of a positive finite `u`: the two digits `c` (10 to 100), the scale
/// (`10^e` as Python computes it) and `e`.
fn ceil2_parts(u: f64) -> Option<(f64, f64, i32)> {
    if !(u.is_finite() && u > 0.0) {
        return None;
    }
    let e = floor(u.log10()) - 1.0;
    let scale = pow10(e as i32);
    Some((ceil(u / scale - 1e-9), scale, e as i32))
}

/// The exponents [`ceil2_parts`] meets (those of positive finite floats, less one).
const POW10_MIN: i32 = -325;
const POW10_MAX: i32 = 308;

/// `10^e` as `10f64.powf(e)` gives it (what Python computes), from a table made once.
fn pow10(e: i32) -> f64 {
    static TABLE: OnceLock<Vec<f64>> = OnceLock::new();
    let table = TABLE.get_or_init(|| {
        (POW10_MIN..=POW10_MAX)
            .map(|e| 10f64.powf(f64::from(e)))
            .collect()
    });
    match usize::try_from(e - POW10_MIN)
        .ok()
        .and_then(|i| table.get(i))
    {
        Some(&p) => p,
        None => 10f64.powf(f64::from(e)),
    }
}

/// An uncertainty as the lines write it: `"%.2g"` of [`ceil2`] of it, `null` where not finite.
fn push_u(out: &mut String, u: f64) {
    match ceil2_parts(u) {
        // c × 10^e is within an ulp or two of a number of two digits: those are its digits.
        Some((c, scale, e)) if (10.0..100.0).contains(&c) && (c * scale).is_finite() => {
            let c = c as u8;
            push_2g_digits(out, false, [b'0' + c / 10, b'0' + c % 10], e + 1);
        }
        Some((100.0, scale, e)) if (100.0 * scale).is_finite() => {
            push_2g_digits(out, false, *b"10", e + 2);
        }
        _ => push_2g(out, ceil2(u)),
    }
}

/// The decimal digits of `v` (in `buf`, returned as text).
fn digits(buf: &mut [u8; 20], mut v: u64) -> &str {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    // SAFETY: `buf[i..]` holds ASCII digits only.
    unsafe { std::str::from_utf8_unchecked(&buf[i..]) }
}

/// `x.round_ties_even()` (NumPy's `rint`) without a call into libm (the baseline x86-64 has no
/// rounding instruction): adding and taking away 2^52 rounds to an integer, ties to even.
fn rint(x: f64) -> f64 {
    const BIG: f64 = 4_503_599_627_370_496.0; // 2^52: from there on every float is whole
    if x.abs() >= BIG || x.is_nan() {
        x
    } else if x >= 0.0 {
        (x + BIG) - BIG
    } else {
        (x - BIG) + BIG
    }
}

/// `x.floor()` and `x.ceil()` for the small numbers here (libm's otherwise).
fn floor(x: f64) -> f64 {
    if x.abs() >= 1e15 || x.is_nan() {
        return x.floor();
    }
    let t = x as i64 as f64;
    if t > x {
        t - 1.0
    } else {
        t
    }
}

fn ceil(x: f64) -> f64 {
    -floor(-x)
}

fn push_u64(out: &mut String, v: u64) {
    out.push_str(digits(&mut [0; 20], v));
}

fn push_i64(out: &mut String, v: i64) {
    if v < 0 {
        out.push('-');
    }
    push_u64(out, v.unsigned_abs());
}

/// A whole number of microjoules as JSON: its digits (exact, whatever its size), `null` for a
/// source without a figure.
fn push_int(out: &mut String, x: f64) {
    if !x.is_finite() {
        out.push_str("null");
    } else if x.abs() < 9.0e18 {
        push_i64(out, x as i64);
    } else {
        let _ = write!(out, "{x:.0}");
    }
}

/// Python's `repr` of `k` microjoules in joules (`k / 1e6`), which for fewer than 10^15 is
/// the decimal `k × 10^-6` itself (a decimal of at most 15 digits is the only one of so few
/// that reads back as its nearest float).
fn push_micro(out: &mut String, k: i64) {
    if k == 0 {
        out.push_str("0.0");
        return;
    }
    let mut buf = [0; 20];
    let text = digits(&mut buf, k.unsigned_abs());
    let len = text.len() as i32;
    push_decimal(out, k < 0, text.trim_end_matches('0'), len - 7);
}

/// Python's `repr` of a float (the shortest text that reads back the same; exponent form below
/// 1e-4 and from 1e16); `null` for NaN and infinities.
fn push_repr(out: &mut String, x: f64) {
    if !x.is_finite() {
        out.push_str("null");
        return;
    }
    if x == 0.0 {
        out.push_str(if x.is_sign_negative() { "-0.0" } else { "0.0" });
        return;
    }
    // The shortest digits that read back as `x`; where there are several of that length,
    // Python writes the one closest to `x` (the correctly rounded one), which this may not be.
    let mut s = format!("{:e}", x.abs());
    let len = s.find('e').expect("an exponent") - usize::from(s.contains('.'));
    if len >= 16 {
        let closest = format!("{:.*e}", len - 1, x.abs());
        if closest != s && closest.parse::<f64>() == Ok(x.abs()) {
            s = closest;
        }
    }
    let (mant, exp) = s.split_once('e').expect("an exponent");
    let digits: String = mant.chars().filter(|c| *c != '.').collect();
    push_decimal(
        out,
        x < 0.0,
        &digits,
        exp.parse().expect("an integer exponent"),
    );
}

/// `0.d…`, `d….d…` or `d.d…e±XX` as Python's `repr` lays out the significant `digits` (no
/// trailing zeros) of a number `d.d… × 10^exp`.
fn push_decimal(out: &mut String, neg: bool, digits: &str, exp: i32) {
    if neg {
        out.push('-');
    }
    if !(-4..16).contains(&exp) {
        push_exp(out, digits, exp);
    } else if exp < 0 {
        out.push_str("0.");
        for _ in 0..(-exp - 1) {
            out.push('0');
        }
        out.push_str(digits);
    } else {
        let point = exp as usize + 1;
        if digits.len() > point {
            out.push_str(&digits[..point]);
            out.push('.');
            out.push_str(&digits[point..]);
        } else {
            out.push_str(digits);
            for _ in digits.len()..point {
                out.push('0');
            }
            out.push_str(".0");
        }
    }
}

/// `d[.ddd]e±XX` (Python's exponent form: a sign and at least two digits).
fn push_exp(out: &mut String, digits: &str, exp: i32) {
    out.push_str(&digits[..1]);
    if digits.len() > 1 {
        out.push('.');
        out.push_str(&digits[1..]);
    }
    out.push_str(if exp < 0 { "e-" } else { "e+" });
    if exp.abs() < 10 {
        out.push('0');
    }
    push_u64(out, u64::from(exp.unsigned_abs()));
}

/// Python's `"%.2g" % x` (two significant digits, trailing zeros dropped; exponent form below
/// 1e-4 and from 100); `null` for NaN and infinities.
fn push_2g(out: &mut String, x: f64) {
    if !x.is_finite() {
        out.push_str("null");
        return;
    }
    if x == 0.0 {
        out.push_str(if x.is_sign_negative() { "-0" } else { "0" });
        return;
    }
    let s = format!("{:.1e}", x.abs());
    let (mant, exp) = s.split_once('e').expect("an exponent");
    let m = mant.as_bytes();
    push_2g_digits(
        out,
        x < 0.0,
        [m[0], m[2]],
        exp.parse().expect("an integer exponent"),
    );
}

/// `"%.2g"` laid out from the two digits `d` of a number `d.d × 10^exp`.
fn push_2g_digits(out: &mut String, neg: bool, d: [u8; 2], exp: i32) {
    if neg {
        out.push('-');
    }
    let digits = std::str::from_utf8(if d[1] == b'0' { &d[..1] } else { &d[..] }).expect("digits");
    if exp == 1 {
        out.push(d[0] as char); // two digits, no point
        out.push(d[1] as char);
    } else if exp == 0 {
        out.push_str(&digits[..1]);
        if digits.len() > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
    } else if (-4..0).contains(&exp) {
        out.push_str("0.");
        for _ in 0..(-exp - 1) {
            out.push('0');
        }
        out.push_str(digits);
    } else {
        push_exp(out, digits, exp);
    }
}

/// How the lines write each float (for tests): Python's `repr`, `"%.2g"`, and `"%.2g"` of it
/// rounded up to two significant digits (as an uncertainty).
#[pyfunction]
pub(crate) fn float_texts(xs: Vec<f64>) -> Vec<(String, String, String)> {
    xs.into_iter()
        .map(|x| {
            let (mut r, mut g, mut u) = (String::new(), String::new(), String::new());
            push_repr(&mut r, x);
            push_2g(&mut g, x);
            push_u(&mut u, x);
            (r, g, u)
        })
        .collect()
}
