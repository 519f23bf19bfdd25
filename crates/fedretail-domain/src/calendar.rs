//! Holiday calendar. Public holidays (shops shut or quiet) and shopping events
//! (Valentine's day, Mother's day, Black Friday, the days before Christmas) move
//! demand in opposite directions, so they are separate features.

use chrono::{Datelike, NaiveDate, Weekday};

/// Easter Sunday (Gregorian), by the anonymous Gregorian algorithm.
pub fn easter_sunday(year: i32) -> NaiveDate {
    let a = year % 19;
    let b = year / 100;
    let c = year % 100;
    let d = b / 4;
    let e = b % 4;
    let f = (b + 8) / 25;
    let g = (b - f + 1) / 3;
    let h = (19 * a + b - d - g + 15) % 30;
    let i = c / 4;
    let k = c % 4;
    let l = (32 + 2 * e + 2 * i - h - k) % 7;
    let m = (a + 11 * h + 22 * l) / 451;
    let month = (h + l - 7 * m + 114) / 31;
    let day = (h + l - 7 * m + 114) % 31 + 1;
    NaiveDate::from_ymd_opt(year, month as u32, day as u32).unwrap_or(NaiveDate::MIN)
}

fn nth_weekday(year: i32, month: u32, weekday: Weekday, n: u8) -> Option<NaiveDate> {
    NaiveDate::from_weekday_of_month_opt(year, month, weekday, n)
}

/// Days most shops are shut or quiet.
pub fn is_public_holiday(d: NaiveDate) -> bool {
    let (m, day) = (d.month(), d.day());
    if matches!((m, day), (1, 1) | (5, 1) | (12, 25) | (12, 26)) {
        return true;
    }
    let easter = easter_sunday(d.year());
    let offset = (d - easter).num_days();
    matches!(offset, -2 | 0 | 1)
}

/// Named shopping events that lift demand for some businesses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShoppingEvent {
    Valentines,
    MothersDay,
    BlackFriday,
    PreChristmas,
    NewYearsEve,
}

pub fn shopping_event(d: NaiveDate) -> Option<ShoppingEvent> {
    let (y, m, day) = (d.year(), d.month(), d.day());
    if m == 2 && (12..=14).contains(&day) {
        return Some(ShoppingEvent::Valentines);
    }
    if let Some(md) = nth_weekday(y, 5, Weekday::Sun, 2) {
        let off = (md - d).num_days();
        if (0..=2).contains(&off) {
            return Some(ShoppingEvent::MothersDay);
        }
    }
    if let Some(thanksgiving) = nth_weekday(y, 11, Weekday::Thu, 4) {
        let off = (d - thanksgiving).num_days();
        if (1..=4).contains(&off) {
            return Some(ShoppingEvent::BlackFriday);
        }
    }
    if m == 12 && (17..=24).contains(&day) {
        return Some(ShoppingEvent::PreChristmas);
    }
    if m == 12 && day == 31 {
        return Some(ShoppingEvent::NewYearsEve);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ymd(y: i32, m: u32, d: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, d).unwrap()
    }

    #[test]
    fn easter_dates() {
        assert_eq!(easter_sunday(2024), ymd(2024, 3, 31));
        assert_eq!(easter_sunday(2025), ymd(2025, 4, 20));
        assert_eq!(easter_sunday(2026), ymd(2026, 4, 5));
    }

    #[test]
    fn holidays_and_events() {
        assert!(is_public_holiday(ymd(2025, 4, 18))); // Good Friday
        assert!(is_public_holiday(ymd(2025, 4, 21))); // Easter Monday
        assert!(!is_public_holiday(ymd(2025, 4, 22)));
        assert_eq!(
            shopping_event(ymd(2025, 11, 28)),
            Some(ShoppingEvent::BlackFriday)
        );
        assert_eq!(
            shopping_event(ymd(2025, 5, 11)),
            Some(ShoppingEvent::MothersDay)
        );
        assert_eq!(shopping_event(ymd(2025, 6, 11)), None);
    }
}
