//! What each kind of business sells and when. Figures are plausible shapes, not
//! calibrated to any real chain: what matters for the product is that the kinds differ
//! (catalog, weekly rhythm, yearly peaks, reaction to holidays and events).

use fedretail_domain::calendar::ShoppingEvent;
use fedretail_domain::BusinessType;

pub(crate) struct CategorySpec {
    pub name: &'static str,
    /// Share of the store's line items.
    pub share: f64,
    pub price: (f64, f64),
    pub products: u32,
    /// Day of year of the seasonal peak, and the log-amplitude of the season.
    pub peak_day: f64,
    pub season: f64,
    /// Mean units per line.
    pub quantity: f64,
}

impl CategorySpec {
    /// Expected lines of this category on day of year `doy` at `discount` off, per
    /// line of the store's day: its share, its season and the promotion's lift.
    pub fn line_rate(&self, doy: f64, discount: f64, promo_elasticity: f64) -> f64 {
        let season = (self.season
            * (2.0 * std::f64::consts::PI * (doy - self.peak_day) / 365.25).cos())
        .exp();
        self.share * season * (1.0 - discount).powf(-promo_elasticity)
    }

    /// Expected units per line (a line is one unit plus a Poisson number of extras).
    pub fn mean_quantity(&self) -> f64 {
        self.quantity.max(1.0)
    }
}

pub(crate) struct BusinessSpec {
    pub median_receipts: f64,
    pub items_per_receipt: f64,
    /// Monday .. Sunday.
    pub weekly: [f64; 7],
    pub public_holiday: f64,
    pub events: fn(ShoppingEvent) -> f64,
    pub open_hours: (u32, u32),
    /// Share of receipts with a known customer.
    pub identified: f64,
    /// cash, card, mobile, online.
    pub payments: [f64; 4],
    pub categories: &'static [CategorySpec],
}

const fn cat(
    name: &'static str,
    share: f64,
    price: (f64, f64),
    products: u32,
    peak_month: f64,
    season: f64,
    quantity: f64,
) -> CategorySpec {
    CategorySpec {
        name,
        share,
        price,
        products,
        peak_day: (peak_month - 0.5) * 30.4,
        season,
        quantity,
    }
}

static GROCERY: &[CategorySpec] = &[
    cat("produce", 0.20, (0.5, 4.0), 80, 7.0, 0.15, 1.8),
    cat("dairy", 0.16, (0.8, 5.0), 50, 1.0, 0.05, 1.5),
    cat("bakery", 0.12, (0.6, 6.0), 30, 12.0, 0.12, 1.3),
    cat("meat", 0.10, (3.0, 18.0), 40, 7.0, 0.20, 1.2),
    cat("beverages", 0.14, (0.8, 12.0), 70, 7.5, 0.35, 1.7),
    cat("pantry", 0.14, (0.7, 8.0), 120, 11.0, 0.08, 1.4),
    cat("household", 0.08, (1.5, 12.0), 60, 3.0, 0.05, 1.1),
    cat("snacks", 0.06, (0.8, 5.0), 50, 12.0, 0.15, 1.4),
];
static CONVENIENCE: &[CategorySpec] = &[
    cat("beverages", 0.30, (0.8, 4.0), 40, 7.5, 0.30, 1.3),
    cat("snacks", 0.22, (0.7, 4.0), 40, 12.0, 0.10, 1.2),
    cat("tobacco", 0.15, (6.0, 12.0), 20, 6.0, 0.03, 1.0),
    cat("newspapers", 0.08, (1.0, 5.0), 15, 1.0, 0.05, 1.0),
    cat("ready_meals", 0.15, (2.5, 7.0), 25, 1.5, 0.10, 1.0),
    cat("ice_cream", 0.10, (1.0, 5.0), 15, 7.5, 0.90, 1.2),
];
static FLORIST: &[CategorySpec] = &[
    cat("bouquets", 0.38, (15.0, 60.0), 25, 5.0, 0.15, 1.0),
    cat("plants", 0.25, (6.0, 40.0), 40, 4.5, 0.45, 1.2),
    cat("arrangements", 0.15, (30.0, 120.0), 15, 12.0, 0.15, 1.0),
    cat("gifts", 0.12, (4.0, 25.0), 30, 12.0, 0.30, 1.1),
    cat("seeds", 0.10, (1.5, 6.0), 40, 3.5, 0.80, 1.6),
];
static HARDWARE: &[CategorySpec] = &[
    cat("tools", 0.22, (5.0, 120.0), 120, 12.0, 0.20, 1.0),
    cat("paint", 0.14, (8.0, 60.0), 50, 5.5, 0.30, 1.3),
    cat("garden", 0.20, (3.0, 80.0), 80, 4.5, 0.90, 1.4),
    cat("plumbing", 0.14, (2.0, 50.0), 90, 2.0, 0.08, 1.5),
    cat("electrical", 0.16, (2.0, 45.0), 90, 11.0, 0.10, 1.4),
    cat("heating", 0.14, (10.0, 150.0), 30, 1.0, 0.75, 1.0),
];
static PHARMACY: &[CategorySpec] = &[
    cat("cold_flu", 0.22, (4.0, 15.0), 40, 1.0, 0.85, 1.1),
    cat("allergy", 0.12, (5.0, 18.0), 20, 5.0, 0.80, 1.0),
    cat("personal_care", 0.24, (2.0, 20.0), 90, 6.0, 0.05, 1.3),
    cat("vitamins", 0.16, (6.0, 30.0), 40, 1.5, 0.20, 1.1),
    cat("sun_care", 0.10, (6.0, 25.0), 20, 7.0, 1.00, 1.1),
    cat("baby", 0.16, (3.0, 30.0), 40, 6.0, 0.03, 1.4),
];
static FASHION: &[CategorySpec] = &[
    cat("tops", 0.28, (12.0, 60.0), 150, 6.0, 0.15, 1.3),
    cat("dresses", 0.16, (30.0, 140.0), 80, 6.0, 0.45, 1.0),
    cat("outerwear", 0.16, (50.0, 250.0), 50, 11.0, 0.80, 1.0),
    cat("shoes", 0.22, (35.0, 160.0), 90, 4.0, 0.15, 1.0),
    cat("accessories", 0.18, (8.0, 70.0), 100, 12.0, 0.35, 1.2),
];

