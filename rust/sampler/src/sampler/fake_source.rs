//! A stand-in energy source for the sampler's unit tests, which drive its reads themselves: a
//! package source read every millisecond whose reads answer 0.

use std::time::Duration;

use crate::error::Error;
use crate::sensors::{CounterSpec, Domain, EnergySource, Method, Reading, SourceInfo};

pub(crate) struct Fake(SourceInfo);

impl EnergySource for Fake {
    fn info(&self) -> &SourceInfo {
        &self.0
    }
    fn read(&mut self) -> Result<Reading, Error> {
        Ok(Reading::Counter(0))
    }
}

/// A package counter of `counter`'s units, or, without one, a package read as power.
pub(crate) fn package(counter: Option<CounterSpec>) -> Box<Fake> {
    Box::new(Fake(SourceInfo {
        id: "fake:0".into(),
        backend: "powercap",
        domain: Domain::Package,
        index: 0,
        label: "package-0".into(),
        method: if counter.is_some() {
            Method::Counter
        } else {
            Method::IntegratedPower
        },
        counter,
        interval: Duration::from_millis(1),
        path: None,
        uuid: None,
    }))
}
