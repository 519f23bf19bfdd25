//! Retail vocabulary shared by every part of fedretail that touches store data: the
//! canonical point-of-sale schema, the business types of the network and the holiday
//! calendar. Pure data; no IO.
//!
//! ```
//! use fedretail_domain::{calendar, BusinessType};
//! use chrono::NaiveDate;
//! assert_eq!("florist".parse::<BusinessType>().unwrap(), BusinessType::Florist);
//! assert!(calendar::is_public_holiday(NaiveDate::from_ymd_opt(2025, 12, 25).unwrap()));
//! ```

pub mod calendar;
pub mod schema;

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// The kinds of business in a retail network. Their catalogs, weekly and yearly
/// patterns differ, which is why federated models need care (non-IID data).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BusinessType {
    Grocery,
    Convenience,
    Florist,
    Hardware,
    Pharmacy,
    Fashion,
}

impl BusinessType {
    pub const ALL: [BusinessType; 6] = [
        BusinessType::Grocery,
        BusinessType::Convenience,
        BusinessType::Florist,
        BusinessType::Hardware,
        BusinessType::Pharmacy,
        BusinessType::Fashion,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            BusinessType::Grocery => "grocery",
            BusinessType::Convenience => "convenience",
            BusinessType::Florist => "florist",
            BusinessType::Hardware => "hardware",
            BusinessType::Pharmacy => "pharmacy",
            BusinessType::Fashion => "fashion",
        }
    }
}

impl fmt::Display for BusinessType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown business type '{0}' (expected one of grocery, convenience, florist, hardware, pharmacy, fashion)")]
pub struct UnknownBusinessType(pub String);

impl FromStr for BusinessType {
    type Err = UnknownBusinessType;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        BusinessType::ALL
            .into_iter()
            .find(|b| b.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| UnknownBusinessType(s.to_string()))
    }
}

/// The history bands, youngest first.
pub const HISTORY_BANDS: [&str; 4] = [
    "under 3 months",
    "3-6 months",
    "6-12 months",
    "a year or more",
];

/// History band of a store by the days of data it has, for reports.
pub fn history_band(days: u32) -> &'static str {
    HISTORY_BANDS[match days {
        0..=90 => 0,
        91..=182 => 1,
        183..=364 => 2,
        _ => 3,
    }]
}

/// Size band of a store by the units it sells per day, for reports.
pub fn size_band(units_per_day: f64) -> &'static str {
    if units_per_day < 50.0 {
        "small"
    } else if units_per_day < 300.0 {
        "medium"
    } else {
        "large"
    }
}
