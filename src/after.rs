//! `After`: when an event falls due.
//!
//! An `After` is a rule, not yet a time: "in 5 minutes", "in 1 month", "at this instant".
//! [`After::resolve`] turns it into an absolute due time given the current time, and enforces
//! the two rules every due time obeys: it lies strictly after now, and at most one calendar
//! year after now ([`latest_due_ms`]).
//!
//! Parsing is pure and never panics, whatever the text; a value that overflows is an error.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Datelike, Months, SecondsFormat, Utc};

use crate::error::{Error, Result};

/// One year of milliseconds: 365 days of 24 hours.
///
/// A plain number up to and including this is a delay in milliseconds; a larger number is a
/// Unix epoch timestamp in milliseconds. Every moment since 1971-01-01 is larger, so a
/// timestamp from a real clock is never mistaken for a delay, and every delay allowed by the
/// one-year rule fits below it (except the 366th day of a leap year; write `"366 days"` or a
/// date for that).
pub const ONE_YEAR_MS: i64 = 365 * DAY_MS;

const SECOND_MS: i64 = 1_000;
const MINUTE_MS: i64 = 60 * SECOND_MS;
const HOUR_MS: i64 = 60 * MINUTE_MS;
const DAY_MS: i64 = 24 * HOUR_MS;
const WEEK_MS: i64 = 7 * DAY_MS;

const UNITS_HINT: &str = "use milliseconds, seconds, minutes, hours, days, weeks, months or years";

/// When an event falls due: now, after a delay, at an instant, or after calendar months.
///
/// Text forms accepted by [`After::parse`]:
/// - a whole number of milliseconds to wait, e.g. `"300000"`; a number larger than
///   [`ONE_YEAR_MS`] is instead a Unix epoch timestamp in milliseconds, e.g. `"1642182365811"`;
/// - an RFC 3339 date and time, e.g. `"2022-01-14T17:46:05.811Z"`; an offset such as `+02:00`
///   is converted to UTC. A date and time without `Z` or an offset is refused, because it is
///   unclear which zone it means;
/// - `"now"`, the same as [`After::NOW`];
/// - `"N unit"`, e.g. `"1 day"` or `"3 Weeks"`, with units milliseconds, seconds, minutes,
///   hours, days, weeks, months and years, singular or plural. Days are 24 hours and weeks
///   7 days (UTC has no daylight saving). Months and years are calendar months in UTC, so
///   their length is known only when resolved; see [`After::resolve`].
///
/// Two values are equal when they denote the same rule, whatever text they were parsed from:
/// `"1 day"`, `"1 days"`, `"24 hours"` and `After::ms(86_400_000)` are all equal.
///
/// ```
/// use afterlog::After;
///
/// let now_ms = 1_795_000_000_000; // 2026-11-18T11:06:40Z
/// assert_eq!(After::parse("1 day")?.resolve(now_ms)?, now_ms + 86_400_000);
/// assert_eq!(After::parse("2026-11-18T11:20:00Z")?.resolve(now_ms)?, 1_795_000_800_000);
/// let err = After::parse("2 years")?.resolve(now_ms).unwrap_err();
/// assert!(err.to_string().starts_with("after \"2 years\" is more than one year ahead"));
/// # Ok::<(), afterlog::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct After {
    rule: Rule,
    /// The text this value was parsed from, trimmed; used by `Display` and in errors.
    text: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Rule {
    Now,
    DelayMs(i64),
    EpochMs(i64),
    /// Calendar months in UTC; a year is 12 months.
    Months(i64),
}

impl PartialEq for After {
    fn eq(&self, other: &After) -> bool {
        self.rule == other.rule
    }
}

impl Eq for After {}

impl After {
    /// Deliver immediately: the publish without a delay. Resolves to `now`.
    pub const NOW: After = After {
        rule: Rule::Now,
        text: None,
    };

