use crate::profiles::{
    office_season, spec, BusinessSpec, OFFICE_PUBLIC_HOLIDAY, OFFICE_WEEKLY, PAYMENT_NAMES,
};
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
use std::path::{Path, PathBuf};

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
    /// In an office district: busy on working days, quiet at weekends, on public
    /// holidays and in summer, whatever its business type.
    #[serde(default)]
    pub office: bool,
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

/// Where a synthetic store's expected units (the generator's truth) are written.
pub const EXPECTED_UNITS_FILE: &str = "expected_units.csv";

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
    let mut spec = spec(p.business_type);
    if p.office {
        spec.weekly = OFFICE_WEEKLY;
        spec.public_holiday = OFFICE_PUBLIC_HOLIDAY;
    }
    let mut rng = ChaCha8Rng::seed_from_u64(p.seed);
    let start = p.first_day.num_days_from_ce() as i64;
    let end = p.last_day.num_days_from_ce() as i64;
    let promotions = plan_promotions(&spec, &mut rng, start, end);
    write_promotions(&dir.join(PROMOTIONS_FILE), &spec, &promotions)?;
    let mut promo_by_day = vec![vec![0.0; spec.categories.len()]; (end - start + 1) as usize];
    for pr in &promotions {
        for d in pr.start..=pr.end {
            promo_by_day[(d - start) as usize][pr.category] = pr.discount;
        }
    }
    write_expected_units(
        &dir.join(EXPECTED_UNITS_FILE),
        p,
        &spec,
        start,
        &promo_by_day,
    )?;
    let customers = draw_customers(p, &spec, &mut rng, start, end)?;
    // Anomaly set-up: a few refund abusers (card-testing days are drawn day by day).
    let abusers: Vec<usize> = if config.anomalies {
        (0..rng.random_range(1..=3))
            .map(|_| rng.random_range(0..customers.len()))
            .collect()
    } else {
        Vec::new()
    };
    let mut w = StoreWriter::create(dir, p, config, spec, rng, customers, abusers)?;
    let day_noise = Gamma::new(25.0, 1.0 / 25.0).map_err(|e| SynthError::Config(e.to_string()))?;
    let mut day_lines: Vec<Line> = Vec::new();
    for day in start..=end {
        let date = day_to_date(day);
        let years = (day - start) as f64 / 365.0;
        let mut m = day_multiplier(
            &w.spec,
            date,
            years,
            p.growth_per_year,
            day_noise.sample(&mut w.rng),
        );
        if p.office {
            m *= office_season(date.ordinal() as f64);
        }
        let discounts = &promo_by_day[(day - start) as usize];
        w.draw_lines(
            &mut day_lines,
            date,
            p.mean_daily_receipts * w.spec.items_per_receipt * m,
            discounts,
        );
        w.write_receipts(&day_lines, day, end, date)?;
        w.due_refunds(day, date)?;
        w.card_testing(date)?;
    }
    w.finish()?;
    write_meta(p, &dir.join(STORE_META_FILE))?;
    Ok((w.lines_written, w.anomalies))
}