fn grocery_events(e: ShoppingEvent) -> f64 {
    match e {
        ShoppingEvent::PreChristmas => 1.45,
        ShoppingEvent::NewYearsEve => 1.35,
        _ => 1.0,
    }
}
fn convenience_events(e: ShoppingEvent) -> f64 {
    match e {
        ShoppingEvent::NewYearsEve => 1.5,
        _ => 1.0,
    }
}
fn florist_events(e: ShoppingEvent) -> f64 {
    match e {
        ShoppingEvent::Valentines => 4.5,
        ShoppingEvent::MothersDay => 3.5,
        ShoppingEvent::PreChristmas => 1.6,
        _ => 1.0,
    }
}
fn hardware_events(e: ShoppingEvent) -> f64 {
    match e {
        ShoppingEvent::BlackFriday => 1.6,
        ShoppingEvent::PreChristmas => 1.2,
        _ => 1.0,
    }
}
fn pharmacy_events(_e: ShoppingEvent) -> f64 {
    1.0
}
fn fashion_events(e: ShoppingEvent) -> f64 {
    match e {
        ShoppingEvent::BlackFriday => 3.2,
        ShoppingEvent::PreChristmas => 1.7,
        ShoppingEvent::Valentines => 1.2,
        _ => 1.0,
    }
}

/// Monday .. Sunday of a shop among offices: its customers come on working days.
pub(crate) const OFFICE_WEEKLY: [f64; 7] = [1.45, 1.45, 1.45, 1.40, 1.25, 0.25, 0.15];
pub(crate) const OFFICE_PUBLIC_HOLIDAY: f64 = 0.15;

/// An office district's year: its workers are away in summer, so the shop's trough is
/// in mid-July and its peak in mid-January (log-amplitude 0.45), whatever it sells.
pub(crate) fn office_season(day_of_year: f64) -> f64 {
    (-0.45 * (2.0 * std::f64::consts::PI * (day_of_year - 196.0) / 365.25).cos()).exp()
}

pub(crate) fn spec(b: BusinessType) -> BusinessSpec {
    match b {
        BusinessType::Grocery => BusinessSpec {
            median_receipts: 55.0,
            items_per_receipt: 3.2,
            weekly: [0.90, 0.88, 0.93, 1.00, 1.18, 1.35, 0.76],
            public_holiday: 0.25,
            events: grocery_events,
            open_hours: (7, 21),
            identified: 0.55,
            payments: [0.25, 0.60, 0.15, 0.0],
            categories: GROCERY,
        },
        BusinessType::Convenience => BusinessSpec {
            median_receipts: 45.0,
            items_per_receipt: 1.6,
            weekly: [0.97, 0.96, 0.98, 1.02, 1.12, 1.08, 0.87],
            public_holiday: 0.85,
            events: convenience_events,
            open_hours: (6, 23),
            identified: 0.30,
            payments: [0.45, 0.40, 0.15, 0.0],
            categories: CONVENIENCE,
        },
        BusinessType::Florist => BusinessSpec {
            median_receipts: 14.0,
            items_per_receipt: 1.3,
            weekly: [0.75, 0.80, 0.90, 1.00, 1.35, 1.30, 0.45],
            public_holiday: 0.15,
            events: florist_events,
            open_hours: (8, 19),
            identified: 0.45,
            payments: [0.20, 0.70, 0.10, 0.0],
            categories: FLORIST,
        },
        BusinessType::Hardware => BusinessSpec {
            median_receipts: 24.0,
            items_per_receipt: 2.0,
            weekly: [0.90, 0.88, 0.90, 0.95, 1.10, 1.60, 0.55],
            public_holiday: 0.15,
            events: hardware_events,
            open_hours: (8, 19),
            identified: 0.40,
            payments: [0.15, 0.80, 0.05, 0.0],
            categories: HARDWARE,
        },
        BusinessType::Pharmacy => BusinessSpec {
            median_receipts: 32.0,
            items_per_receipt: 1.7,
            weekly: [1.12, 1.02, 1.00, 1.00, 1.05, 0.90, 0.40],
            public_holiday: 0.30,
            events: pharmacy_events,
            open_hours: (8, 20),
            identified: 0.50,
            payments: [0.30, 0.55, 0.15, 0.0],
            categories: PHARMACY,
        },
        BusinessType::Fashion => BusinessSpec {
            median_receipts: 18.0,
            items_per_receipt: 1.8,
            weekly: [1.05, 1.00, 0.95, 0.95, 0.90, 0.95, 1.20],
            public_holiday: 0.95,
            events: fashion_events,
            open_hours: (0, 24),
            identified: 1.0,
            payments: [0.0, 0.30, 0.20, 0.50],
            categories: FASHION,
        },
    }
}

pub(crate) const PAYMENT_NAMES: [&str; 4] = ["cash", "card", "mobile", "online"];
