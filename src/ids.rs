//! Identifiers of events and jobs.
//!
//! Both are allocated by the engine from counters that continue across restarts (recovery
//! resumes after the largest id found in the log), so an id is never reused in one data
//! directory. Zero is never a valid id: on disk it means "none".

use std::fmt;
use std::str::FromStr;

/// The identifier of one published event. Displayed as `ev-<number>`; serialized as the
/// number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct EventId(pub u64);

/// The identifier of a job: the events of one `push`. Displayed as `job-<number>`;
/// serialized as the number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct JobId(pub u64);

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ev-{}", self.0)
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "job-{}", self.0)
    }
}

fn parse_id(s: &str, prefix: &str, what: &str) -> Result<u64, crate::Error> {
    let digits = s.trim().strip_prefix(prefix).unwrap_or(s.trim());
    match digits.parse::<u64>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(crate::Error::invalid(format!(
            "{what} {s:?} is not valid: expected {prefix}<number> or a number greater than zero"
        ))),
    }
}

impl FromStr for EventId {
    type Err = crate::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_id(s, "ev-", "event id").map(EventId)
    }
}

impl FromStr for JobId {
    type Err = crate::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_id(s, "job-", "job id").map(JobId)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_parses_back() {
        assert_eq!("ev-42".parse::<EventId>().unwrap(), EventId(42));
        assert_eq!(
            EventId(42).to_string().parse::<EventId>().unwrap(),
            EventId(42)
        );
        assert_eq!("7".parse::<JobId>().unwrap(), JobId(7));
        assert!("ev-0".parse::<EventId>().is_err());
        assert!("job-x".parse::<JobId>().is_err());
    }
}