/// Every category on promotion for 1-2 weeks every 1-3 months.
fn plan_promotions(
    spec: &BusinessSpec,
    rng: &mut ChaCha8Rng,
    start: i64,
    end: i64,
) -> Vec<Promotion> {
    let mut promotions = Vec::new();
    for ci in 0..spec.categories.len() {
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
    promotions
}

fn write_promotions(
    path: &Path,
    spec: &BusinessSpec,
    promotions: &[Promotion],
) -> Result<(), SynthError> {
    let mut w = BufWriter::new(File::create(path).map_err(io_err(path))?);
    writeln!(w, "category,start_date,end_date,discount").map_err(io_err(path))?;
    for pr in promotions {
        writeln!(
            w,
            "{},{},{},{}",
            spec.categories[pr.category].name,
            day_to_date(pr.start),
            day_to_date(pr.end),
            pr.discount
        )
        .map_err(io_err(path))?;
    }
    w.flush().map_err(io_err(path))
}

/// A pool of customers that grows with the store, each with a personal rate and a
/// lifetime after which they churn. Existing customers predate the export.
fn draw_customers(
    p: &StoreProfile,
    spec: &BusinessSpec,
    rng: &mut ChaCha8Rng,
    start: i64,
    end: i64,
) -> Result<Vec<Customer>, SynthError> {
    let n_days = end - start + 1;
    let pool = ((p.mean_daily_receipts * spec.identified * 25.0) as usize).max(20);
    let rate_dist = Gamma::<f64>::new(0.7, 1.0).map_err(|e| SynthError::Config(e.to_string()))?;
    Ok((0..pool)
        .map(|_| {
            let first = start - 365 + (rng.random::<f64>() * (n_days + 365) as f64) as i64;
            let life = (-rng.random::<f64>().max(1e-12).ln() * 420.0) as i64 + 30;
            Customer {
                first_day: first,
                last_day: first + life,
                rate: rate_dist.sample(rng).min(4.0) / 4.0,
            }
        })
        .collect())
}

/// The generator's expected units of every category on every day, before the day's
/// own noise: the best forecast any model could make, for measuring how far a
/// forecast is from it. The truth of a synthetic network; never a store's input.
fn write_expected_units(
    path: &Path,
    p: &StoreProfile,
    spec: &BusinessSpec,
    start: i64,
    promo_by_day: &[Vec<f64>],
) -> Result<(), SynthError> {
    let mut w = BufWriter::new(File::create(path).map_err(io_err(path))?);
    writeln!(w, "date,category,expected_units").map_err(io_err(path))?;
    for (offset, discounts) in promo_by_day.iter().enumerate() {
        let date = day_to_date(start + offset as i64);
        let years = offset as f64 / 365.0;
        let mut m = day_multiplier(spec, date, years, p.growth_per_year, 1.0);
        if p.office {
            m *= office_season(date.ordinal() as f64);
        }
        let lines = p.mean_daily_receipts * spec.items_per_receipt * m;
        let doy = date.ordinal() as f64;
        for (c, discount) in spec.categories.iter().zip(discounts) {
            let units = lines * c.line_rate(doy, *discount, PROMO_ELASTICITY) * c.mean_quantity();
            writeln!(w, "{date},{},{units:.4}", c.name).map_err(io_err(path))?;
        }
    }
    w.flush().map_err(io_err(path))
}

/// A day's demand multiplier: weekday, growth, holidays, shopping events, noise.
fn day_multiplier(
    spec: &BusinessSpec,
    date: NaiveDate,
    years: f64,
    growth: f64,
    noise: f64,
) -> f64 {
    let dow = date.weekday().num_days_from_monday() as usize;
    let mut m = spec.weekly[dow] * (1.0 + growth).powf(years) * noise;
    if is_public_holiday(date) {
        m *= spec.public_holiday;
    }
    if let Some(e) = shopping_event(date) {
        m *= (spec.events)(e);
    }
    m
}

fn write_meta(p: &StoreProfile, path: &Path) -> Result<(), SynthError> {
    let meta = serde_json::json!({
        "store_id": p.store_id,
        "business_type": p.business_type,
        "mean_daily_receipts": p.mean_daily_receipts,
        "first_day": p.first_day,
        "last_day": p.last_day,
    });
    std::fs::write(
        path,
        serde_json::to_string_pretty(&meta).unwrap_or_default(),
    )
    .map_err(io_err(path))
}

/// One line of the export as it is written.
struct Sale {
    customer: Option<usize>,
    category: usize,
    product: u32,
    quantity: u32,
    unit_price: f64,
    payment: usize,
    refund: bool,
}

/// A store's transactions and anomaly labels being written, day by day, with the
/// random stream every draw comes from (in a fixed order, so a seed is a store).
struct StoreWriter<'a> {
    p: &'a StoreProfile,
    config: &'a NetworkConfig,
    spec: BusinessSpec,
    rng: ChaCha8Rng,
    customers: Vec<Customer>,
    abusers: Vec<usize>,
    tx: BufWriter<File>,
    tx_path: PathBuf,
    labels: BufWriter<File>,
    labels_path: PathBuf,
    refunds: BTreeMap<i64, Vec<PendingRefund>>,
    next_tx: u64,
    lines_written: u64,
    anomalies: u64,
}

