//! Privacy for fedretail jobs: secure aggregation ([`secagg`], SecAgg+), and accounting
//! of what a job has spent, in (ε, δ), with a budget that refuses a round before it
//! would overspend.
//!
//! [`RdpAccountant`] tracks Rényi DP of the Poisson-subsampled Gaussian mechanism
//! (Mironov, Talwar and Zhang 2019) over a grid of orders and converts it to (ε, δ) with
//! the improved bound of Canonne, Kamath and Steinke (2020), as Google's `dp-accounting`
//! does; `fixtures/` holds that package's figures and the script that made them, and the
//! tests hold this crate to them. No maintained Rust crate ships this accountant.
//!
//! ```
//! use fedretail_privacy::RdpAccountant;
//! let mut acc = RdpAccountant::new();
//! acc.compose_poisson_gaussian(0.01, 1.1, 1000).unwrap();
//! let eps = acc.epsilon(1e-5).unwrap().epsilon;
//! assert!((eps - 1.7118).abs() < 0.01);
//! ```

mod dp_strategy;
mod ledger;
mod rdp;
pub mod secagg;
mod store_dp;

pub use dp_strategy::{ClipRule, Denominator, DpError, DpFedAvg, DpSettings, Sampling};
pub use ledger::{BudgetExceeded, LedgerEntry, PrivacyBudget, PrivacyLedger};
pub use rdp::{
    calibrate_noise_multiplier, rdp_distributed_discrete_gaussian, rdp_poisson_subsampled_gaussian,
    AccountingError, EpsilonAtDelta, RdpAccountant, DEFAULT_ORDERS,
};
pub use store_dp::{
    clip_l2, sum_noise_multiplier_with_count, AdaptiveClip, NoisePlacement, RoundMechanism,
};
