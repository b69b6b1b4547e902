//! The resolver's side of regions: claiming, in one call per drained batch, the regions its
//! rows resolve (see [`super`] for the regions themselves).

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

use super::Region;

/// Claims the regions a drained batch resolves: for each row `k` whose id (native-endian u64s
/// in `ids`) is waiting in `pending`, pops it, points it at `(batch, k)` and puts its details
/// (name, thread, parent, tags) in `infos[k]`. Returns the rows claimed and their regions.
/// One call per batch, so a region costs the resolver no Python bytecode.
#[pyfunction]
#[allow(clippy::type_complexity)]
pub(crate) fn claim_regions<'py>(
    pending: &Bound<'py, PyDict>,
    ids: &[u8],
    batch: &Bound<'py, PyAny>,
    infos: &Bound<'py, PyList>,
) -> PyResult<(Vec<usize>, Vec<Bound<'py, Region>>)> {
    let py = pending.py();
    let (mut rows, mut regions) = (Vec::new(), Vec::new());
    if pending.is_empty() {
        return Ok((rows, regions));
    }
    for (k, chunk) in ids.chunks_exact(8).enumerate() {
        let id = u64::from_ne_bytes(chunk.try_into().expect("8 bytes"));
        if id == 0 {
            continue;
        }
        let Some(p) = pending.get_item(id)? else {
            continue;
        };
        pending.del_item(id)?;
        let region = p.cast_into::<Region>()?;
        {
            let mut r = region.borrow_mut();
            r.raw_batch = Some(batch.clone().unbind());
            r.raw_row = k;
            let details = (
                r.name.clone_ref(py),
                r.thread,
                r.parent,
                r.tags.as_ref().map(|t| t.clone_ref(py)),
            );
            infos.set_item(k, details)?;
        }
        rows.push(k);
        regions.push(region);
    }
    Ok((rows, regions))
}
