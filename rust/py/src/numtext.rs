//! Numbers as the compact region lines write them: as Python writes them (`repr` of a float,
//! `"%.2g"` of an uncertainty rounded up to two digits, integers), without the formatting
//! machinery or libm calls where a shorter way gives the same text (see `lines.rs`).

use std::fmt::Write as _;
use std::sync::OnceLock;

use pyo3::prelude::*;

/// The text of an uncertainty (at most `-1.2e-308`: ten bytes).
#[derive(Clone, Copy, Default)]
pub(crate) struct UText {
    len: u8,
    bytes: [u8; 11],
}

/// Slots of the table of `push_u_cached` (`CompactLines::u_texts`).
pub(crate) const U_SLOTS: usize = 256;

/// [`push_u`] through a table of the texts met lately (`CompactLines::u_texts`).
pub(crate) fn push_u_cached(table: &mut [(u64, UText)], out: &mut String, u: f64) {
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
        // (Not where 10^e is subnormal: c × 10^e is then not exact.)
        Some((c, scale, e))
            if (10.0..100.0).contains(&c)
                && scale >= f64::MIN_POSITIVE
                && (c * scale).is_finite() =>
        {
            let c = c as u8;
            push_2g_digits(out, false, [b'0' + c / 10, b'0' + c % 10], e + 1);
        }
        Some((100.0, scale, e)) if scale >= f64::MIN_POSITIVE && (100.0 * scale).is_finite() => {
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
pub(crate) fn rint(x: f64) -> f64 {
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

pub(crate) fn push_u64(out: &mut String, v: u64) {
    out.push_str(digits(&mut [0; 20], v));
}

pub(crate) fn push_i64(out: &mut String, v: i64) {
    if v < 0 {
        out.push('-');
    }
    push_u64(out, v.unsigned_abs());
}

/// A whole number of microjoules as JSON: its digits (exact, whatever its size), `null` for a
/// source without a figure.
pub(crate) fn push_int(out: &mut String, x: f64) {
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
pub(crate) fn push_micro(out: &mut String, k: i64) {
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
pub(crate) fn push_repr(out: &mut String, x: f64) {
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
