//! Retry policies: what happens after a failed attempt.
//!
//! A [`RetryPolicy`] is pure: [`RetryPolicy::decide`] takes the failed attempt, the event's
//! first due time and the current time, and returns a [`Decision`]: retry at a given time
//! (with the [`RetryContext`] the next attempt will see), or drop the event. Jitter is derived
//! from a hash of the event id and the attempt number, so the same input always gives the same
//! decision, in a test, in a simulation and on replay after a crash.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use crate::error::{Error, Result};

/// How long Ampt waits between retries of a failed event.
pub const AMPT_RETRY_INTERVAL: Duration = Duration::from_secs(6 * 60);
/// How long after its first due time Ampt keeps retrying an event before dropping it.
pub const AMPT_MAX_AGE: Duration = Duration::from_secs(14 * 24 * 60 * 60);
/// The most retries a Forge queue allows: the fifth failure of an event drops it.
pub const FORGE_MAX_RETRIES: u32 = 4;
/// How long a Forge queue waits before retrying after a platform failure or a plain error.
///
/// Forge retries platform failures "automatically" without saying when; one minute is
/// afterlog's choice.
pub const FORGE_RETRY_DELAY: Duration = Duration::from_secs(60);
/// The default clamp on a requested `retry_after`: 900 seconds (Forge's limit).
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(900);

/// Why an attempt is being retried, as seen by the next attempt in its [`RetryContext`].
///
/// The display names are Forge's `InvocationErrorCode`s; the numeric codes are stable and
/// stored on disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RetryReason {
    /// A rate limit upstream made the handler fail (requested by the handler).
    UpstreamRateLimited,
    /// Some application error occurred and the handler asked for a retry.
    RetryRequest,
    /// The handler did not finish within its timeout.
    TimeOut,
    /// The handler ran out of memory.
    OutOfMemory,
    /// A quota or rate limit of the engine itself.
    PlatformRateLimited,
    /// Any other failure outside the handler's control, such as a panic.
    PlatformUnknownError,
}

impl RetryReason {
    /// Every reason, in code order.
    pub const ALL: [RetryReason; 6] = [
        RetryReason::UpstreamRateLimited,
        RetryReason::RetryRequest,
        RetryReason::TimeOut,
        RetryReason::OutOfMemory,
        RetryReason::PlatformRateLimited,
        RetryReason::PlatformUnknownError,
    ];

    /// The stable on-disk code, 1 to 6.
    pub fn code(self) -> u8 {
        match self {
            RetryReason::UpstreamRateLimited => 1,
            RetryReason::RetryRequest => 2,
            RetryReason::TimeOut => 3,
            RetryReason::OutOfMemory => 4,
            RetryReason::PlatformRateLimited => 5,
            RetryReason::PlatformUnknownError => 6,
        }
    }

    /// The reason with on-disk code `code`, or `None` for an unknown code.
    pub fn from_code(code: u8) -> Option<RetryReason> {
        RetryReason::ALL
            .into_iter()
            .find(|reason| reason.code() == code)
    }

    /// The Forge name, e.g. `FUNCTION_TIME_OUT`.
    pub fn as_str(self) -> &'static str {
        match self {
            RetryReason::UpstreamRateLimited => "FUNCTION_UPSTREAM_RATE_LIMITED",
            RetryReason::RetryRequest => "FUNCTION_RETRY_REQUEST",
            RetryReason::TimeOut => "FUNCTION_TIME_OUT",
            RetryReason::OutOfMemory => "FUNCTION_OUT_OF_MEMORY",
            RetryReason::PlatformRateLimited => "FUNCTION_PLATFORM_RATE_LIMITED",
            RetryReason::PlatformUnknownError => "FUNCTION_PLATFORM_UNKNOWN_ERROR",
        }
    }
}

impl fmt::Display for RetryReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RetryReason {
    type Err = Error;

    /// Parses a Forge name such as `FUNCTION_RETRY_REQUEST` (exact spelling).
    fn from_str(text: &str) -> Result<RetryReason> {
        RetryReason::ALL
            .into_iter()
            .find(|reason| reason.as_str() == text)
            .ok_or_else(|| {
                let names: Vec<&str> = RetryReason::ALL.iter().map(|r| r.as_str()).collect();
                Error::invalid(format!(
                    "unknown retry reason \"{text}\" (expected one of {})",
                    names.join(", ")
                ))
            })
    }
}

/// What a retried attempt learns about the failure before it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryContext {
    /// How many retries with a context have happened so far, counting this one (from 1).
    pub retry_count: u32,
    /// Why the previous attempt failed.
    pub retry_reason: RetryReason,
    /// Data the previous attempt passed along with its retry request (empty otherwise).
    pub retry_data: Vec<u8>,
}