    /// Deliver after `delay`, rounded up to whole milliseconds (so a positive delay never
    /// becomes zero). A zero delay fails in [`After::resolve`]; use [`After::NOW`] instead.
    pub fn delay(delay: Duration) -> After {
        let whole_ms = delay.as_millis();
        let rounded_ms = if delay.subsec_nanos().is_multiple_of(1_000_000) {
            whole_ms
        } else {
            whole_ms + 1
        };
        After::from_rule(Rule::DelayMs(i64::try_from(rounded_ms).unwrap_or(i64::MAX)))
    }

    /// Deliver after `delay_ms` milliseconds. Values beyond `i64::MAX` saturate (and fail the
    /// one-year rule in [`After::resolve`]).
    pub fn ms(delay_ms: u64) -> After {
        After::from_rule(Rule::DelayMs(i64::try_from(delay_ms).unwrap_or(i64::MAX)))
    }

    /// Deliver at `instant`, rounded up to whole milliseconds (never early).
    pub fn at(instant: DateTime<Utc>) -> After {
        After::from_rule(Rule::EpochMs(ceil_epoch_ms(&instant)))
    }

    /// Deliver at the Unix epoch timestamp `epoch_ms`, in milliseconds.
    pub fn epoch_ms(epoch_ms: i64) -> After {
        After::from_rule(Rule::EpochMs(epoch_ms))
    }

    /// Parses one of the text forms listed under [`After`].
    ///
    /// Errors that do not depend on the current time are reported here: an empty or
    /// unrecognised text, an unknown unit, a count or delay that is not greater than zero, a
    /// value too large to represent. The rest is checked by [`After::resolve`].
    pub fn parse(text: &str) -> Result<After> {
        let trimmed = text.trim();
        let rule = parse_rule(trimmed)?;
        if let Rule::DelayMs(n) | Rule::Months(n) = rule
            && n <= 0
        {
            return Err(not_positive(trimmed));
        }
        Ok(After {
            rule,
            text: Some(trimmed.to_owned()),
        })
    }

    /// The absolute due time, in Unix epoch milliseconds, of this rule applied at `now_ms`.
    ///
    /// [`After::NOW`] resolves to `now_ms`. Every other rule must resolve to a time strictly
    /// after `now_ms` and no later than [`latest_due_ms`]`(now_ms)`, one calendar year ahead.
    /// Months are added by the calendar in UTC with chrono's rule: the day of the month is
    /// kept, clamped to the last day of a shorter month, so January 31 plus one month is
    /// February 28 (or 29 in a leap year) at the same time of day.
    pub fn resolve(&self, now_ms: i64) -> Result<i64> {
        let due_ms = match self.rule {
            Rule::Now => return Ok(now_ms),
            Rule::DelayMs(delay_ms) => {
                if delay_ms <= 0 {
                    return Err(not_positive(self));
                }
                now_ms
                    .checked_add(delay_ms)
                    .ok_or_else(|| self.too_far(now_ms))?
            }
            Rule::EpochMs(epoch_ms) => epoch_ms,
            Rule::Months(months) => {
                if months <= 0 {
                    return Err(not_positive(self));
                }
                add_months(now_ms, months).ok_or_else(|| self.too_far(now_ms))?
            }
        };
        if due_ms < now_ms {
            return Err(Error::invalid(format!(
                "after \"{self}\" is in the past (now is {})",
                format_epoch_ms(now_ms)
            )));
        }
        if due_ms == now_ms {
            return Err(Error::invalid(format!(
                "after \"{self}\" is the present moment ({}); it must be later than now, or use After::NOW",
                format_epoch_ms(now_ms)
            )));
        }
        // A calendar year is never shorter than 365 days (`ONE_YEAR_MS`: a leap day ahead
        // makes it 366, a leap day now clamps to the 28th: 365), so most due times need no
        // calendar arithmetic (`calendar_year_is_never_shorter_than_365_days`).
        if due_ms > now_ms.saturating_add(ONE_YEAR_MS) && due_ms > latest_due_ms(now_ms) {
            return Err(self.too_far(now_ms));
        }
        Ok(due_ms)
    }

    /// Whether this is [`After::NOW`].
    pub fn is_now(&self) -> bool {
        self.rule == Rule::Now
    }

