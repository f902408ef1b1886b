//! [`Timestamp`]: the one form a point in time takes on every Wrenn wire (the public API, the
//! host agent's API, the agent's records): RFC 3339 in UTC with milliseconds and a `Z`, such as
//! `2026-12-01T13:59:10.123Z`. Reading accepts any RFC 3339 offset.

use chrono::{DateTime, SecondsFormat, SubsecRound, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;

/// A point in time, to the millisecond, written as RFC 3339 UTC (`…T13:59:10.123Z`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(DateTime<Utc>);

impl Timestamp {
    /// The current time.
    pub fn now() -> Self {
        Utc::now().into()
    }

    /// The time as a chrono value.
    pub fn datetime(self) -> DateTime<Utc> {
        self.0
    }
}

impl From<DateTime<Utc>> for Timestamp {
    /// Drops what is below the millisecond, so a value reads back equal to itself.
    fn from(t: DateTime<Utc>) -> Self {
        Self(t.trunc_subsecs(3))
    }
}

impl From<Timestamp> for DateTime<Utc> {
    fn from(t: Timestamp) -> Self {
        t.0
    }
}

impl fmt::Display for Timestamp {
    /// The wire form.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.to_rfc3339_opts(SecondsFormat::Millis, true))
    }
}

/// Text that is not an RFC 3339 time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimestampError(String);

impl fmt::Display for TimestampError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "not an RFC 3339 time: {:?}", self.0)
    }
}

impl std::error::Error for TimestampError {}

impl FromStr for Timestamp {
    type Err = TimestampError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        DateTime::parse_from_rfc3339(s)
            .map(|t| t.with_timezone(&Utc).into())
            .map_err(|_| TimestampError(s.to_string()))
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_form_is_utc_with_milliseconds() {
        let t: Timestamp = "2026-12-01T14:59:10.123456+01:00".parse().unwrap();
        assert_eq!(t.to_string(), "2026-12-01T13:59:10.123Z");
        let json = serde_json::to_string(&t).unwrap();
        assert_eq!(json, r#""2026-12-01T13:59:10.123Z""#);
        assert_eq!(serde_json::from_str::<Timestamp>(&json).unwrap(), t);
        let whole: Timestamp = "2026-12-01T13:59:10Z".parse().unwrap();
        assert_eq!(whole.to_string(), "2026-12-01T13:59:10.000Z");
        assert!("yesterday".parse::<Timestamp>().is_err());
    }

    #[test]
    fn now_reads_back_equal() {
        let t = Timestamp::now();
        assert_eq!(t.to_string().parse::<Timestamp>().unwrap(), t);
    }
}
