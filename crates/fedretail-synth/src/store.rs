use crate::profiles::{spec, BusinessSpec, PAYMENT_NAMES};
use crate::{NetworkConfig, SynthError};
use chrono::{Datelike, NaiveDate};
use fedretail_domain::calendar::{is_public_holiday, shopping_event};
use fedretail_domain::schema::{
    ANOMALY_LABELS_FILE, PROMOTIONS_FILE, STORE_META_FILE, TRANSACTIONS_FILE,
};
use fedretail_domain::BusinessType;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Gamma, Poisson};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

/// A store as its onboarding form describes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoreProfile {
    pub store_id: String,
    pub business_type: BusinessType,
    pub mean_daily_receipts: f64,
    pub first_day: NaiveDate,
    pub last_day: NaiveDate,
    pub growth_per_year: f64,
    pub seed: u64,
}

struct Customer {
    first_day: i64,
    last_day: i64,
    rate: f64,
}

struct Promotion {
    category: usize,
    start: i64,
    end: i64,
    discount: f64,
}

struct Line {
    category: usize,
    product: u32,
    quantity: u32,
    unit_price: f64,
}

struct PendingRefund {
    customer: Option<usize>,
    line: Line,
    abusive: bool,
}

/// Price elasticity of promoted demand: 20 % off lifts units by 1.8x.
const PROMO_ELASTICITY: f64 = 2.6;

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> SynthError + '_ {
    move |source| SynthError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn product_price(spec: &BusinessSpec, category: usize, product: u32) -> f64 {
    let c = &spec.categories[category];
    // Deterministic per product so the same SKU keeps its price.
    let h = (product as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ (category as u64).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    let frac = (h >> 11) as f64 / (1u64 << 53) as f64;
    let price = c.price.0 + (c.price.1 - c.price.0) * frac * frac;
    (price * 100.0).round() / 100.0 - 0.01
}

/// Writes one store's export; returns (lines, anomalies).
pub(crate) fn write_store(
    p: &StoreProfile,
    config: &NetworkConfig,
    dir: &Path,
) -> Result<(u64, u64), SynthError> {
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let spec = spec(p.business_type);
    let mut rng = ChaCha8Rng::seed_from_u64(p.seed);
    let start = p.first_day.num_days_from_ce() as i64;
    let end = p.last_day.num_days_from_ce() as i64;
    let n_days = end - start + 1;

    // Promotion calendar: every category on promotion for 1-2 weeks every 1-3 months.
    let mut promotions = Vec::new();
    for (ci, _) in spec.categories.iter().enumerate() {
        let mut day = start + rng.random_range(0..60);
        while day <= end {
            let len = rng.random_range(7..=14);
            let discount = [0.1, 0.15, 0.2, 0.25, 0.3][rng.random_range(0..5)];
            promotions.push(Promotion {
                category: ci,
                start: day,
                end: (day + len - 1).min(end),
                discount,
            });
            day += len + rng.random_range(30..90);
        }
    }
    let promo_path = dir.join(PROMOTIONS_FILE);
    {
        let mut w = BufWriter::new(File::create(&promo_path).map_err(io_err(&promo_path))?);
        writeln!(w, "category,start_date,end_date,discount").map_err(io_err(&promo_path))?;
        for pr in &promotions {
            writeln!(
                w,
                "{},{},{},{}",
                spec.categories[pr.category].name,
                day_to_date(pr.start),
                day_to_date(pr.end),
                pr.discount
            )
            .map_err(io_err(&promo_path))?;
        }
        w.flush().map_err(io_err(&promo_path))?;
    }
    let mut promo_by_day: Vec<Vec<f64>> = vec![vec![0.0; spec.categories.len()]; n_days as usize];
    for pr in &promotions {
        for d in pr.start..=pr.end {
            promo_by_day[(d - start) as usize][pr.category] = pr.discount;
        }
    }

    // Customers: a pool that grows with the store, each with a personal rate and a
    // lifetime after which they churn. Existing customers predate the export.
    let pool = ((p.mean_daily_receipts * spec.identified * 25.0) as usize).max(20);
    let rate_dist = Gamma::<f64>::new(0.7, 1.0).map_err(|e| SynthError::Config(e.to_string()))?;
    let customers: Vec<Customer> = (0..pool)
        .map(|_| {
            let first = start - 365 + (rng.random::<f64>() * (n_days + 365) as f64) as i64;
            let life = (-rng.random::<f64>().max(1e-12).ln() * 420.0) as i64 + 30;
            Customer {
                first_day: first,
                last_day: first + life,
                rate: rate_dist.sample(&mut rng).min(4.0) / 4.0,
            }
        })
        .collect();

    // Anomaly set-up: a few refund abusers and rare card-testing days.
    let abusers: Vec<usize> = if config.anomalies {
        (0..rng.random_range(1..=3))
            .map(|_| rng.random_range(0..pool))
            .collect()
    } else {
        Vec::new()
    };

    let tx_path = dir.join(TRANSACTIONS_FILE);
    let mut tx =
        BufWriter::with_capacity(1 << 20, File::create(&tx_path).map_err(io_err(&tx_path))?);
    writeln!(tx, "store_id,transaction_id,timestamp,customer_id,product_id,category,quantity,unit_price,amount,payment_method,is_refund")
        .map_err(io_err(&tx_path))?;
    let labels_path = dir.join(ANOMALY_LABELS_FILE);
    let mut labels = BufWriter::new(File::create(&labels_path).map_err(io_err(&labels_path))?);
    writeln!(labels, "transaction_id,product_id,anomaly").map_err(io_err(&labels_path))?;

    let day_noise = Gamma::new(25.0, 1.0 / 25.0).map_err(|e| SynthError::Config(e.to_string()))?;
    let mut refunds: BTreeMap<i64, Vec<PendingRefund>> = BTreeMap::new();
    let mut next_tx: u64 = 1;
    let mut lines_written: u64 = 0;
    let mut anomalies: u64 = 0;
    let mut day_lines: Vec<Line> = Vec::new();
    let n_cat = spec.categories.len();

    for day in start..=end {
        let date = day_to_date(day);
        let dow = date.weekday().num_days_from_monday() as usize;
        let doy = date.ordinal() as f64;
        let years = (day - start) as f64 / 365.0;
        let mut m =
            spec.weekly[dow] * (1.0 + p.growth_per_year).powf(years) * day_noise.sample(&mut rng);
        if is_public_holiday(date) {
            m *= spec.public_holiday;
        }
        if let Some(e) = shopping_event(date) {
            m *= (spec.events)(e);
        }
        let lines_per_day = p.mean_daily_receipts * spec.items_per_receipt * m;

        day_lines.clear();
        for (ci, c) in spec.categories.iter().enumerate() {
            let season =
                (c.season * (2.0 * std::f64::consts::PI * (doy - c.peak_day) / 365.25).cos()).exp();
            let discount = promo_by_day[(day - start) as usize][ci];
            let promo = (1.0 - discount).powf(-PROMO_ELASTICITY);
            let lambda = lines_per_day * c.share * season * promo;
            let n = if lambda > 0.0 {
                Poisson::new(lambda)
                    .map(|d| d.sample(&mut rng) as u64)
                    .unwrap_or(0)
            } else {
                0
            };
            for _ in 0..n {
                // Skewed popularity: a few best-sellers, a long tail.
                let product = ((c.products as f64) * rng.random::<f64>().powf(2.2)) as u32;
                let extra = if c.quantity > 1.0 {
                    Poisson::new(c.quantity - 1.0)
                        .map(|d| d.sample(&mut rng) as u32)
                        .unwrap_or(0)
                } else {
                    0
                };
                let regular = product_price(&spec, ci, product);
                let unit_price = ((regular * (1.0 - discount)) * 100.0).round() / 100.0;
                day_lines.push(Line {
                    category: ci,
                    product,
                    quantity: 1 + extra,
                    unit_price,
                });
            }
        }
        // Group the day's lines into receipts.
        let receipts = ((day_lines.len() as f64 / spec.items_per_receipt).round() as usize)
            .clamp(day_lines.len().min(1), day_lines.len().max(1));
        let mut receipt_of: Vec<usize> = (0..day_lines.len())
            .map(|i| {
                if i < receipts {
                    i
                } else {
                    rng.random_range(0..receipts)
                }
            })
            .collect();
        receipt_of.sort_unstable();
        let mut order: Vec<usize> = (0..day_lines.len()).collect();
        order.sort_by_key(|&i| receipt_of[i]);

        let mut i = 0;
        while i < order.len() {
            let r = receipt_of[order[i]];
            let mut j = i;
            while j < order.len() && receipt_of[order[j]] == r {
                j += 1;
            }
            let customer = pick_customer(&mut rng, &customers, day, spec.identified);
            let ts = draw_time(&mut rng, &spec);
            let payment = draw_payment(&mut rng, &spec);
            let tx_id = format!("{}-{:08}", p.store_id, next_tx);
            next_tx += 1;
            let duplicate = config.anomalies && rng.random::<f64>() < 0.0008;
            for k in i..j {
                let line = &day_lines[order[k]];
                let mut price = line.unit_price;
                if config.anomalies && rng.random::<f64>() < 0.0004 {
                    price = if rng.random::<bool>() {
                        price * 10.0
                    } else {
                        (price * 0.1 * 100.0).round() / 100.0
                    };
                    anomalies += 1;
                    writeln!(
                        labels,
                        "{},{}-{},price_error",
                        tx_id, spec.categories[line.category].name, line.product
                    )
                    .map_err(io_err(&labels_path))?;
                }
                let copies = if duplicate { 2 } else { 1 };
                for _ in 0..copies {
                    write_line(
                        &mut tx,
                        p,
                        &tx_id,
                        date,
                        ts,
                        customer,
                        &spec,
                        line.category,
                        line.product,
                        line.quantity,
                        price,
                        payment,
                        false,
                    )
                    .map_err(io_err(&tx_path))?;
                    lines_written += 1;
                }
                // Ordinary returns, and systematic ones by refund abusers.
                let abusive = customer.is_some_and(|c| abusers.contains(&c));
                let p_refund = if abusive { 0.35 } else { 0.008 };
                if rng.random::<f64>() < p_refund {
                    let when = day + rng.random_range(1..=14);
                    if when <= end {
                        refunds.entry(when).or_default().push(PendingRefund {
                            customer,
                            line: Line {
                                category: line.category,
                                product: line.product,
                                quantity: line.quantity,
                                unit_price: price,
                            },
                            abusive,
                        });
                    }
                }
            }
            if duplicate {
                anomalies += 1;
                writeln!(labels, "{},,duplicated_receipt", tx_id).map_err(io_err(&labels_path))?;
            }
            i = j;
        }
        if let Some(due) = refunds.remove(&day) {
            for rf in due {
                let tx_id = format!("{}-{:08}", p.store_id, next_tx);
                next_tx += 1;
                let ts = draw_time(&mut rng, &spec);
                let payment = draw_payment(&mut rng, &spec);
                write_line(
                    &mut tx,
                    p,
                    &tx_id,
                    date,
                    ts,
                    rf.customer,
                    &spec,
                    rf.line.category,
                    rf.line.product,
                    rf.line.quantity,
                    rf.line.unit_price,
                    payment,
                    true,
                )
                .map_err(io_err(&tx_path))?;
                lines_written += 1;
                if rf.abusive {
                    anomalies += 1;
                    writeln!(labels, "{},,refund_abuse", tx_id).map_err(io_err(&labels_path))?;
                }
            }
        }
        // Card testing: a burst of tiny anonymous card payments within minutes.
        if config.anomalies && rng.random::<f64>() < 1.0 / 240.0 {
            let burst = rng.random_range(8..=25);
            let t0 = draw_time(&mut rng, &spec);
            let ci = rng.random_range(0..n_cat);
            for b in 0..burst {
                let tx_id = format!("{}-{:08}", p.store_id, next_tx);
                next_tx += 1;
                let price = (rng.random_range(0.5..2.0) * 100.0f64).round() / 100.0;
                write_line(
                    &mut tx,
                    p,
                    &tx_id,
                    date,
                    (t0 + b * 17).min(86_399),
                    None,
                    &spec,
                    ci,
                    0,
                    1,
                    price,
                    1,
                    false,
                )
                .map_err(io_err(&tx_path))?;
                lines_written += 1;
                anomalies += 1;
                writeln!(labels, "{},,card_testing", tx_id).map_err(io_err(&labels_path))?;
            }
        }
    }
    tx.flush().map_err(io_err(&tx_path))?;
    labels.flush().map_err(io_err(&labels_path))?;

    let meta_path = dir.join(STORE_META_FILE);
    let meta = serde_json::json!({
        "store_id": p.store_id,
        "business_type": p.business_type,
        "mean_daily_receipts": p.mean_daily_receipts,
        "first_day": p.first_day,
        "last_day": p.last_day,
    });
    std::fs::write(
        &meta_path,
        serde_json::to_string_pretty(&meta).unwrap_or_default(),
    )
    .map_err(io_err(&meta_path))?;
    Ok((lines_written, anomalies))
}

fn day_to_date(day: i64) -> NaiveDate {
    NaiveDate::from_num_days_from_ce_opt(day as i32).unwrap_or(NaiveDate::MIN)
}

fn pick_customer(
    rng: &mut ChaCha8Rng,
    customers: &[Customer],
    day: i64,
    identified: f64,
) -> Option<usize> {
    if rng.random::<f64>() >= identified {
        return None;
    }
    // Rejection sampling: active customers, in proportion to their personal rate.
    for _ in 0..64 {
        let i = rng.random_range(0..customers.len());
        let c = &customers[i];
        if c.first_day <= day && day <= c.last_day && rng.random::<f64>() < c.rate {
            return Some(i);
        }
    }
    None
}

/// Seconds after midnight; a bell around the busy hours of the business.
fn draw_time(rng: &mut ChaCha8Rng, spec: &BusinessSpec) -> i64 {
    let (open, close) = spec.open_hours;
    let span = (close - open) as f64 * 3600.0;
    let u = (rng.random::<f64>() + rng.random::<f64>() + rng.random::<f64>()) / 3.0;
    (open as f64 * 3600.0 + u * span).min(86_399.0) as i64
}

fn draw_payment(rng: &mut ChaCha8Rng, spec: &BusinessSpec) -> usize {
    let u: f64 = rng.random();
    let mut acc = 0.0;
    for (i, w) in spec.payments.iter().enumerate() {
        acc += w;
        if u < acc {
            return i;
        }
    }
    1
}

#[allow(clippy::too_many_arguments)]
fn write_line(
    w: &mut impl Write,
    p: &StoreProfile,
    tx_id: &str,
    date: NaiveDate,
    seconds: i64,
    customer: Option<usize>,
    spec: &BusinessSpec,
    category: usize,
    product: u32,
    quantity: u32,
    unit_price: f64,
    payment: usize,
    refund: bool,
) -> std::io::Result<()> {
    let cat = spec.categories[category].name;
    let amount = quantity as f64 * unit_price * if refund { -1.0 } else { 1.0 };
    write!(
        w,
        "{},{},{} {:02}:{:02}:{:02},",
        p.store_id,
        tx_id,
        date,
        seconds / 3600,
        (seconds / 60) % 60,
        seconds % 60
    )?;
    if let Some(c) = customer {
        write!(w, "{}-c{:06}", p.store_id, c)?;
    }
    writeln!(
        w,
        ",{cat}-{product},{cat},{quantity},{unit_price:.2},{amount:.2},{},{}",
        PAYMENT_NAMES[payment],
        if refund { "true" } else { "false" }
    )
}

#[cfg(test)]
mod tests {
    use crate::{generate_network, NetworkConfig};

    #[test]
    fn deterministic_for_a_seed() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let cfg = NetworkConfig {
            stores: 3,
            days: 150,
            ..Default::default()
        };
        let sa = generate_network(&cfg, a.path()).unwrap();
        let sb = generate_network(&cfg, b.path()).unwrap();
        assert_eq!(sa.lines, sb.lines);
        for s in &sa.stores {
            let fa = std::fs::read(a.path().join(&s.store_id).join("transactions.csv")).unwrap();
            let fb = std::fs::read(b.path().join(&s.store_id).join("transactions.csv")).unwrap();
            assert_eq!(fa, fb);
        }
        assert!(sa.lines > 1000);
    }

    #[test]
    fn different_seeds_differ_and_sizes_have_a_long_tail() {
        let cfg = NetworkConfig {
            stores: 200,
            ..Default::default()
        };
        let plan = crate::plan_network(&cfg);
        let mut sizes: Vec<f64> = plan.iter().map(|s| s.mean_daily_receipts).collect();
        sizes.sort_by(f64::total_cmp);
        let median = sizes[100];
        let p95 = sizes[190];
        assert!(p95 > 3.0 * median, "p95 {p95} vs median {median}");
        let young = plan
            .iter()
            .filter(|s| s.first_day > cfg.end_date - chrono::Duration::days(400))
            .count();
        assert!(young > 10 && young < 80, "{young} young stores");
        let other = crate::plan_network(&NetworkConfig { seed: 1, ..cfg });
        assert_ne!(plan, other);
    }

    #[test]
    fn refuses_bad_config() {
        let cfg = NetworkConfig {
            stores: 0,
            ..Default::default()
        };
        let e = generate_network(&cfg, std::path::Path::new("/nonexistent")).unwrap_err();
        assert_eq!(e.to_string(), "stores must be >= 1, got 0");
    }
}