impl<'a> StoreWriter<'a> {
    fn create(
        dir: &Path,
        p: &'a StoreProfile,
        config: &'a NetworkConfig,
        spec: BusinessSpec,
        rng: ChaCha8Rng,
        customers: Vec<Customer>,
        abusers: Vec<usize>,
    ) -> Result<Self, SynthError> {
        let tx_path = dir.join(TRANSACTIONS_FILE);
        let mut tx =
            BufWriter::with_capacity(1 << 20, File::create(&tx_path).map_err(io_err(&tx_path))?);
        writeln!(tx, "store_id,transaction_id,timestamp,customer_id,product_id,category,quantity,unit_price,amount,payment_method,is_refund")
            .map_err(io_err(&tx_path))?;
        let labels_path = dir.join(ANOMALY_LABELS_FILE);
        let mut labels = BufWriter::new(File::create(&labels_path).map_err(io_err(&labels_path))?);
        writeln!(labels, "transaction_id,product_id,anomaly").map_err(io_err(&labels_path))?;
        Ok(StoreWriter {
            p,
            config,
            spec,
            rng,
            customers,
            abusers,
            tx,
            tx_path,
            labels,
            labels_path,
            refunds: BTreeMap::new(),
            next_tx: 1,
            lines_written: 0,
            anomalies: 0,
        })
    }

    fn new_tx_id(&mut self) -> String {
        let id = format!("{}-{:08}", self.p.store_id, self.next_tx);
        self.next_tx += 1;
        id
    }

    fn sale(
        &mut self,
        tx_id: &str,
        date: NaiveDate,
        seconds: i64,
        s: &Sale,
    ) -> Result<(), SynthError> {
        write_line(&mut self.tx, self.p, tx_id, date, seconds, &self.spec, s)
            .map_err(io_err(&self.tx_path))?;
        self.lines_written += 1;
        Ok(())
    }

    fn label(&mut self, tx_id: &str, product: &str, kind: &str) -> Result<(), SynthError> {
        self.anomalies += 1;
        writeln!(self.labels, "{tx_id},{product},{kind}").map_err(io_err(&self.labels_path))
    }

    /// The day's lines per category: seasonal, promoted demand; skewed popularity.
    fn draw_lines(
        &mut self,
        lines: &mut Vec<Line>,
        date: NaiveDate,
        lines_per_day: f64,
        discounts: &[f64],
    ) {
        lines.clear();
        let doy = date.ordinal() as f64;
        for (ci, c) in self.spec.categories.iter().enumerate() {
            let discount = discounts[ci];
            let lambda = lines_per_day * c.line_rate(doy, discount, PROMO_ELASTICITY);
            let n = if lambda > 0.0 {
                Poisson::new(lambda)
                    .map(|d| d.sample(&mut self.rng) as u64)
                    .unwrap_or(0)
            } else {
                0
            };
            for _ in 0..n {
                // Skewed popularity: a few best-sellers, a long tail.
                let product = ((c.products as f64) * self.rng.random::<f64>().powf(2.2)) as u32;
                let extra = if c.quantity > 1.0 {
                    Poisson::new(c.quantity - 1.0)
                        .map(|d| d.sample(&mut self.rng) as u32)
                        .unwrap_or(0)
                } else {
                    0
                };
                let regular = product_price(&self.spec, ci, product);
                let unit_price = ((regular * (1.0 - discount)) * 100.0).round() / 100.0;
                lines.push(Line {
                    category: ci,
                    product,
                    quantity: 1 + extra,
                    unit_price,
                });
            }
        }
    }