/// A handler's request to be retried (Forge's `InvocationError`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryOptions {
    /// How long to wait before the retry; clamped to the policy's `max_retry_after`.
    pub retry_after: Duration,
    /// Why, passed to the next attempt as `retry_reason`.
    pub reason: RetryReason,
    /// Anything the next attempt needs, passed to it as `retry_data`. The retry record holds
    /// it, so it must fit in one record (256 KiB with the record's metadata): larger data is
    /// dropped, and the attempt counts as a plain failure (retried as the policy retries
    /// errors) whose message says the retry data was over the limit.
    pub data: Vec<u8>,
}

/// How an attempt failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    /// A handler returned an error.
    Error {
        /// The error's text.
        message: String,
    },
    /// A handler asked to be retried.
    RetryRequested(RetryOptions),
    /// The attempt failed outside the handler's control: a timeout
    /// ([`RetryReason::TimeOut`]) or a panic ([`RetryReason::PlatformUnknownError`]).
    Platform {
        /// Which platform failure.
        reason: RetryReason,
    },
}

/// Everything [`RetryPolicy::decide`] looks at.
#[derive(Clone, Copy, Debug)]
pub struct FailureInput<'a> {
    /// The event's id; seeds the jitter.
    pub event_id: u64,
    /// The attempt that failed, from 1.
    pub attempt: u32,
    /// When the event first fell due, in Unix epoch milliseconds.
    pub first_due_ms: i64,
    /// When the attempt failed, in Unix epoch milliseconds.
    pub now_ms: i64,
    /// The context the failed attempt was given, if any.
    pub previous: Option<&'a RetryContext>,
    /// How the attempt failed.
    pub failure: &'a Failure,
}

/// What to do with an event after a failed attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Attempt again at `next_due_ms` (always after the failure's `now_ms`).
    Retry {
        /// When to attempt again, in Unix epoch milliseconds.
        next_due_ms: i64,
        /// What the next attempt will see as its retry context.
        context: Option<RetryContext>,
    },
    /// Give up on the event.
    Drop {
        /// Why.
        reason: DropReason,
    },
}

/// Why an event was dropped: the retry policy's decision ([`Decision::Drop`]) or the
/// retention, and the reason a drop record carries. The numeric codes are stable and stored
/// on disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DropReason {
    /// The policy's `max_attempts` were used up.
    Exhausted = 1,
    /// The next attempt would fall due after the policy's `max_age` (measured from the first
    /// due time), or after the last representable millisecond.
    MaxAge = 2,
    /// Not acknowledged within the retention after its first due time (decided by the
    /// engine, never by a policy).
    Expired = 3,
}

impl DropReason {
    /// Every reason, in code order.
    pub const ALL: [DropReason; 3] = [
        DropReason::Exhausted,
        DropReason::MaxAge,
        DropReason::Expired,
    ];

    /// The stable on-disk code: 1 for `Exhausted`, 2 for `MaxAge`, 3 for `Expired`.
    pub fn code(self) -> u8 {
        self as u8
    }

    /// The reason with on-disk code `code`, or `None` for an unknown code.
    pub fn from_code(code: u8) -> Option<DropReason> {
        DropReason::ALL.into_iter().find(|r| r.code() == code)
    }

    /// The lower-case name the reader and the CLI show: `exhausted`, `max_age`, `expired`.
    pub fn name(self) -> &'static str {
        match self {
            DropReason::Exhausted => "exhausted",
            DropReason::MaxAge => "max_age",
            DropReason::Expired => "expired",
        }
    }
}

impl fmt::Display for DropReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DropReason::Exhausted => "retries exhausted",
            DropReason::MaxAge => "too old to retry",
            DropReason::Expired => "past retention",
        })
    }
}

