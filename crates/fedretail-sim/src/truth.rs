//! The generator's expected demand on a synthetic network: the forecast no model can
//! beat except by luck, because what is left is the day's own noise. Read only by this
//! harness, to say how much of a store's forecast error any forecaster could still win.

use fedretail_models::{metrics, DemandDataset};
use std::collections::HashMap;
use std::path::Path;

/// Expected units by (category, ISO date), as the generator wrote them for one store.
pub(crate) struct ExpectedUnits(HashMap<(String, String), f64>);

impl ExpectedUnits {
    /// The store's file under `store_dir`; None when it has none (a real export) or it
    /// cannot be read: the figure is then simply not reported.
    pub(crate) fn read(store_dir: &Path) -> Option<Self> {
        let path = store_dir.join(fedretail_synth::EXPECTED_UNITS_FILE);
        let mut reader = csv::Reader::from_path(path).ok()?;
        let mut by_key = HashMap::new();
        for record in reader.records() {
            let record = record.ok()?;
            let (category, date) = (record.get(1)?, record.get(0)?);
            let units: f64 = record.get(2)?.parse().ok()?;
            by_key.insert((category_key(category), date.to_string()), units);
        }
        Some(ExpectedUnits(by_key))
    }

    /// The WAPE of the expected units on the store's held-out rows; None when a row has
    /// no expected value (its category or day is not the generator's).
    pub(crate) fn wape_on_test(&self, ds: &DemandDataset) -> Option<f64> {
        if ds.test_keys.len() != ds.test.len() {
            return None;
        }
        let mut abs_error = 0.0;
        for ((category, date), y) in ds.test_keys.iter().zip(ds.test.units()) {
            let expected = self.0.get(&(category_key(category), date.to_string()))?;
            abs_error += (y - expected).abs();
        }
        metrics::wape(abs_error, ds.test.units().iter().sum())
    }
}

/// Categories as the store's SQL groups them: trimmed, any case.
fn category_key(name: &str) -> String {
    name.trim().to_lowercase()
}