    /// Groups the day's lines into receipts and writes them.
    fn write_receipts(
        &mut self,
        lines: &[Line],
        day: i64,
        end: i64,
        date: NaiveDate,
    ) -> Result<(), SynthError> {
        let receipts = ((lines.len() as f64 / self.spec.items_per_receipt).round() as usize)
            .clamp(lines.len().min(1), lines.len().max(1));
        let mut receipt_of: Vec<usize> = (0..lines.len())
            .map(|i| {
                if i < receipts {
                    i
                } else {
                    self.rng.random_range(0..receipts)
                }
            })
            .collect();
        receipt_of.sort_unstable();
        let mut order: Vec<usize> = (0..lines.len()).collect();
        order.sort_by_key(|&i| receipt_of[i]);
        let mut i = 0;
        while i < order.len() {
            let r = receipt_of[order[i]];
            let mut j = i;
            while j < order.len() && receipt_of[order[j]] == r {
                j += 1;
            }
            let receipt: Vec<&Line> = order[i..j].iter().map(|&k| &lines[k]).collect();
            self.receipt(&receipt, day, end, date)?;
            i = j;
        }
        Ok(())
    }

    /// One receipt: a customer (or none), a time, a payment; rare price errors and
    /// duplicated receipts; returns scheduled for later days.
    fn receipt(
        &mut self,
        lines: &[&Line],
        day: i64,
        end: i64,
        date: NaiveDate,
    ) -> Result<(), SynthError> {
        let customer = pick_customer(&mut self.rng, &self.customers, day, self.spec.identified);
        let ts = draw_time(&mut self.rng, &self.spec);
        let payment = draw_payment(&mut self.rng, &self.spec);
        let tx_id = self.new_tx_id();
        let anomalies = self.config.anomalies;
        let duplicate = anomalies && self.rng.random::<f64>() < 0.0008;
        for line in lines {
            let mut price = line.unit_price;
            if anomalies && self.rng.random::<f64>() < 0.0004 {
                price = if self.rng.random::<bool>() {
                    price * 10.0
                } else {
                    (price * 0.1 * 100.0).round() / 100.0
                };
                let product = format!(
                    "{}-{}",
                    self.spec.categories[line.category].name, line.product
                );
                self.label(&tx_id, &product, "price_error")?;
            }
            let sale = Sale {
                customer,
                category: line.category,
                product: line.product,
                quantity: line.quantity,
                unit_price: price,
                payment,
                refund: false,
            };
            for _ in 0..if duplicate { 2 } else { 1 } {
                self.sale(&tx_id, date, ts, &sale)?;
            }
            self.maybe_return(customer, line, price, day, end);
        }
        if duplicate {
            self.label(&tx_id, "", "duplicated_receipt")?;
        }
        Ok(())
    }

