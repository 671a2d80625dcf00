//! Human-readable durations (`"250ms"`, `"30s"`, `"5m"`) and sizes (`"64KiB"`,
//! `"1MiB"`) as they appear in the configuration.
//!
//! Both round-trip: `--check-config` prints the effective configuration in the
//! same notation an operator would write.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A duration written as a string with a unit, such as `"250ms"` or `"5m"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Dur(pub Duration);

impl Dur {
    /// A duration of whole seconds, for defaults.
    pub const fn secs(s: u64) -> Self {
        Dur(Duration::from_secs(s))
    }

    /// A duration of whole milliseconds, for defaults.
    pub const fn millis(ms: u64) -> Self {
        Dur(Duration::from_millis(ms))
    }
}

/// The longest duration any setting accepts. Far beyond any sensible
/// timeout, and far enough from `Instant`'s range that adding a few of them
/// to the current time can never overflow (which would panic).
pub const MAX_DURATION: Duration = Duration::from_secs(366 * 24 * 3600);

/// The largest size any setting accepts, for the same reason: sizes are
/// added and doubled, and must never overflow.
pub const MAX_SIZE: u64 = 1 << 40;

impl FromStr for Dur {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        // humantime wants a unit even for zero; "0" alone is unambiguous.
        if s == "0" {
            return Ok(Dur(Duration::ZERO));
        }
        let d = humantime::parse_duration(s)
            .map_err(|e| format!("invalid duration {s:?} ({e}); write it like \"250ms\", \"30s\" or \"5m\""))?;
        if d > MAX_DURATION {
            return Err(format!("duration {s:?} is too long: at most {}", Dur(MAX_DURATION)));
        }
        Ok(Dur(d))
    }
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_zero() {
            return f.write_str("0s");
        }
        // humantime prints "1m 30s"; join the parts so the output parses back.
        let text = humantime::format_duration(self.0).to_string();
        f.write_str(&text.replace(' ', ""))
    }
}

/// A byte count written as a string with a binary unit, such as `"64KiB"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Size(pub u64);

const SIZE_UNITS: [(&str, u64); 5] = [("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10), ("B", 1), ("", 1)];

impl FromStr for Size {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let text = s.trim();
        let invalid = || format!("invalid size {s:?}; write it like \"64KiB\", \"1MiB\" or \"512B\"");
        let (number, unit) = SIZE_UNITS
            .iter()
            .find_map(|(suffix, unit)| text.strip_suffix(suffix).map(|n| (n.trim(), *unit)))
            .ok_or_else(invalid)?;
        let number: u64 = number.parse().map_err(|_| invalid())?;
        let bytes = number.checked_mul(unit).ok_or_else(invalid)?;
        if bytes > MAX_SIZE {
            return Err(format!("size {s:?} is too large: at most {}", Size(MAX_SIZE)));
        }
        Ok(Size(bytes))
    }
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (suffix, unit) =
            SIZE_UNITS.iter().find(|(_, unit)| self.0 >= *unit && self.0 % unit == 0).copied().unwrap_or(("B", 1));
        let suffix = if suffix.is_empty() { "B" } else { suffix };
        write!(f, "{}{suffix}", self.0 / unit)
    }
}

/// What a duration or size may be written as before parsing.
#[derive(Deserialize)]
#[serde(untagged)]
enum Unit {
    Text(String),
    Number(u64),
}

macro_rules! serde_via_string {
    ($ty:ty) => {
        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_str(self)
            }
        }

        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                // A bare number (say `5` from an environment variable) is
                // parsed like the string "5", whose error asks for a unit.
                match Unit::deserialize(deserializer)? {
                    Unit::Text(text) => text.parse(),
                    Unit::Number(n) => n.to_string().parse(),
                }
                .map_err(serde::de::Error::custom)
            }
        }
    };
}

serde_via_string!(Dur);
serde_via_string!(Size);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_and_print_back() {
        for (text, ms) in [("250ms", 250), ("30s", 30_000), ("5m", 300_000), ("0", 0)] {
            let d: Dur = text.parse().unwrap();
            assert_eq!(d.0, Duration::from_millis(ms), "{text}");
            assert_eq!(d.to_string().parse::<Dur>().unwrap(), d);
        }
        assert_eq!(Dur::secs(90).to_string(), "1m30s");
        assert!("5".parse::<Dur>().is_err());
        assert!("367days".parse::<Dur>().is_err());
        assert!("18446744073709551615s".parse::<Dur>().is_err());
        assert_eq!("366days".parse::<Dur>().unwrap().0, MAX_DURATION);
        assert!("soon".parse::<Dur>().is_err());
    }

    #[test]
    fn sizes_parse_and_print_back() {
        for (text, bytes) in [("64KiB", 65_536), ("1MiB", 1 << 20), ("512B", 512), ("7", 7), ("1 GiB", 1 << 30)] {
            let s: Size = text.parse().unwrap();
            assert_eq!(s.0, bytes, "{text}");
            assert_eq!(s.to_string().parse::<Size>().unwrap(), s);
        }
        assert_eq!(Size(1 << 20).to_string(), "1MiB");
        assert_eq!(Size(1000).to_string(), "1000B");
        for bad in ["", "KiB", "-1KiB", "1.5MiB", "1MB", "99999999999999999999GiB", "1025GiB"] {
            assert!(bad.parse::<Size>().is_err(), "{bad}");
        }
    }
}
