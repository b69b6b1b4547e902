//! TODO (placeholder until the backend lands)

use crate::source::{Found, Roots};

pub fn discover(_roots: &Roots) -> Found {
    Found::default()
}
