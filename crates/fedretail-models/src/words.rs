//! Plain words for what a cluster is and why a point was flagged, for shop owners
//! reading their results in a spreadsheet. Inputs are standardized (per store)
//! feature values, so "1 sd" means one standard deviation of the store's own data.

use std::collections::BTreeMap;

fn level(means: &BTreeMap<String, f64>, name: &str) -> f64 {
    means.get(name).copied().unwrap_or(0.0)
}

/// A customer-anomaly cluster from its standardized centroid.
pub fn describe_customer_anomaly(m: &BTreeMap<String, f64>) -> String {
    let mut parts = Vec::new();
    if level(m, "refund_rate") > 1.0 {
        parts.push("refunds far more than usual");
    }
    if level(m, "avg_order_value") > 1.0 {
        parts.push("very large baskets");
    }
    if level(m, "total_orders") > 1.0 {
        parts.push("very frequent");
    }
    if level(m, "days_since_last_purchase") > 1.0 {
        parts.push("gone quiet");
    }
    if level(m, "refund") > 1.0 {
        parts.push("refunds");
    }
    if level(m, "log_amount") > 1.0 {
        parts.push("large receipts");
    }
    if level(m, "duplicate_share") > 1.0 {
        parts.push("repeated lines");
    }
    if level(m, "price_deviation") > 1.0 {
        parts.push("prices off the usual");
    }
    if parts.is_empty() {
        "ordinary".into()
    } else {
        parts.join(", ")
    }
}

/// Plain words for an RFM segment from its standardized centroid.
pub fn describe_segment(m: &BTreeMap<String, f64>) -> String {
    let recency = level(m, "recency_days");
    let orders = level(m, "log_orders");
    let value = level(m, "log_avg_order_value");
    let tenure = level(m, "tenure_days");
    let name = if recency > 0.8 && value > 0.3 {
        "lapsed high-value"
    } else if recency > 0.8 {
        "lapsed"
    } else if orders > 0.8 && value > 0.3 {
        "loyal big-basket regulars"
    } else if orders > 0.8 {
        "weekly stock-up regulars"
    } else if tenure < -0.8 && orders < 0.0 {
        "new customers"
    } else if value > 0.8 {
        "occasional big spenders"
    } else if value < -0.8 {
        "small top-up shoppers"
    } else {
        "steady occasional shoppers"
    };
    let tilt = |v: f64, hi: &str, lo: &str| -> Option<String> {
        if v > 0.5 {
            Some(hi.to_string())
        } else if v < -0.5 {
            Some(lo.to_string())
        } else {
            None
        }
    };
    let detail: Vec<String> = [
        tilt(-recency, "bought recently", "not seen for a while"),
        tilt(orders, "many orders", "few orders"),
        tilt(value, "large baskets", "small baskets"),
        tilt(tenure, "long-standing", "recently joined"),
    ]
    .into_iter()
    .flatten()
    .collect();
    if detail.is_empty() {
        name.to_string()
    } else {
        format!("{name} ({})", detail.join(", "))
    }
}

/// What a feature is called in a sentence.
fn spoken(feature: &str) -> &str {
    match feature {
        "avg_order_value" => "average order value",
        "total_orders" => "number of orders",
        "customer_lifetime" => "time as a customer",
        "days_since_last_purchase" => "days since the last purchase",
        "refund_rate" => "share of refunds",
        "log_amount" => "amount",
        "hour_sin" | "hour_cos" => "time of day",
        "refund" => "refund",
        "log_lines" => "lines on the receipt",
        "duplicate_share" => "repeated identical lines",
        "price_deviation" => "price off the product's usual",
        "anonymous" => "no customer id",
        "burst" => "receipts in quick succession",
        other => other,
    }
}

/// Why a point was flagged: the (at most two) features furthest from its cluster's
/// centroid, and the cluster's rarity when it is small.
pub fn flag_reason(
    features: &[&str],
    point: &[f64],
    centroid: &[f64],
    cluster_share: f64,
    distance: f64,
    points: &str,
) -> String {
    let mut gaps: Vec<(usize, f64)> = point
        .iter()
        .zip(centroid)
        .map(|(x, c)| x - c)
        .enumerate()
        .collect();
    gaps.sort_by(|a, b| b.1.abs().total_cmp(&a.1.abs()));
    let mut parts: Vec<String> = gaps
        .iter()
        .take(2)
        .filter(|(_, g)| g.abs() >= 0.5)
        .map(|&(j, g)| {
            let side = if g > 0.0 { "above" } else { "below" };
            let name = features.get(j).map_or("feature", |f| spoken(f));
            format!("{name} {:.1} sd {side} its cluster", g.abs())
        })
        .collect();
    if cluster_share < 0.05 {
        parts.push(format!(
            "in a rare cluster ({:.1} % of the store's {points})",
            cluster_share * 100.0
        ));
    }
    if parts.is_empty() {
        format!("{distance:.1} sd from its cluster's centre")
    } else {
        parts.join("; ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refund_outlier_is_explained_by_its_refunds() {
        let reason = flag_reason(
            &["avg_order_value", "refund_rate"],
            &[0.2, 4.0],
            &[0.0, 0.1],
            0.4,
            3.9,
            "customers",
        );
        assert_eq!(reason, "share of refunds 3.9 sd above its cluster");
        let rare = flag_reason(&["a"], &[0.0], &[0.0], 0.01, 0.0, "receipts");
        assert!(
            rare.contains("rare cluster (1.0 % of the store's receipts)"),
            "{rare}"
        );
    }

    #[test]
    fn segments_get_names() {
        let m: BTreeMap<String, f64> = [("recency_days".to_string(), 1.5)].into();
        assert_eq!(describe_segment(&m), "lapsed (not seen for a while)");
    }
}