/// When and how often a failed event is retried.
///
/// Rules shared by every policy:
/// - a [`Failure::RetryRequested`] waits its own `retry_after`, clamped to the policy's
///   [`max_retry_after`](RetryPolicy::max_retry_after) (900 s unless changed), instead of the
///   backoff;
/// - a requested retry and a platform failure (timeout, panic) give the next attempt a
///   [`RetryContext`] whose `retry_count` is the previous one plus one;
/// - the next due time is at least one millisecond after now;
/// - [`max_attempts`](RetryPolicy::max_attempts) counts every attempt, the first included,
///   and is checked before [`max_age`](RetryPolicy::max_age), which is measured from the
///   event's first due time;
/// - a plain [`Failure::Error`] carries no context, except on [`RetryPolicy::forge`];
/// - arithmetic saturates; no input panics.
///
/// ```
/// use afterlog::{Decision, Failure, FailureInput, RetryPolicy};
///
/// let failure = Failure::Error { message: "mail server down".into() };
/// let input = FailureInput {
///     event_id: 1,
///     attempt: 1,
///     first_due_ms: 1_000_000,
///     now_ms: 1_000_050,
///     previous: None,
///     failure: &failure,
/// };
/// let decision = RetryPolicy::ampt().decide(&input);
/// assert_eq!(decision, Decision::Retry { next_due_ms: 1_000_050 + 6 * 60_000, context: None });
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct RetryPolicy {
    backoff: Backoff,
    max_attempts: Option<u32>,
    max_age_ms: Option<i64>,
    max_retry_after_ms: i64,
    /// The context reason a plain error gets, if plain errors carry a context.
    error_reason: Option<RetryReason>,
    /// Built from [`RetryPolicy::forge`]: Forge's limits hold whatever the builders changed.
    forge: bool,
}

#[derive(Clone, Debug, PartialEq)]
enum Backoff {
    Fixed {
        delay_ms: i64,
    },
    Exponential {
        initial_ms: i64,
        max_ms: i64,
        multiplier: f64,
        jitter: f64,
    },
}

impl Default for RetryPolicy {
    /// [`RetryPolicy::ampt`].
    fn default() -> RetryPolicy {
        RetryPolicy::ampt()
    }
}

impl RetryPolicy {
    /// Ampt's policy, the default: retry every 6 minutes until 14 days after the first due
    /// time; a retry that would fall due later than that drops the event. Plain errors carry
    /// no retry context.
    pub fn ampt() -> RetryPolicy {
        RetryPolicy::fixed(AMPT_RETRY_INTERVAL).max_age(AMPT_MAX_AGE)
    }

    /// Forge's queue policy: at most [`FORGE_MAX_RETRIES`] retries, so the fifth failure
    /// drops the event. A requested `retry_after` is clamped to 900 s. Platform failures are
    /// retried after [`FORGE_RETRY_DELAY`] with their reason in the context. A plain error is
    /// treated like a platform failure with [`RetryReason::PlatformUnknownError`], since a
    /// Forge handler that throws has failed in a way the platform cannot classify.
    pub fn forge() -> RetryPolicy {
        RetryPolicy {
            error_reason: Some(RetryReason::PlatformUnknownError),
            forge: true,
            ..RetryPolicy::fixed(FORGE_RETRY_DELAY).max_attempts(FORGE_MAX_RETRIES + 1)
        }
    }

    /// Whether this policy is Forge's: [`RetryPolicy::forge`], or built from it with the
    /// builders (`max_attempts`, `max_age`, `max_retry_after`), which keep the property. A
    /// Forge policy keeps Forge's limits whatever the builders set — at most
    /// [`FORGE_MAX_RETRIES`] retries and a `retry_after` of at most [`MAX_RETRY_AFTER`]
    /// (stricter settings stay) — and a name with it gets Forge's push limit, a delay of at
    /// most 15 minutes.
    pub fn is_forge(&self) -> bool {
        self.forge
    }

    /// The most attempts, Forge's limit included.
    fn max_attempts_limit(&self) -> Option<u32> {
        match (self.max_attempts, self.forge) {
            (Some(max), true) => Some(max.min(FORGE_MAX_RETRIES + 1)),
            (None, true) => Some(FORGE_MAX_RETRIES + 1),
            (max, false) => max,
        }
    }

    /// The clamp on a requested `retry_after`, Forge's limit included.
    fn max_retry_after_limit_ms(&self) -> i64 {
        if self.forge {
            self.max_retry_after_ms.min(duration_ms(MAX_RETRY_AFTER))
        } else {
            self.max_retry_after_ms
        }
    }

    /// Retry after the same `delay` every time (at least 1 ms), with no limit until one is
    /// set with [`max_attempts`](Self::max_attempts) or [`max_age`](Self::max_age).
    pub fn fixed(delay: Duration) -> RetryPolicy {
        RetryPolicy {
            backoff: Backoff::Fixed {
                delay_ms: duration_ms(delay),
            },
            max_attempts: None,
            max_age_ms: None,
            max_retry_after_ms: duration_ms(MAX_RETRY_AFTER),
            error_reason: None,
            forge: false,
        }
    }

