//! The canonical point-of-sale transaction schema. A store whose export names columns
//! differently maps them onto these names with a SQL view in its agent config.

/// Logical type of a canonical column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnType {
    Text,
    Timestamp,
    Number,
    Boolean,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Column {
    pub name: &'static str,
    pub ty: ColumnType,
    pub required: bool,
    pub doc: &'static str,
}

const fn col(name: &'static str, ty: ColumnType, required: bool, doc: &'static str) -> Column {
    Column {
        name,
        ty,
        required,
        doc,
    }
}

/// One row per receipt line.
pub const TRANSACTION_COLUMNS: &[Column] = &[
    col("store_id", ColumnType::Text, false, "store identifier"),
    col(
        "transaction_id",
        ColumnType::Text,
        true,
        "receipt / order id; lines of one receipt share it",
    ),
    col(
        "timestamp",
        ColumnType::Timestamp,
        true,
        "local time of the sale, ISO 8601",
    ),
    col(
        "customer_id",
        ColumnType::Text,
        false,
        "loyalty or account id; empty when anonymous",
    ),
    col("product_id", ColumnType::Text, true, "SKU"),
    col("category", ColumnType::Text, true, "product category"),
    col(
        "quantity",
        ColumnType::Number,
        true,
        "units on the line (positive, also for refunds)",
    ),
    col(
        "unit_price",
        ColumnType::Number,
        true,
        "price per unit actually charged",
    ),
    col(
        "amount",
        ColumnType::Number,
        false,
        "line total; negative for refunds",
    ),
    col(
        "payment_method",
        ColumnType::Text,
        false,
        "cash, card, mobile, online ...",
    ),
    col(
        "is_refund",
        ColumnType::Boolean,
        false,
        "true when the line returns goods",
    ),
];

/// A store's promotion calendar: which categories were discounted when.
pub const PROMOTION_COLUMNS: &[Column] = &[
    col("category", ColumnType::Text, true, "category on promotion"),
    col(
        "start_date",
        ColumnType::Timestamp,
        true,
        "first day (YYYY-MM-DD)",
    ),
    col(
        "end_date",
        ColumnType::Timestamp,
        true,
        "last day (YYYY-MM-DD)",
    ),
    col(
        "discount",
        ColumnType::Number,
        true,
        "fraction off the regular price, in [0, 1)",
    ),
];

/// File names of a store's export directory.
pub const TRANSACTIONS_FILE: &str = "transactions.csv";
pub const PROMOTIONS_FILE: &str = "promotions.csv";
/// Ground truth of injected anomalies in synthetic stores (never read by training).
pub const ANOMALY_LABELS_FILE: &str = "anomaly_labels.csv";
pub const STORE_META_FILE: &str = "store.json";