    /// Ordinary returns, and systematic ones by refund abusers, within two weeks.
    fn maybe_return(
        &mut self,
        customer: Option<usize>,
        line: &Line,
        price: f64,
        day: i64,
        end: i64,
    ) {
        let abusive = customer.is_some_and(|c| self.abusers.contains(&c));
        let p_refund = if abusive { 0.35 } else { 0.008 };
        if self.rng.random::<f64>() < p_refund {
            let when = day + self.rng.random_range(1..=14);
            if when <= end {
                self.refunds.entry(when).or_default().push(PendingRefund {
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

    fn due_refunds(&mut self, day: i64, date: NaiveDate) -> Result<(), SynthError> {
        for rf in self.refunds.remove(&day).unwrap_or_default() {
            let tx_id = self.new_tx_id();
            let ts = draw_time(&mut self.rng, &self.spec);
            let payment = draw_payment(&mut self.rng, &self.spec);
            let sale = Sale {
                customer: rf.customer,
                category: rf.line.category,
                product: rf.line.product,
                quantity: rf.line.quantity,
                unit_price: rf.line.unit_price,
                payment,
                refund: true,
            };
            self.sale(&tx_id, date, ts, &sale)?;
            if rf.abusive {
                self.label(&tx_id, "", "refund_abuse")?;
            }
        }
        Ok(())
    }

    /// Card testing: on rare days, a burst of tiny anonymous card payments within minutes.
    fn card_testing(&mut self, date: NaiveDate) -> Result<(), SynthError> {
        if !(self.config.anomalies && self.rng.random::<f64>() < 1.0 / 240.0) {
            return Ok(());
        }
        let burst = self.rng.random_range(8..=25);
        let t0 = draw_time(&mut self.rng, &self.spec);
        let ci = self.rng.random_range(0..self.spec.categories.len());
        for b in 0..burst {
            let tx_id = self.new_tx_id();
            let price = (self.rng.random_range(0.5..2.0) * 100.0f64).round() / 100.0;
            let sale = Sale {
                customer: None,
                category: ci,
                product: 0,
                quantity: 1,
                unit_price: price,
                payment: 1,
                refund: false,
            };
            self.sale(&tx_id, date, (t0 + b * 17).min(86_399), &sale)?;
            self.label(&tx_id, "", "card_testing")?;
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<(), SynthError> {
        self.tx.flush().map_err(io_err(&self.tx_path))?;
        self.labels.flush().map_err(io_err(&self.labels_path))
    }
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

fn write_line(
    w: &mut impl Write,
    p: &StoreProfile,
    tx_id: &str,
    date: NaiveDate,
    seconds: i64,
    spec: &BusinessSpec,
    s: &Sale,
) -> std::io::Result<()> {
    let cat = spec.categories[s.category].name;
    let amount = s.quantity as f64 * s.unit_price * if s.refund { -1.0 } else { 1.0 };
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
    if let Some(c) = s.customer {
        write!(w, "{}-c{:06}", p.store_id, c)?;
    }
    writeln!(
        w,
        ",{cat}-{},{cat},{},{:.2},{amount:.2},{},{}",
        s.product,
        s.quantity,
        s.unit_price,
        PAYMENT_NAMES[s.payment],
        if s.refund { "true" } else { "false" }
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
    fn the_expected_units_add_up_to_what_was_sold() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = NetworkConfig {
            stores: 2,
            days: 300,
            young_fraction: 0.0,
            anomalies: false,
            ..Default::default()
        };
        let summary = generate_network(&cfg, dir.path()).unwrap();
        for s in &summary.stores {
            let store = dir.path().join(&s.store_id);
            let column_sum = |file: &str, col: usize, keep: &dyn Fn(&csv::StringRecord) -> bool| {
                let mut r = csv::Reader::from_path(store.join(file)).unwrap();
                r.records()
                    .map(Result::unwrap)
                    .filter(|rec| keep(rec))
                    .map(|rec| rec[col].parse::<f64>().unwrap())
                    .sum::<f64>()
            };
            let sold = column_sum("transactions.csv", 6, &|r| &r[10] == "false");
            let expected = column_sum(super::EXPECTED_UNITS_FILE, 2, &|_| true);
            let rows = std::fs::read_to_string(store.join(super::EXPECTED_UNITS_FILE))
                .unwrap()
                .lines()
                .count();
            let categories = super::spec(s.business_type).categories.len();
            assert_eq!(rows, 1 + 300 * categories);
            // The day noise has mean 1: over 300 days the two agree closely.
            assert!(
                (sold / expected - 1.0).abs() < 0.05,
                "{}: sold {sold}, expected {expected}",
                s.store_id
            );
        }
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