    fn from_rule(rule: Rule) -> After {
        After { rule, text: None }
    }

    fn too_far(&self, now_ms: i64) -> Error {
        Error::invalid(format!(
            "after \"{self}\" is more than one year ahead (latest allowed: {})",
            format_epoch_ms(latest_due_ms(now_ms))
        ))
    }
}

/// The latest due time allowed at `now_ms`: the same instant one calendar year later in UTC
/// (February 29 maps to February 28). If `now_ms` lies outside the calendar chrono can
/// represent, [`ONE_YEAR_MS`] later, saturating.
pub fn latest_due_ms(now_ms: i64) -> i64 {
    add_months(now_ms, 12).unwrap_or_else(|| now_ms.saturating_add(ONE_YEAR_MS))
}

impl Default for After {
    /// [`After::NOW`].
    fn default() -> After {
        After::NOW
    }
}

impl FromStr for After {
    type Err = Error;

    fn from_str(text: &str) -> Result<After> {
        After::parse(text)
    }
}

impl From<Duration> for After {
    fn from(delay: Duration) -> After {
        After::delay(delay)
    }
}

impl From<DateTime<Utc>> for After {
    fn from(instant: DateTime<Utc>) -> After {
        After::at(instant)
    }
}

impl fmt::Display for After {
    /// The text this value was parsed from, or else a text form that parses to an equal
    /// value (for timestamps, between the years 0 and 9999 and after 1971).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(text) = &self.text {
            return f.write_str(text);
        }
        match self.rule {
            Rule::Now => f.write_str("now"),
            Rule::DelayMs(ms) if (1..=ONE_YEAR_MS).contains(&ms) => write!(f, "{ms}"),
            Rule::DelayMs(ms) => write!(f, "{ms} milliseconds"),
            Rule::EpochMs(ms) => match DateTime::<Utc>::from_timestamp_millis(ms) {
                // RFC 3339 has four-digit years only; beyond them a number larger than
                // ONE_YEAR_MS still parses back as the same timestamp.
                Some(instant) if (0..=9999).contains(&instant.year()) => {
                    f.write_str(&instant.to_rfc3339_opts(SecondsFormat::Millis, true))
                }
                _ => write!(f, "{ms}"),
            },
            Rule::Months(months) => write!(f, "{months} months"),
        }
    }
}

fn parse_rule(text: &str) -> Result<Rule> {
    if text.is_empty() {
        return Err(Error::invalid(
            "after \"\" is empty (use a number of milliseconds, a date and time such as \
             \"2022-01-14T17:46:05.811Z\", or \"N unit\" such as \"5 minutes\")",
        ));
    }
    if text.eq_ignore_ascii_case("now") {
        return Ok(Rule::Now);
    }
    let (sign, unsigned) = match text.as_bytes()[0] {
        b'-' => (-1, &text[1..]),
        b'+' => (1, &text[1..]),
        _ => (1, text),
    };
    let digits_len = unsigned.bytes().take_while(u8::is_ascii_digit).count();
    let (digits, rest) = unsigned.split_at(digits_len);
    if digits.is_empty() {
        return Err(unrecognised(text));
    }
    if rest.is_empty() {
        let n = parse_count(text, digits, sign)?;
        return Ok(if n > ONE_YEAR_MS {
            Rule::EpochMs(n)
        } else {
            Rule::DelayMs(n)
        });
    }
    if looks_like_date(text) {
        return parse_datetime(text).map(Rule::EpochMs);
    }
    let unit = rest.trim_start();
    if rest.len() == unit.len() && !unit.starts_with(|c: char| c.is_ascii_alphabetic()) {
        // "1.5 days", "12:00": not a count followed by a unit.
        return Err(unrecognised(text));
    }
    let n = parse_count(text, digits, sign)?;
    let scale = |unit_ms: i64| {
        n.checked_mul(unit_ms)
            .map(Rule::DelayMs)
            .ok_or_else(|| too_large(text))
    };
    match unit.to_ascii_lowercase().as_str() {
        "ms" | "millisecond" | "milliseconds" => Ok(Rule::DelayMs(n)),
        "second" | "seconds" => scale(SECOND_MS),
        "minute" | "minutes" => scale(MINUTE_MS),
        "hour" | "hours" => scale(HOUR_MS),
        "day" | "days" => scale(DAY_MS),
        "week" | "weeks" => scale(WEEK_MS),
        "month" | "months" => Ok(Rule::Months(n)),
        "year" | "years" => n
            .checked_mul(12)
            .map(Rule::Months)
            .ok_or_else(|| too_large(text)),
        _ => Err(Error::invalid(format!(
            "after \"{text}\": unknown unit \"{unit}\" ({UNITS_HINT})"
        ))),
    }
}

