//! Screen names: case-insensitive for people, lowercase on the wire.
//!
//! People type names in any case ([`ScreenName::parse`] normalises them);
//! everything that travels or is signed carries the normal form, and a
//! decoder refuses anything else ([`ScreenName::parse_normal`]), so that a
//! signed record or message names exactly one string.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The rule, stated once so every error message says the same thing.
pub const NAME_RULE: &str = "a screen name is 3-32 characters of a-z, 0-9, '.', '_' or '-', starting with a letter (case-insensitive)";

/// Shortest allowed name, in characters.
pub const MIN_LEN: usize = 3;
/// Longest allowed name, in characters.
pub const MAX_LEN: usize = 32;

/// A validated, normalised (lowercase) screen name.
///
/// Deserialising accepts only the normal form: see [`ScreenName::parse_normal`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ScreenName(String);

/// Why a string is not a screen name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid screen name {input:?}: {problem}; {NAME_RULE}")]
pub struct NameError {
    /// What was given (truncated for display).
    pub input: String,
    /// What is wrong with it.
    pub problem: &'static str,
}

impl ScreenName {
    /// Validates `input` and returns its normalised form.
    pub fn parse(input: &str) -> Result<Self, NameError> {
        let fail = |problem| NameError {
            input: input.chars().take(64).collect(),
            problem,
        };
        let lower = input.to_ascii_lowercase();
        let len = lower.chars().count();
        if len < MIN_LEN {
            return Err(fail("too short"));
        }
        if len > MAX_LEN {
            return Err(fail("too long"));
        }
        if !lower.starts_with(|c: char| c.is_ascii_lowercase()) {
            return Err(fail("does not start with a letter"));
        }
        if !lower
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-'))
        {
            return Err(fail("contains a character that is not allowed"));
        }
        Ok(Self(lower))
    }

    /// Validates a name that must already be in normal form (lowercase), as
    /// every name on the wire is: `"Alice"` is refused here, not lowered.
    pub fn parse_normal(input: &str) -> Result<Self, NameError> {
        let name = Self::parse(input)?;
        if name.0 != input {
            return Err(NameError {
                input: input.chars().take(64).collect(),
                problem: "is not in normal form (names on the wire are lowercase)",
            });
        }
        Ok(name)
    }

    /// The normalised name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ScreenName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for ScreenName {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// Decoding (from the wire or from disk) takes the normal form only.
impl TryFrom<String> for ScreenName {
    type Error = NameError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse_normal(&s)
    }
}

impl From<ScreenName> for String {
    fn from(n: ScreenName) -> String {
        n.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accepts_and_lowercases() {
        assert_eq!(ScreenName::parse("Alice").unwrap().as_str(), "alice");
        assert_eq!(
            ScreenName::parse("b0b.x_y-z").unwrap().as_str(),
            "b0b.x_y-z"
        );
        assert_eq!(ScreenName::parse("abc").unwrap().as_str(), "abc");
        let max = "a".repeat(MAX_LEN);
        assert_eq!(ScreenName::parse(&max).unwrap().as_str(), max);
    }

    #[test]
    fn rejects_with_the_rule() {
        for (bad, problem) in [
            ("ab", "too short"),
            ("", "too short"),
            (&"a".repeat(MAX_LEN + 1), "too long"),
            ("1abc", "does not start with a letter"),
            ("_abc", "does not start with a letter"),
            ("ab c", "contains a character that is not allowed"),
            ("abç", "contains a character that is not allowed"),
            ("ab/c", "contains a character that is not allowed"),
        ] {
            let err = ScreenName::parse(bad).unwrap_err();
            assert_eq!(err.problem, problem, "{bad:?}");
            assert!(err.to_string().contains(NAME_RULE));
        }
    }

    #[test]
    fn deserialising_validates_and_takes_only_the_normal_form() {
        let bad: Result<ScreenName, _> = serde_json::from_str("\"9lives\"");
        assert!(bad.is_err());
        let upper: Result<ScreenName, _> = serde_json::from_str("\"Alice\"");
        assert!(upper.unwrap_err().to_string().contains("normal form"));
        let ok: ScreenName = serde_json::from_str("\"alice\"").unwrap();
        assert_eq!(ok.as_str(), "alice");
        assert!(ScreenName::parse_normal("ALICE").is_err());
        assert!(ScreenName::parse("ALICE").is_ok());
    }

    proptest! {
        #[test]
        fn parse_is_idempotent_and_case_insensitive(s in "[a-zA-Z][a-zA-Z0-9._-]{2,31}") {
            let n = ScreenName::parse(&s).unwrap();
            prop_assert_eq!(n.as_str(), s.to_ascii_lowercase());
            prop_assert_eq!(ScreenName::parse(n.as_str()).unwrap(), n.clone());
            prop_assert_eq!(ScreenName::parse(&s.to_ascii_uppercase()).unwrap(), n);
        }

        #[test]
        fn anything_accepted_obeys_the_rule(s in "\\PC{0,40}") {
            if let Ok(n) = ScreenName::parse(&s) {
                let n = n.as_str();
                prop_assert!((MIN_LEN..=MAX_LEN).contains(&n.len()));
                prop_assert!(n.starts_with(|c: char| c.is_ascii_lowercase()));
                prop_assert!(n.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b)));
            }
        }
    }
}
