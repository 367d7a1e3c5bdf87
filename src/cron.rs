//! Cron expressions in UTC: five fields (minute, hour, day of month, month, day of week) or
//! six with seconds first; each field a list of values, ranges and steps (`*`, `5`, `1-5`,
//! `*/15`, `10-40/10`, `MON-FRI`, `JAN,JUL`); names of months and days in any case; day of
//! week 0 or 7 for Sunday. As in Vixie cron, when both day fields are restricted an
//! occurrence matches either; when one is `*`, the other decides.
//!
//! Written here rather than taken from a crate: afterlog's schedules are UTC only, so the
//! whole job is a parser and a calendar walk over civil dates (no time zones, no daylight
//! saving), while the well-kept crates bring a date library and proc-macro builders
//! (croner: chrono, derive_builder, strum) or a seven-field dialect (cron: seconds and years,
//! chrono, nom). The parser is fuzzed (`fuzz/fuzz_targets/cron.rs`) against its own
//! contract: no panic, and every occurrence found matches and is after the time asked.

/// A parsed cron expression.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cron {
    seconds: u64,
    minutes: u64,
    hours: u64,
    days: u64,
    months: u64,
    weekdays: u64,
    /// The day-of-month (day-of-week) field starts with `*` or `?`: it restricts nothing
    /// when the other one is restricted.
    dom_star: bool,
    dow_star: bool,
    text: Box<str>,
}

const MONTHS: [&str; 12] = [
    "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
];
const WEEKDAYS: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];

/// Years searched ahead for an occurrence before an expression is called one that never
/// fires (`0 0 30 2 *`: February 30th).
pub const SEARCH_YEARS: i64 = 30;

/// Latest instant searched: the end of year 9999, Unix epoch seconds.
const MAX_SECONDS: i64 = 253_402_300_799;

struct Field {
    bits: u64,
    star: bool,
}

fn parse_value(text: &str, min: u32, max: u32, names: &[&str], what: &str) -> Result<u32, String> {
    if let Some(i) = names.iter().position(|n| n.eq_ignore_ascii_case(text)) {
        return Ok(min + i as u32);
    }
    let v: u32 = text
        .parse()
        .map_err(|_| format!("{what}: {text:?} is not a number or a name"))?;
    if v < min || v > max {
        return Err(format!("{what}: {v} outside {min}-{max}"));
    }
    Ok(v)
}

fn parse_field(
    text: &str,
    min: u32,
    max: u32,
    names: &[&str],
    what: &str,
) -> Result<Field, String> {
    let star = text.starts_with('*') || text.starts_with('?');
    let mut bits = 0u64;
    for item in text.split(',') {
        let (range, step) = match item.split_once('/') {
            Some((range, step)) => {
                let step: u32 = step
                    .parse()
                    .map_err(|_| format!("{what}: step {step:?} is not a number"))?;
                if step == 0 {
                    return Err(format!("{what}: a step of 0"));
                }
                (range, Some(step))
            }
            None => (item, None),
        };
        let (lo, hi) = if range == "*" || range == "?" {
            (min, max)
        } else if let Some((a, b)) = range.split_once('-') {
            let (a, b) = (
                parse_value(a, min, max, names, what)?,
                parse_value(b, min, max, names, what)?,
            );
            if a > b {
                return Err(format!("{what}: range {range:?} runs backwards"));
            }
            (a, b)
        } else if range.is_empty() {
            return Err(format!("{what}: an empty item in {text:?}"));
        } else {
            let v = parse_value(range, min, max, names, what)?;
            (v, if step.is_some() { max } else { v })
        };
        let mut v = lo;
        while v <= hi {
            bits |= 1 << v;
            v += step.unwrap_or(1);
        }
    }
    Ok(Field { bits, star })
}