fn parse_count(text: &str, digits: &str, sign: i64) -> Result<i64> {
    // Parsing digits only cannot fail except by overflow.
    let n: i64 = digits.parse().map_err(|_| too_large(text))?;
    Ok(n * sign)
}

/// `YYYY-MM-DD...`: four digits and a dash.
fn looks_like_date(text: &str) -> bool {
    let bytes = text.as_bytes();
    bytes.len() >= 5 && bytes[..4].iter().all(u8::is_ascii_digit) && bytes[4] == b'-'
}

fn parse_datetime(text: &str) -> Result<i64> {
    match DateTime::parse_from_rfc3339(text) {
        Ok(instant) => Ok(ceil_epoch_ms(&instant.with_timezone(&Utc))),
        Err(err) => {
            let hint = if text.contains(['T', 't', ' ']) {
                "; write it as RFC 3339 in UTC, e.g. \"2022-01-14T17:46:05.811Z\" (a `Z` or an offset is required)"
            } else {
                "; a date needs a time and a zone, e.g. \"2022-01-14T00:00:00Z\""
            };
            Err(Error::invalid(format!(
                "after \"{text}\" is not a valid date and time ({err}){hint}"
            )))
        }
    }
}

fn ceil_epoch_ms(instant: &DateTime<Utc>) -> i64 {
    let ms = instant.timestamp_millis();
    if instant.timestamp_subsec_nanos().is_multiple_of(1_000_000) {
        ms
    } else {
        ms.saturating_add(1)
    }
}

/// `now_ms` plus `months` calendar months in UTC, or `None` outside chrono's calendar.
fn add_months(now_ms: i64, months: i64) -> Option<i64> {
    let now = DateTime::<Utc>::from_timestamp_millis(now_ms)?;
    let months = Months::new(u32::try_from(months).ok()?);
    Some(now.checked_add_months(months)?.timestamp_millis())
}

fn format_epoch_ms(epoch_ms: i64) -> String {
    match DateTime::<Utc>::from_timestamp_millis(epoch_ms) {
        Some(instant) => instant.to_rfc3339_opts(SecondsFormat::Millis, true),
        None => format!("{epoch_ms} ms since the Unix epoch"),
    }
}

fn not_positive(after: impl fmt::Display) -> Error {
    Error::invalid(format!("after \"{after}\" must be greater than zero"))
}

fn too_large(text: &str) -> Error {
    Error::invalid(format!(
        "after \"{text}\" is too large; the most allowed is one year ahead"
    ))
}