    /// Retry after `initial`, then `initial × multiplier`, `initial × multiplier²`, … capped at
    /// `max`, with no limit until one is set.
    ///
    /// `jitter` (0 to 1) shortens each delay by up to that fraction: the delay is
    /// `base × (1 − jitter × u)` with `u` in `[0, 1)` derived from the event id and the
    /// attempt, so delays never exceed `max` and never repeat in lockstep across events. A
    /// multiplier below 1 (or NaN) is taken as 1; a jitter outside 0..=1 is clamped (NaN is 0).
    pub fn exponential(
        initial: Duration,
        max: Duration,
        multiplier: f64,
        jitter: f64,
    ) -> RetryPolicy {
        let multiplier = if multiplier >= 1.0 { multiplier } else { 1.0 };
        let jitter = if jitter.is_nan() {
            0.0
        } else {
            jitter.clamp(0.0, 1.0)
        };
        RetryPolicy {
            backoff: Backoff::Exponential {
                initial_ms: duration_ms(initial),
                max_ms: duration_ms(max),
                multiplier,
                jitter,
            },
            ..RetryPolicy::fixed(initial)
        }
    }

    /// Drop the event when attempt number `max_attempts` fails (the first attempt counts;
    /// 0 and 1 both mean "never retry").
    pub fn max_attempts(mut self, max_attempts: u32) -> RetryPolicy {
        self.max_attempts = Some(max_attempts);
        self
    }

    /// Drop the event instead of retrying when the retry would fall due more than `max_age`
    /// after the event's first due time.
    pub fn max_age(mut self, max_age: Duration) -> RetryPolicy {
        self.max_age_ms = Some(duration_ms(max_age));
        self
    }

    /// Clamp a requested `retry_after` to at most `max_retry_after` (default 900 s).
    pub fn max_retry_after(mut self, max_retry_after: Duration) -> RetryPolicy {
        self.max_retry_after_ms = duration_ms(max_retry_after);
        self
    }

    /// Decides what follows the failed attempt described by `input`.
    pub fn decide(&self, input: &FailureInput<'_>) -> Decision {
        let attempt = input.attempt.max(1);
        if self.max_attempts_limit().is_some_and(|max| attempt >= max) {
            return Decision::Drop {
                reason: DropReason::Exhausted,
            };
        }
        let context = |retry_reason: RetryReason, retry_data: Vec<u8>| RetryContext {
            retry_count: input
                .previous
                .map_or(0, |c| c.retry_count)
                .saturating_add(1),
            retry_reason,
            retry_data,
        };
        let (delay_ms, context) = match input.failure {
            Failure::RetryRequested(options) => (
                duration_ms(options.retry_after).min(self.max_retry_after_limit_ms()),
                Some(context(options.reason, options.data.clone())),
            ),
            Failure::Platform { reason } => (
                self.backoff_ms(input.event_id, attempt),
                Some(context(*reason, Vec::new())),
            ),
            Failure::Error { .. } => (
                self.backoff_ms(input.event_id, attempt),
                self.error_reason.map(|reason| context(reason, Vec::new())),
            ),
        };
        let Some(next_due_ms) = input.now_ms.checked_add(delay_ms.max(1)) else {
            return Decision::Drop {
                reason: DropReason::MaxAge,
            };
        };
        if self
            .max_age_ms
            .is_some_and(|max_age_ms| next_due_ms > input.first_due_ms.saturating_add(max_age_ms))
        {
            return Decision::Drop {
                reason: DropReason::MaxAge,
            };
        }
        Decision::Retry {
            next_due_ms,
            context,
        }
    }

    /// The backoff delay after failed attempt `attempt` (from 1), before the 1 ms floor.
    fn backoff_ms(&self, event_id: u64, attempt: u32) -> i64 {
        match self.backoff {
            Backoff::Fixed { delay_ms } => delay_ms,
            Backoff::Exponential {
                initial_ms,
                max_ms,
                multiplier,
                jitter,
            } => {
                if initial_ms == 0 {
                    // Zero times an infinite power is NaN; zero it is.
                    return 0;
                }
                let exponent = i32::try_from(attempt - 1).unwrap_or(i32::MAX);
                let base = (initial_ms as f64 * multiplier.powi(exponent)).min(max_ms as f64);
                let shortened = base * (1.0 - jitter * unit_interval(event_id, attempt));
                // `as` saturates (and maps NaN to 0), which is the behaviour wanted here.
                shortened as i64
            }
        }
    }
}