impl Cron {
    /// Parses `text`: five fields, or six with seconds first, separated by whitespace.
    pub fn parse(text: &str) -> Result<Cron, String> {
        let fields: Vec<&str> = text.split_whitespace().collect();
        let (seconds, rest) = match fields.len() {
            5 => (None, &fields[..]),
            6 => (Some(fields[0]), &fields[1..]),
            n => {
                return Err(format!(
                    "a cron expression has 5 fields (or 6 with seconds first), not {n}"
                ));
            }
        };
        let seconds = match seconds {
            Some(s) => parse_field(s, 0, 59, &[], "seconds")?.bits,
            None => 1,
        };
        let minutes = parse_field(rest[0], 0, 59, &[], "minute")?.bits;
        let hours = parse_field(rest[1], 0, 23, &[], "hour")?.bits;
        let days = parse_field(rest[2], 1, 31, &[], "day of month")?;
        let months = parse_field(rest[3], 1, 12, &MONTHS, "month")?.bits;
        let weekdays = parse_field(rest[4], 0, 7, &WEEKDAYS, "day of week")?;
        // 7 is Sunday too.
        let weekday_bits = (weekdays.bits | (weekdays.bits >> 7)) & 0x7F;
        Ok(Cron {
            seconds,
            minutes,
            hours,
            days: days.bits,
            months,
            weekdays: weekday_bits,
            dom_star: days.star,
            dow_star: weekdays.star,
            text: fields.join(" ").into(),
        })
    }

    /// The expression, its fields separated by one space.
    pub fn text(&self) -> &str {
        &self.text
    }

    fn day_matches(&self, day: u32, weekday: u32) -> bool {
        let dom = self.days & (1 << day) != 0;
        let dow = self.weekdays & (1 << weekday) != 0;
        match (self.dom_star, self.dow_star) {
            (true, true) => true,
            (true, false) => dow,
            (false, true) => dom,
            (false, false) => dom || dow,
        }
    }

    /// Whether the whole second `ms` lies on (milliseconds are ignored) is an occurrence.
    pub fn matches(&self, ms: i64) -> bool {
        let t = ms.div_euclid(1000);
        let (days, sod) = (t.div_euclid(86_400), t.rem_euclid(86_400));
        let (_, month, day) = civil_from_days(days);
        let has = |bits: u64, v: i64| bits & (1 << v) != 0;
        has(self.months, i64::from(month))
            && self.day_matches(day, weekday(days))
            && has(self.hours, sod / 3600)
            && has(self.minutes, sod % 3600 / 60)
            && has(self.seconds, sod % 60)
    }

    /// The first occurrence strictly after `after_ms`, Unix epoch ms (a whole second), or
    /// `None` if there is none in the [`SEARCH_YEARS`] that follow (or before year 10000).
    pub fn next_after(&self, after_ms: i64) -> Option<i64> {
        let mut t = after_ms.div_euclid(1000).checked_add(1)?;
        let (start_year, _, _) = civil_from_days(t.div_euclid(86_400));
        loop {
            if t > MAX_SECONDS {
                return None;
            }
            let (days, sod) = (t.div_euclid(86_400), t.rem_euclid(86_400));
            let (year, month, day) = civil_from_days(days);
            if year > start_year + SEARCH_YEARS {
                return None;
            }
            if self.months & (1 << month) == 0 {
                let (y, m) = if month == 12 {
                    (year + 1, 1)
                } else {
                    (year, month + 1)
                };
                t = days_from_civil(y, m, 1) * 86_400;
                continue;
            }
            if !self.day_matches(day, weekday(days)) {
                t = (days + 1) * 86_400;
                continue;
            }
            let (hour, minute, second) = (sod / 3600, sod % 3600 / 60, sod % 60);
            if self.hours & (1 << hour) == 0 {
                t = days * 86_400 + (hour + 1) * 3600;
                continue;
            }
            if self.minutes & (1 << minute) == 0 {
                t = days * 86_400 + hour * 3600 + (minute + 1) * 60;
                continue;
            }
            if self.seconds & (1 << second) == 0 {
                t += 1;
                continue;
            }
            return t.checked_mul(1000);
        }
    }
}

/// Day of the week of a day since 1970-01-01 (a Thursday): 0 is Sunday.
fn weekday(days: i64) -> u32 {
    (days + 4).rem_euclid(7) as u32
}