fn unrecognised(text: &str) -> Error {
    Error::invalid(format!(
        "after \"{text}\" is not a number of milliseconds, a date and time such as \
         \"2022-01-14T17:46:05.811Z\", or \"N unit\" such as \"5 minutes\""
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use proptest::prelude::*;

    fn utc_ms(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> i64 {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, s)
            .unwrap()
            .timestamp_millis()
    }

    /// 2026-11-27T08:00:00Z.
    fn now() -> i64 {
        utc_ms(2026, 11, 27, 8, 0, 0)
    }

    fn err(text: &str) -> String {
        match After::parse(text).and_then(|a| a.resolve(now())) {
            Ok(due) => panic!("{text:?} resolved to {due}, expected an error"),
            Err(e) => e.to_string(),
        }
    }

    fn due(text: &str) -> i64 {
        After::parse(text).unwrap().resolve(now()).unwrap()
    }

    #[test]
    fn now_resolves_to_now() {
        assert_eq!(After::NOW.resolve(now()).unwrap(), now());
        assert!(After::NOW.is_now());
        assert_eq!(After::default(), After::NOW);
        assert_eq!(After::NOW.to_string(), "now");
        assert_eq!(After::parse(" NOW ").unwrap(), After::NOW);
    }

    #[test]
    fn plain_milliseconds() {
        assert_eq!(due("300000"), now() + 300_000);
        assert_eq!(due("  1  "), now() + 1);
        assert_eq!(After::parse("5000").unwrap(), After::ms(5000));
    }

    #[test]
    fn threshold_between_delay_and_timestamp() {
        assert_eq!(ONE_YEAR_MS, 31_536_000_000);
        let at_threshold = After::parse(&ONE_YEAR_MS.to_string()).unwrap();
        assert_eq!(at_threshold, After::ms(ONE_YEAR_MS as u64));
        assert_eq!(at_threshold.resolve(now()).unwrap(), now() + ONE_YEAR_MS);
        let above = After::parse(&(ONE_YEAR_MS + 1).to_string()).unwrap();
        assert_eq!(above, After::epoch_ms(ONE_YEAR_MS + 1));
        // 1971-01-01T00:00:00.001Z is long past.
        assert!(
            above
                .resolve(now())
                .unwrap_err()
                .to_string()
                .contains("is in the past")
        );
        let ts = now() + 60_000;
        assert_eq!(due(&ts.to_string()), ts);
    }

    #[test]
    fn rfc3339_forms() {
        let expected = utc_ms(2027, 1, 14, 17, 46, 5) + 811;
        assert_eq!(due("2027-01-14T17:46:05.811Z"), expected);
        assert_eq!(due("2027-01-14T19:46:05.811+02:00"), expected);
        assert_eq!(due("2027-01-14t17:46:05.811z"), expected);
        // Sub-millisecond precision rounds up, never early.
        assert_eq!(due("2027-01-14T17:46:05.8101Z"), expected);
        let at = Utc.with_ymd_and_hms(2027, 1, 14, 17, 46, 5).unwrap();
        assert_eq!(After::at(at), After::epoch_ms(expected - 811));
        assert_eq!(After::from(at), After::at(at));
    }

    #[test]
    fn date_without_zone_is_refused_with_a_hint() {
        let message = err("2027-01-14T17:46:05");
        assert!(
            message.contains("a `Z` or an offset is required"),
            "{message}"
        );
        let message = err("2027-01-14");
        assert!(message.contains("needs a time and a zone"), "{message}");
    }

    #[test]
    fn units_singular_plural_and_case() {
        assert_eq!(
            After::parse("1 day").unwrap(),
            After::parse("1 days").unwrap()
        );
        assert_eq!(
            After::parse("1 day").unwrap(),
            After::parse("24 hours").unwrap()
        );
        assert_eq!(due("1 second"), now() + 1_000);
        assert_eq!(due("2 Minutes"), now() + 120_000);
        assert_eq!(due(" 3 hours "), now() + 3 * HOUR_MS);
        assert_eq!(due("1day"), now() + DAY_MS);
        assert_eq!(due("2 weeks"), now() + 14 * DAY_MS);
        assert_eq!(due("250 ms"), now() + 250);
        assert_eq!(due("1 month"), utc_ms(2026, 12, 27, 8, 0, 0));
        assert_eq!(due("1 year"), utc_ms(2027, 11, 27, 8, 0, 0));
        assert_eq!(due("12 months"), due("1 year"));
    }

    #[test]
    fn error_messages_name_the_input_and_the_rule() {
        assert_eq!(err("0"), "after \"0\" must be greater than zero");
        assert_eq!(err("0 days"), "after \"0 days\" must be greater than zero");
        assert_eq!(err("-5"), "after \"-5\" must be greater than zero");
        assert_eq!(
            err("-1 hour"),
            "after \"-1 hour\" must be greater than zero"
        );
        assert_eq!(
            err("2 years"),
            "after \"2 years\" is more than one year ahead (latest allowed: 2027-11-27T08:00:00.000Z)"
        );
        assert_eq!(
            err("13 months"),
            "after \"13 months\" is more than one year ahead (latest allowed: 2027-11-27T08:00:00.000Z)"
        );
        assert_eq!(
            err("2020-01-01T00:00:00Z"),
            "after \"2020-01-01T00:00:00Z\" is in the past (now is 2026-11-27T08:00:00.000Z)"
        );
        assert_eq!(
            err("5 fortnights"),
            "after \"5 fortnights\": unknown unit \"fortnights\" (use milliseconds, seconds, \
             minutes, hours, days, weeks, months or years)"
        );
        assert!(err("").contains("is empty"));
        assert!(err("soon").contains("is not a number of milliseconds"));
        assert!(err("1.5 days").contains("is not a number of milliseconds"));
        assert!(err("99999999999999999999").contains("is too large"));
        assert!(err("9223372036854775807 weeks").contains("is too large"));
        assert!(err("9223372036854775807 years").contains("is too large"));
        assert!(err("366 days").contains("more than one year ahead"));
    }

    #[test]
    fn present_instant_is_refused() {
        let message = After::epoch_ms(now())
            .resolve(now())
            .unwrap_err()
            .to_string();
        assert!(message.contains("must be later than now"), "{message}");
        assert!(
            After::ms(0)
                .resolve(now())
                .unwrap_err()
                .to_string()
                .contains("greater than zero")
        );
        assert!(After::delay(Duration::ZERO).resolve(now()).is_err());
    }

    #[test]
    fn one_year_limit_is_inclusive_and_calendar_based() {
        let latest = latest_due_ms(now());
        assert_eq!(latest, utc_ms(2027, 11, 27, 8, 0, 0));
        assert_eq!(After::epoch_ms(latest).resolve(now()).unwrap(), latest);
        assert!(After::epoch_ms(latest + 1).resolve(now()).is_err());
        // A leap year makes the year 366 days long.
        let before_leap_day = utc_ms(2027, 6, 1, 0, 0, 0);
        assert_eq!(
            latest_due_ms(before_leap_day) - before_leap_day,
            366 * DAY_MS
        );
        assert_eq!(
            After::parse("366 days")
                .unwrap()
                .resolve(before_leap_day)
                .unwrap(),
            before_leap_day + 366 * DAY_MS
        );
        // From February 29 the limit is February 28 of the next year.
        let leap_day = utc_ms(2028, 2, 29, 12, 0, 0);
        assert_eq!(latest_due_ms(leap_day), utc_ms(2029, 2, 28, 12, 0, 0));
    }

    #[test]
    fn calendar_months_clamp_to_the_end_of_shorter_months() {
        let jan_31 = utc_ms(2027, 1, 31, 10, 30, 0);
        let one_month = After::parse("1 month").unwrap();
        assert_eq!(
            one_month.resolve(jan_31).unwrap(),
            utc_ms(2027, 2, 28, 10, 30, 0)
        );
        let jan_31_leap = utc_ms(2028, 1, 31, 10, 30, 0);
        assert_eq!(
            one_month.resolve(jan_31_leap).unwrap(),
            utc_ms(2028, 2, 29, 10, 30, 0)
        );
        let mar_31 = utc_ms(2027, 3, 31, 0, 0, 0);
        assert_eq!(
            one_month.resolve(mar_31).unwrap(),
            utc_ms(2027, 4, 30, 0, 0, 0)
        );
        let leap_day = utc_ms(2028, 2, 29, 0, 0, 0);
        let one_year = After::parse("1 year").unwrap();
        assert_eq!(
            one_year.resolve(leap_day).unwrap(),
            utc_ms(2029, 2, 28, 0, 0, 0)
        );
    }

    #[test]
    fn delay_rounds_up_to_whole_milliseconds() {
        assert_eq!(After::delay(Duration::from_micros(1)), After::ms(1));
        assert_eq!(After::delay(Duration::from_micros(1500)), After::ms(2));
        assert_eq!(After::delay(Duration::from_secs(5)), After::ms(5000));
        assert_eq!(After::from(Duration::from_secs(5)), After::ms(5000));
        assert!(After::ms(u64::MAX).resolve(now()).is_err());
        assert!(After::delay(Duration::MAX).resolve(now()).is_err());
    }

    #[test]
    fn overflow_is_an_error_not_a_panic() {
        assert!(After::ms(ONE_YEAR_MS as u64).resolve(i64::MAX).is_err());
        assert!(After::parse("1 month").unwrap().resolve(i64::MAX).is_err());
        assert!(After::epoch_ms(i64::MIN).resolve(now()).is_err());
        assert_eq!(latest_due_ms(i64::MAX), i64::MAX);
    }

    #[test]
    fn display_keeps_the_parsed_text() {
        assert_eq!(After::parse("  1 days ").unwrap().to_string(), "1 days");
        assert_eq!(After::ms(5000).to_string(), "5000");
        assert_eq!(
            After::ms(ONE_YEAR_MS as u64 + 1).to_string(),
            "31536000001 milliseconds"
        );
        assert_eq!(
            After::epoch_ms(1_642_182_365_811).to_string(),
            "2022-01-14T17:46:05.811Z"
        );
        assert_eq!("1 day".parse::<After>().unwrap(), After::ms(DAY_MS as u64));
    }

    fn any_after() -> impl Strategy<Value = After> {
        prop_oneof![
            Just(After::NOW),
            any::<u64>().prop_map(After::ms),
            (0..=2 * ONE_YEAR_MS as u64).prop_map(After::ms),
            any::<i64>().prop_map(After::epoch_ms),
            (now() - ONE_YEAR_MS..now() + 2 * ONE_YEAR_MS).prop_map(After::epoch_ms),
            (0u64..=30, 0usize..8).prop_map(|(n, unit)| {
                let units = [
                    "ms", "second", "minutes", "hour", "days", "week", "month", "years",
                ];
                After::parse(&format!("{n} {}", units[unit])).unwrap_or_else(|_| After::ms(n))
            }),
        ]
    }

    proptest! {
        /// The shortcut `resolve` takes: anything within 365 days is within the calendar year.
        #[test]
        fn calendar_year_is_never_shorter_than_365_days(
            now_ms in prop_oneof![
                Just(utc_ms(2024, 2, 29, 12, 0, 0)),
                Just(utc_ms(2023, 3, 1, 0, 0, 0)),
                -62_000_000_000_000i64..253_402_300_799_999i64,
            ],
        ) {
            prop_assert!(latest_due_ms(now_ms) >= now_ms.saturating_add(ONE_YEAR_MS));
        }

        #[test]
        fn display_parses_back_to_the_same_due_time(
            after in any_after(),
            // From 1970 to the end of year 9999, where timestamps have a text form.
            now_ms in prop_oneof![Just(now()), 0..253_402_300_799_999i64],
        ) {
            let before = after.resolve(now_ms).ok();
            let reparsed = After::parse(&after.to_string()).and_then(|a| a.resolve(now_ms)).ok();
            prop_assert_eq!(before, reparsed, "{}", after);
        }

        #[test]
        fn resolved_due_times_obey_both_rules(after in any_after(), now_ms in any::<i64>()) {
            if let (false, Ok(due_ms)) = (after.is_now(), after.resolve(now_ms)) {
                prop_assert!(due_ms > now_ms);
                prop_assert!(due_ms <= latest_due_ms(now_ms));
            }
        }

        #[test]
        fn parsing_any_text_never_panics(text in any::<String>(), now_ms in any::<i64>()) {
            if let Ok(after) = After::parse(&text) {
                let _ = after.resolve(now_ms);
                let _ = after.to_string();
            }
        }

        #[test]
        fn parsing_unit_like_text_never_panics(
            text in r"[+-]?[0-9]{0,22} ?[a-zA-Z:.T-]{0,12}[0-9:.Z+-]{0,20}",
            now_ms in any::<i64>(),
        ) {
            if let Ok(after) = After::parse(&text) {
                let _ = after.resolve(now_ms);
            }
        }
    }
}
