//! Presence: the status an owner chooses, and what others are shown.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Longest status text, in Unicode scalar values (Rust `char`s), so at most
/// 512 bytes of UTF-8.
pub const MAX_STATUS_TEXT: usize = 128;

/// The status an online user chooses. Signed in their registration record.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Available.
    #[default]
    Online,
    /// Away from the keyboard.
    Away,
    /// Do not disturb.
    Busy,
    /// Appear offline to everyone; contacts named in the registration can
    /// still deliver messages.
    Invisible,
}

/// What a viewer is shown about a name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Presence {
    /// Online and available.
    Online,
    /// Online, away.
    Away,
    /// Online, busy.
    Busy,
    /// Not online (or invisible).
    Offline,
}

impl Presence {
    /// Whether the name is shown as online in any way.
    pub fn is_online(self) -> bool {
        self != Presence::Offline
    }
}

impl From<Status> for Presence {
    fn from(status: Status) -> Self {
        match status {
            Status::Online => Presence::Online,
            Status::Away => Presence::Away,
            Status::Busy => Presence::Busy,
            Status::Invisible => Presence::Offline,
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Status::Online => "online",
            Status::Away => "away",
            Status::Busy => "busy",
            Status::Invisible => "invisible",
        })
    }
}

impl fmt::Display for Presence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Presence::Online => "online",
            Presence::Away => "away",
            Presence::Busy => "busy",
            Presence::Offline => "offline",
        })
    }
}

/// Why a status could not be set.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StatusError {
    /// Not one of the statuses.
    #[error("unknown status {0:?}; a status is one of: online, away, busy, invisible")]
    Unknown(String),
    /// The text is too long.
    #[error("the status text is {0} characters long; at most {MAX_STATUS_TEXT} are allowed")]
    TextTooLong(usize),
    /// The text holds a control character (a line break, say), which
    /// would break the one-line display every client gives it.
    #[error(
        "the status text contains a control character (U+{0:04X}); it must be one line of printable text"
    )]
    ControlCharacter(u32),
}

impl FromStr for Status {
    type Err = StatusError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "online" => Ok(Status::Online),
            "away" => Ok(Status::Away),
            "busy" => Ok(Status::Busy),
            "invisible" => Ok(Status::Invisible),
            _ => Err(StatusError::Unknown(s.chars().take(32).collect())),
        }
    }
}

/// Checks a status text: at most [`MAX_STATUS_TEXT`] scalar values, none
/// of them a control character (Unicode category Cc).
pub fn check_status_text(text: &str) -> Result<(), StatusError> {
    let n = text.chars().count();
    if n > MAX_STATUS_TEXT {
        return Err(StatusError::TextTooLong(n));
    }
    if let Some(c) = text.chars().find(|c| c.is_control()) {
        return Err(StatusError::ControlCharacter(u32::from(c)));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_show() {
        for s in ["online", "away", "busy", "invisible"] {
            assert_eq!(s.parse::<Status>().unwrap().to_string(), s);
        }
        assert!("gone".parse::<Status>().is_err());
        assert_eq!(Presence::from(Status::Invisible), Presence::Offline);
        assert!(check_status_text(&"é".repeat(128)).is_ok());
        assert_eq!(
            check_status_text(&"x".repeat(129)),
            Err(StatusError::TextTooLong(129))
        );
        // The unit is the scalar value: 128 four-byte characters fit.
        assert!(check_status_text(&"\u{1F600}".repeat(128)).is_ok());
        assert_eq!(
            check_status_text("two\nlines"),
            Err(StatusError::ControlCharacter(0x0a))
        );
    }
}
