//! A seeded, deterministic synthetic network of independent retailers, written as each
//! store would export it: one directory per store with `transactions.csv` (one row per
//! receipt line), `promotions.csv` (the store's promotion calendar), `store.json`
//! (business type and size, as a store's onboarding form would give them) and
//! `anomaly_labels.csv` (ground truth of the injected fraud and data faults, used only
//! to score anomaly detectors, never read by training).
//!
//! The network has a long tail of store sizes, stores with only months of history,
//! weekly and yearly seasonality per business type and category, public holidays and
//! shopping events, promotions with a price response, recurring customers who arrive,
//! come back at their own rate and eventually churn, and labelled anomalies.
//!
//! ```no_run
//! use fedretail_synth::{generate_network, NetworkConfig};
//! let summary = generate_network(&NetworkConfig { stores: 10, ..Default::default() },
//!     std::path::Path::new("network")).unwrap();
//! println!("{} transaction lines", summary.lines);
//! ```

mod profiles;
mod store;

use chrono::NaiveDate;
use fedretail_domain::BusinessType;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub use store::{StoreProfile, EXPECTED_UNITS_FILE};

#[derive(Debug, thiserror::Error)]
pub enum SynthError {
    #[error("cannot write {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Config(String),
}

/// What network to generate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NetworkConfig {
    pub stores: usize,
    /// Days of history of a full-history store.
    pub days: u32,
    /// Last day of every store's export.
    pub end_date: NaiveDate,
    /// Fraction of stores that joined recently and have only weeks to months of
    /// history (8 weeks to 10 months).
    pub young_fraction: f64,
    /// Stores that joined last, with 8 weeks of history: 4 weeks to learn from before
    /// the 4 a demo holds out (the cold start). They are the network's last stores.
    /// None by default here; `fedretail generate` and `demo` add one.
    #[serde(default)]
    pub late_joiners: usize,
    /// Multiplies every store's traffic (1.0 is the default scale).
    pub volume: f64,
    /// Fraction of stores in office districts: busy Monday to Friday, quiet at weekends,
    /// on public holidays and in summer. Nothing in their metadata says so (their
    /// business type is drawn like any other's), so only their data can set them apart:
    /// the case clustered federated learning is for. None by default.
    #[serde(default)]
    pub office_fraction: f64,
    /// Inject labelled fraud patterns and data-quality faults.
    pub anomalies: bool,
    pub seed: u64,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        NetworkConfig {
            stores: 40,
            days: 730,
            end_date: NaiveDate::from_ymd_opt(2026, 6, 30).unwrap_or(NaiveDate::MIN),
            young_fraction: 0.2,
            late_joiners: 0,
            volume: 1.0,
            office_fraction: 0.0,
            anomalies: true,
            seed: 42,
        }
    }
}

impl NetworkConfig {
    pub fn validate(&self) -> Result<(), SynthError> {
        if self.stores == 0 {
            return Err(SynthError::Config("stores must be >= 1, got 0".into()));
        }
        if self.days < 120 {
            return Err(SynthError::Config(format!(
                "days must be >= 120, got {}",
                self.days
            )));
        }
        if !(0.0..=1.0).contains(&self.young_fraction) {
            return Err(SynthError::Config(format!(
                "young_fraction must be in [0, 1], got {}",
                self.young_fraction
            )));
        }
        if self.late_joiners > self.stores {
            return Err(SynthError::Config(format!(
                "late_joiners must be at most stores ({}), got {}",
                self.stores, self.late_joiners
            )));
        }
        if !(0.0..=1.0).contains(&self.office_fraction) {
            return Err(SynthError::Config(format!(
                "office_fraction must be in [0, 1], got {}",
                self.office_fraction
            )));
        }
        if !(self.volume > 0.0 && self.volume <= 100.0) {
            return Err(SynthError::Config(format!(
                "volume must be in (0, 100], got {}",
                self.volume
            )));
        }
        Ok(())
    }
}