/// A number in `[0, 1)` determined by `(event_id, attempt)` alone (SplitMix64 finaliser).
fn unit_interval(event_id: u64, attempt: u32) -> f64 {
    let mut z = event_id ^ u64::from(attempt).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

/// Whole milliseconds of `duration`, saturating at `i64::MAX`.
fn duration_ms(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const T0: i64 = 1_795_000_000_000;
    const MINUTE_MS: i64 = 60_000;

    fn error() -> Failure {
        Failure::Error {
            message: "boom".into(),
        }
    }

    fn requested(retry_after: Duration, reason: RetryReason, data: &[u8]) -> Failure {
        Failure::RetryRequested(RetryOptions {
            retry_after,
            reason,
            data: data.to_vec(),
        })
    }

    fn decide(
        policy: &RetryPolicy,
        attempt: u32,
        now_ms: i64,
        previous: Option<&RetryContext>,
        failure: &Failure,
    ) -> Decision {
        policy.decide(&FailureInput {
            event_id: 7,
            attempt,
            first_due_ms: T0,
            now_ms,
            previous,
            failure,
        })
    }

    fn next_due(decision: &Decision) -> i64 {
        match decision {
            Decision::Retry { next_due_ms, .. } => *next_due_ms,
            Decision::Drop { reason } => panic!("expected a retry, got a drop ({reason})"),
        }
    }

    #[test]
    fn reasons_have_stable_codes_and_names() {
        let names = [
            "FUNCTION_UPSTREAM_RATE_LIMITED",
            "FUNCTION_RETRY_REQUEST",
            "FUNCTION_TIME_OUT",
            "FUNCTION_OUT_OF_MEMORY",
            "FUNCTION_PLATFORM_RATE_LIMITED",
            "FUNCTION_PLATFORM_UNKNOWN_ERROR",
        ];
        for (i, reason) in RetryReason::ALL.into_iter().enumerate() {
            assert_eq!(usize::from(reason.code()), i + 1);
            assert_eq!(RetryReason::from_code(reason.code()), Some(reason));
            assert_eq!(reason.to_string(), names[i]);
            assert_eq!(names[i].parse::<RetryReason>().unwrap(), reason);
        }
        assert_eq!(RetryReason::from_code(0), None);
        assert_eq!(RetryReason::from_code(7), None);
        let message = "FUNCTION_NAP"
            .parse::<RetryReason>()
            .unwrap_err()
            .to_string();
        assert!(
            message.contains("unknown retry reason \"FUNCTION_NAP\""),
            "{message}"
        );
        for reason in DropReason::ALL {
            assert_eq!(DropReason::from_code(reason.code()), Some(reason));
        }
        assert_eq!(DropReason::from_code(0), None);
    }

    #[test]
    fn ampt_retries_every_six_minutes_for_fourteen_days() {
        let policy = RetryPolicy::default();
        assert_eq!(policy, RetryPolicy::ampt());
        let deadline = T0 + 14 * 24 * 60 * MINUTE_MS;
        let mut now = T0;
        let mut attempt = 1;
        loop {
            match decide(&policy, attempt, now, None, &error()) {
                Decision::Retry {
                    next_due_ms,
                    context,
                } => {
                    assert_eq!(next_due_ms, now + 6 * MINUTE_MS);
                    assert!(next_due_ms <= deadline);
                    assert_eq!(context, None);
                    now = next_due_ms;
                    attempt += 1;
                }
                Decision::Drop { reason } => {
                    assert_eq!(reason, DropReason::MaxAge);
                    break;
                }
            }
        }
        // 14 days of 6-minute steps: the last retry falls due exactly at the 14-day mark.
        assert_eq!(now, deadline);
        assert_eq!(attempt, 1 + 14 * 24 * 10);
    }

    #[test]
    fn ampt_drops_a_retry_that_would_land_past_the_mark() {
        let policy = RetryPolicy::ampt();
        let deadline = T0 + 14 * 24 * 60 * MINUTE_MS;
        let last_ok = deadline - 6 * MINUTE_MS;
        assert_eq!(
            next_due(&decide(&policy, 9, last_ok, None, &error())),
            deadline
        );
        assert_eq!(
            decide(&policy, 9, last_ok + 1, None, &error()),
            Decision::Drop {
                reason: DropReason::MaxAge
            }
        );
        // After a long outage the first retry is already too late.
        assert_eq!(
            decide(&policy, 1, deadline + 1, None, &error()),
            Decision::Drop {
                reason: DropReason::MaxAge
            }
        );
    }

    #[test]
    fn ampt_gives_context_to_requested_and_platform_retries() {
        let policy = RetryPolicy::ampt();
        let timeout = Failure::Platform {
            reason: RetryReason::TimeOut,
        };
        let first = decide(&policy, 1, T0, None, &timeout);
        let Decision::Retry {
            next_due_ms,
            context: Some(context),
        } = first
        else {
            panic!("expected a retry with context, got {first:?}")
        };
        assert_eq!(next_due_ms, T0 + 6 * MINUTE_MS);
        assert_eq!(
            context,
            RetryContext {
                retry_count: 1,
                retry_reason: RetryReason::TimeOut,
                retry_data: vec![]
            }
        );
        let again = requested(Duration::from_secs(5), RetryReason::RetryRequest, b"x");
        let second = decide(&policy, 2, T0, Some(&context), &again);
        assert_eq!(
            second,
            Decision::Retry {
                next_due_ms: T0 + 5_000,
                context: Some(RetryContext {
                    retry_count: 2,
                    retry_reason: RetryReason::RetryRequest,
                    retry_data: b"x".to_vec()
                }),
            }
        );
    }

    #[test]
    fn forge_clamps_retry_after_to_900_seconds() {
        let policy = RetryPolicy::forge();
        let long = requested(
            Duration::from_secs(3600),
            RetryReason::UpstreamRateLimited,
            b"",
        );
        assert_eq!(next_due(&decide(&policy, 1, T0, None, &long)), T0 + 900_000);
        let short = requested(
            Duration::from_secs(30),
            RetryReason::UpstreamRateLimited,
            b"",
        );
        assert_eq!(next_due(&decide(&policy, 1, T0, None, &short)), T0 + 30_000);
        let zero = requested(Duration::ZERO, RetryReason::RetryRequest, b"");
        assert_eq!(next_due(&decide(&policy, 1, T0, None, &zero)), T0 + 1);
        let custom =
            RetryPolicy::fixed(Duration::from_secs(1)).max_retry_after(Duration::from_secs(10));
        assert_eq!(next_due(&decide(&custom, 1, T0, None, &long)), T0 + 10_000);
    }

    #[test]
    fn a_policy_built_from_forge_keeps_its_limits() {
        let policy = RetryPolicy::forge()
            .max_attempts(10)
            .max_retry_after(Duration::from_secs(3600));
        assert!(policy.is_forge());
        assert!(!RetryPolicy::fixed(FORGE_RETRY_DELAY).is_forge());
        let long = requested(Duration::from_secs(3600), RetryReason::RetryRequest, b"");
        assert_eq!(next_due(&decide(&policy, 1, T0, None, &long)), T0 + 900_000);
        assert_eq!(
            decide(&policy, FORGE_MAX_RETRIES + 1, T0, None, &long),
            Decision::Drop {
                reason: DropReason::Exhausted
            }
        );
        // Stricter limits than Forge's stay.
        let fewer = RetryPolicy::forge().max_attempts(2);
        assert!(fewer.is_forge());
        assert!(matches!(
            decide(&fewer, 2, T0, None, &long),
            Decision::Drop { .. }
        ));
    }

    #[test]
    fn forge_allows_four_retries_and_propagates_the_context() {
        let policy = RetryPolicy::forge();
        let mut previous: Option<RetryContext> = None;
        for attempt in 1..=4u32 {
            let data = format!("user-{attempt}").into_bytes();
            let failure = requested(
                Duration::from_secs(10),
                RetryReason::UpstreamRateLimited,
                &data,
            );
            let decision = decide(&policy, attempt, T0, previous.as_ref(), &failure);
            let Decision::Retry {
                next_due_ms,
                context: Some(context),
            } = decision
            else {
                panic!("attempt {attempt}: expected a retry with context, got {decision:?}")
            };
            assert_eq!(next_due_ms, T0 + 10_000);
            assert_eq!(context.retry_count, attempt);
            assert_eq!(context.retry_reason, RetryReason::UpstreamRateLimited);
            assert_eq!(context.retry_data, data);
            previous = Some(context);
        }
        let fifth = requested(Duration::from_secs(10), RetryReason::RetryRequest, b"");
        assert_eq!(
            decide(&policy, 5, T0, previous.as_ref(), &fifth),
            Decision::Drop {
                reason: DropReason::Exhausted
            }
        );
        assert_eq!(
            decide(&policy, 5, T0, previous.as_ref(), &error()),
            Decision::Drop {
                reason: DropReason::Exhausted
            }
        );
    }

    #[test]
    fn forge_retries_platform_failures_and_plain_errors_after_a_minute() {
        let policy = RetryPolicy::forge();
        for (failure, reason) in [
            (
                Failure::Platform {
                    reason: RetryReason::TimeOut,
                },
                RetryReason::TimeOut,
            ),
            (
                Failure::Platform {
                    reason: RetryReason::PlatformUnknownError,
                },
                RetryReason::PlatformUnknownError,
            ),
            (error(), RetryReason::PlatformUnknownError),
        ] {
            assert_eq!(
                decide(&policy, 2, T0, None, &failure),
                Decision::Retry {
                    next_due_ms: T0 + 60_000,
                    context: Some(RetryContext {
                        retry_count: 1,
                        retry_reason: reason,
                        retry_data: vec![]
                    }),
                }
            );
        }
    }

    #[test]
    fn exponential_grows_and_caps() {
        let policy =
            RetryPolicy::exponential(Duration::from_secs(1), Duration::from_secs(30), 2.0, 0.0);
        let delays: Vec<i64> = (1..=8)
            .map(|attempt| next_due(&decide(&policy, attempt, T0, None, &error())) - T0)
            .collect();
        assert_eq!(
            delays,
            [1_000, 2_000, 4_000, 8_000, 16_000, 30_000, 30_000, 30_000]
        );
        assert_eq!(
            next_due(&decide(&policy, u32::MAX, T0, None, &error())) - T0,
            30_000
        );
    }

    #[test]
    fn exponential_respects_max_attempts_and_max_age() {
        let policy =
            RetryPolicy::exponential(Duration::from_secs(60), Duration::from_secs(3600), 3.0, 0.0)
                .max_attempts(10)
                .max_age(Duration::from_secs(600));
        // 60 s, 180 s, 540 s: the third lands 540 s after now.
        assert!(matches!(
            decide(&policy, 2, T0, None, &error()),
            Decision::Retry { .. }
        ));
        assert_eq!(
            decide(&policy, 3, T0 + 61_000, None, &error()),
            Decision::Drop {
                reason: DropReason::MaxAge
            }
        );
        assert_eq!(
            decide(&policy, 10, T0, None, &error()),
            Decision::Drop {
                reason: DropReason::Exhausted
            }
        );
        let never = RetryPolicy::fixed(Duration::from_secs(1)).max_attempts(0);
        assert_eq!(
            decide(&never, 1, T0, None, &error()),
            Decision::Drop {
                reason: DropReason::Exhausted
            }
        );
    }

    #[test]
    fn nonsense_parameters_are_tamed() {
        let policy = RetryPolicy::exponential(
            Duration::from_secs(1),
            Duration::from_secs(8),
            f64::NAN,
            f64::NAN,
        );
        assert_eq!(
            next_due(&decide(&policy, 5, T0, None, &error())) - T0,
            1_000
        );
        let policy =
            RetryPolicy::exponential(Duration::from_secs(1), Duration::from_secs(8), 0.5, 7.0);
        let delay = next_due(&decide(&policy, 5, T0, None, &error())) - T0;
        assert!((1..=1_000).contains(&delay), "{delay}");
        let policy = RetryPolicy::fixed(Duration::ZERO);
        assert_eq!(next_due(&decide(&policy, 1, T0, None, &error())), T0 + 1);
        assert_eq!(
            decide(&policy, 1, i64::MAX, None, &error()),
            Decision::Drop {
                reason: DropReason::MaxAge
            }
        );
        let saturated = RetryContext {
            retry_count: u32::MAX,
            retry_reason: RetryReason::TimeOut,
            retry_data: vec![],
        };
        let timeout = Failure::Platform {
            reason: RetryReason::TimeOut,
        };
        let Decision::Retry {
            context: Some(context),
            ..
        } = decide(&policy, 1, T0, Some(&saturated), &timeout)
        else {
            panic!("expected a retry with context")
        };
        assert_eq!(context.retry_count, u32::MAX);
    }

    fn any_policy() -> impl Strategy<Value = RetryPolicy> {
        let ms = || (0u64..=10 * 86_400_000).prop_map(Duration::from_millis);
        let base = prop_oneof![
            Just(RetryPolicy::ampt()),
            Just(RetryPolicy::forge()),
            ms().prop_map(RetryPolicy::fixed),
            (ms(), ms(), 0.0f64..10.0, 0.0f64..=1.0).prop_map(|(initial, max, mult, jitter)| {
                RetryPolicy::exponential(initial, max, mult, jitter)
            }),
        ];
        (
            base,
            proptest::option::of(0u32..20),
            proptest::option::of(ms()),
            ms(),
        )
            .prop_map(|(policy, attempts, age, clamp)| {
                let policy = policy.max_retry_after(clamp);
                let policy = match attempts {
                    Some(n) => policy.max_attempts(n),
                    None => policy,
                };
                match age {
                    Some(age) => policy.max_age(age),
                    None => policy,
                }
            })
    }

    fn any_failure() -> impl Strategy<Value = Failure> {
        let reason = (1u8..=6).prop_map(|code| RetryReason::from_code(code).unwrap());
        prop_oneof![
            Just(error()),
            reason
                .clone()
                .prop_map(|reason| Failure::Platform { reason }),
            (
                any::<u64>(),
                any::<u32>(),
                reason,
                proptest::collection::vec(any::<u8>(), 0..8)
            )
                .prop_map(|(secs, nanos, reason, data)| {
                    requested(Duration::new(secs, nanos % 1_000_000_000), reason, &data)
                }),
        ]
    }

    proptest! {
        #[test]
        fn decisions_are_sane_and_deterministic(
            policy in any_policy(),
            failure in any_failure(),
            event_id in any::<u64>(),
            attempt in any::<u32>(),
            first_due_ms in any::<i64>(),
            now_ms in prop_oneof![any::<i64>(), T0..T0 + 30 * 86_400_000],
            previous_count in proptest::option::of(any::<u32>()),
        ) {
            let previous = previous_count.map(|retry_count| RetryContext {
                retry_count,
                retry_reason: RetryReason::RetryRequest,
                retry_data: vec![1, 2],
            });
            let input = FailureInput {
                event_id, attempt, first_due_ms, now_ms, previous: previous.as_ref(), failure: &failure,
            };
            let decision = policy.decide(&input);
            prop_assert_eq!(&decision, &policy.decide(&input));
            if let Decision::Retry { next_due_ms, context } = &decision {
                prop_assert!(*next_due_ms > now_ms);
                if let Some(max_age_ms) = policy.max_age_ms {
                    prop_assert!(*next_due_ms <= first_due_ms.saturating_add(max_age_ms));
                }
                if let Some(max) = policy.max_attempts {
                    prop_assert!(attempt.max(1) < max);
                }
                if let Failure::RetryRequested(options) = &failure {
                    prop_assert!(*next_due_ms - now_ms <= policy.max_retry_after_ms.max(1));
                    prop_assert_eq!(context.as_ref().map(|c| &c.retry_data), Some(&options.data));
                }
                if let Some(context) = context {
                    let expected = previous_count.unwrap_or(0).saturating_add(1);
                    prop_assert_eq!(context.retry_count, expected);
                }
            }
            // A drop for age happens only when the retry really would land too late.
            if decision == (Decision::Drop { reason: DropReason::MaxAge }) {
                let unlimited = RetryPolicy { max_age_ms: None, ..policy.clone() };
                match unlimited.decide(&input) {
                    Decision::Retry { next_due_ms, .. } => {
                        let max_age_ms = policy.max_age_ms.unwrap_or(i64::MAX);
                        prop_assert!(next_due_ms > first_due_ms.saturating_add(max_age_ms));
                    }
                    Decision::Drop { reason } => prop_assert_eq!(reason, DropReason::MaxAge),
                }
            }
        }

        #[test]
        fn jitter_stays_within_its_bounds(
            initial_ms in 1u64..100_000,
            max_ms in 1u64..10_000_000,
            multiplier in 1.0f64..4.0,
            jitter in 0.0f64..=1.0,
            event_id in any::<u64>(),
            attempt in 1u32..64,
        ) {
            let policy = RetryPolicy::exponential(
                Duration::from_millis(initial_ms), Duration::from_millis(max_ms), multiplier, jitter,
            );
            let base = (initial_ms as f64 * multiplier.powi(attempt as i32 - 1)).min(max_ms as f64);
            let failure = error();
            let input = FailureInput {
                event_id, attempt, first_due_ms: T0, now_ms: T0, previous: None, failure: &failure,
            };
            let delay = next_due(&policy.decide(&input)) - T0;
            prop_assert!(delay as f64 <= base.max(1.0));
            prop_assert!(delay as f64 >= (base * (1.0 - jitter)).floor().max(1.0) - 1.0);
        }
    }

    #[test]
    fn jitter_spreads_events_apart() {
        let policy =
            RetryPolicy::exponential(Duration::from_secs(60), Duration::from_secs(60), 2.0, 0.5);
        let delays: std::collections::BTreeSet<i64> = (0..100u64)
            .map(|event_id| {
                let failure = error();
                let input = FailureInput {
                    event_id,
                    attempt: 3,
                    first_due_ms: T0,
                    now_ms: T0,
                    previous: None,
                    failure: &failure,
                };
                next_due(&policy.decide(&input)) - T0
            })
            .collect();
        assert!(delays.len() > 90, "only {} distinct delays", delays.len());
        assert!(delays.iter().all(|d| (30_000..=60_000).contains(d)));
    }
}