/// The civil date (proleptic Gregorian) of a day since 1970-01-01.
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// The day since 1970-01-01 of a civil date.
pub fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// 2026-12-01 00:00:00 UTC, a Tuesday.
    const DEC_1: i64 = 1_796_083_200_000;

    fn ms(y: i64, mo: u32, d: u32, h: i64, mi: i64, s: i64) -> i64 {
        (days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + s) * 1000
    }

    #[test]
    fn the_calendar_round_trips_and_knows_its_weekdays() {
        assert_eq!(ms(2026, 12, 1, 0, 0, 0), DEC_1);
        assert_eq!(weekday(DEC_1 / 86_400_000), 2);
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        for days in [-800_000, -1, 0, 59, 60, 11_016, 2_932_896] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
    }

    #[test]
    fn fields_steps_ranges_lists_and_names() {
        let c = Cron::parse("0 9 * * MON-FRI").unwrap();
        // Tuesday 2026-12-01 09:00, then Wednesday; the weekend is skipped.
        assert_eq!(c.next_after(DEC_1), Some(ms(2026, 12, 1, 9, 0, 0)));
        assert_eq!(
            c.next_after(ms(2026, 12, 1, 9, 0, 0)),
            Some(ms(2026, 12, 2, 9, 0, 0))
        );
        assert_eq!(
            c.next_after(ms(2026, 12, 4, 10, 0, 0)),
            Some(ms(2026, 12, 7, 9, 0, 0))
        );
        let c = Cron::parse("*/15 * * * *").unwrap();
        assert_eq!(c.next_after(DEC_1 + 1), Some(ms(2026, 12, 1, 0, 15, 0)));
        let c = Cron::parse("30 10-40/10 * * * *").unwrap();
        assert_eq!(c.next_after(DEC_1), Some(ms(2026, 12, 1, 0, 10, 30)));
        let c = Cron::parse("0 0 1 jan,Jul *").unwrap();
        assert_eq!(c.next_after(DEC_1), Some(ms(2027, 1, 1, 0, 0, 0)));
        assert_eq!(
            c.next_after(ms(2027, 1, 1, 0, 0, 0)),
            Some(ms(2027, 7, 1, 0, 0, 0))
        );
        // 7 is Sunday as 0 is.
        let c = Cron::parse("0 12 * * 7").unwrap();
        assert_eq!(c.next_after(DEC_1), Some(ms(2026, 12, 6, 12, 0, 0)));
        // Both day fields restricted: either matches (the 15th, or a Friday).
        let c = Cron::parse("0 0 15 * FRI").unwrap();
        assert_eq!(c.next_after(DEC_1), Some(ms(2026, 12, 4, 0, 0, 0)));
        assert_eq!(
            c.next_after(ms(2026, 12, 11, 0, 0, 0)),
            Some(ms(2026, 12, 15, 0, 0, 0))
        );
        // February 29th: the next leap year.
        let c = Cron::parse("0 0 29 2 *").unwrap();
        assert_eq!(c.next_after(DEC_1), Some(ms(2028, 2, 29, 0, 0, 0)));
    }

    #[test]
    fn bad_expressions_are_refused_with_the_field_named() {
        for (text, says) in [
            ("* * * *", "5 fields"),
            ("* * * * * * *", "not 7"),
            ("60 * * * *", "minute: 60 outside 0-59"),
            ("* 24 * * *", "hour"),
            ("* * 0 * *", "day of month"),
            ("* * * 13 *", "month"),
            ("* * * * 8", "day of week"),
            ("*/0 * * * *", "step of 0"),
            ("5-1 * * * *", "backwards"),
            ("1,,2 * * * *", "empty item"),
            ("* * * FOO *", "not a number or a name"),
        ] {
            let e = Cron::parse(text).unwrap_err();
            assert!(e.contains(says), "{text}: {e}");
        }
    }

    #[test]
    fn an_expression_that_never_fires_finds_nothing() {
        let c = Cron::parse("0 0 30 2 *").unwrap();
        assert_eq!(c.next_after(DEC_1), None);
    }

    proptest! {
        #[test]
        fn every_occurrence_found_matches_and_none_is_skipped(
            second in 0u32..60, minute in 0u32..60, step in 1u32..40, hour in 0u32..24,
            start in 0i64..4_000_000_000_000,
        ) {
            let text = format!("{second} {minute}/{step} {hour},{} * * *", (hour + 7) % 24);
            let c = Cron::parse(&text).unwrap();
            let next = c.next_after(start).unwrap();
            prop_assert!(next > start && c.matches(next));
            // Nothing matches between: only second `second` of a minute can, so walk those.
            let first = start.div_euclid(1000) + 1;
            let mut t = first + (i64::from(second) - first.rem_euclid(60)).rem_euclid(60);
            while t * 1000 < next {
                prop_assert!(!c.matches(t * 1000), "{} matches before {}", t * 1000, next);
                t += 60;
            }
        }
    }
}