/// What was generated.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NetworkSummary {
    pub config: NetworkConfig,
    pub stores: Vec<StoreProfile>,
    pub lines: u64,
    pub anomalies: u64,
}

/// History of a late joiner: 4 weeks to learn from, then the 4 weeks a demo holds out.
pub const LATE_JOINER_DAYS: u32 = 56;

/// Draw the store profiles of a network (cheap; no transactions).
pub fn plan_network(config: &NetworkConfig) -> Vec<StoreProfile> {
    let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
    // A stream of its own, so that asking for office stores changes nothing else.
    let mut offices = ChaCha8Rng::seed_from_u64(config.seed ^ 0x0FF1CE);
    (0..config.stores)
        .map(|i| {
            // A realistic mix: more groceries and convenience stores than florists.
            let weights = [0.24, 0.2, 0.12, 0.16, 0.14, 0.14];
            let u: f64 = rng.random();
            let mut acc = 0.0;
            let mut business = BusinessType::Grocery;
            for (b, w) in BusinessType::ALL.iter().zip(weights) {
                acc += w;
                if u < acc {
                    business = *b;
                    break;
                }
            }
            let spec = profiles::spec(business);
            // Long tail of sizes: log-normal around the business type's median.
            let z: f64 = rand_distr::Distribution::sample(&rand_distr::StandardNormal, &mut rng);
            let receipts =
                (spec.median_receipts * (0.9 * z).exp() * config.volume).clamp(2.0, 900.0);
            let young = rng.random::<f64>() < config.young_fraction;
            // Log-uniform: as many stores with 2-4 months as with 5-10.
            let young_days = (56.0 * rng.random_range(0.0..(300.0f64 / 56.0).ln()).exp()) as u32;
            let history_days = if i >= config.stores - config.late_joiners {
                LATE_JOINER_DAYS.min(config.days)
            } else if young {
                young_days.min(config.days)
            } else {
                config.days
            };
            StoreProfile {
                store_id: format!("store-{:03}", i + 1),
                business_type: business,
                mean_daily_receipts: (receipts * 100.0).round() / 100.0,
                first_day: config.end_date - chrono::Duration::days(history_days as i64 - 1),
                last_day: config.end_date,
                growth_per_year: rng.random_range(-0.05..0.15),
                seed: rng.random(),
                office: offices.random::<f64>() < config.office_fraction,
            }
        })
        .collect()
}

/// Generate the whole network into `out_dir/<store_id>/`. Stores are generated in
/// parallel; each store's output depends only on the config and its own seed.
pub fn generate_network(
    config: &NetworkConfig,
    out_dir: &Path,
) -> Result<NetworkSummary, SynthError> {
    generate_network_with_progress(config, out_dir, &|_| {})
}

/// As [`generate_network`], calling `on_store_done` after each store is written.
pub fn generate_network_with_progress(
    config: &NetworkConfig,
    out_dir: &Path,
    on_store_done: &(dyn Fn(&StoreProfile) + Sync),
) -> Result<NetworkSummary, SynthError> {
    config.validate()?;
    std::fs::create_dir_all(out_dir).map_err(|source| SynthError::Io {
        path: out_dir.to_path_buf(),
        source,
    })?;
    let profiles = plan_network(config);
    let counts = profiles
        .par_iter()
        .map(|p| {
            let r = store::write_store(p, config, &out_dir.join(&p.store_id));
            on_store_done(p);
            r
        })
        .collect::<Result<Vec<_>, _>>()?;
    let summary = NetworkSummary {
        config: config.clone(),
        stores: profiles,
        lines: counts.iter().map(|c| c.0).sum(),
        anomalies: counts.iter().map(|c| c.1).sum(),
    };
    let path = out_dir.join("network.json");
    let json =
        serde_json::to_string_pretty(&summary).map_err(|e| SynthError::Config(e.to_string()))?;
    std::fs::write(&path, json).map_err(|source| SynthError::Io { path, source })?;
    Ok(summary)
}
