//! Showing wire timestamps to people.

use jiff::Timestamp;
use jiff::tz::TimeZone;

/// `HH:MM:SS` in the local time zone.
pub fn clock(ms: u64) -> String {
    match Timestamp::from_millisecond(ms as i64) {
        Ok(ts) => ts
            .to_zoned(TimeZone::system())
            .strftime("%H:%M:%S")
            .to_string(),
        Err(_) => "??:??:??".into(),
    }
}

/// `YYYY-MM-DD HH:MM:SS` in the local time zone.
pub fn date_clock(ms: u64) -> String {
    match Timestamp::from_millisecond(ms as i64) {
        Ok(ts) => ts
            .to_zoned(TimeZone::system())
            .strftime("%Y-%m-%d %H:%M:%S")
            .to_string(),
        Err(_) => "????-??-?? ??:??:??".into(),
    }
}

/// RFC 3339 in UTC, for JSON output.
pub fn rfc3339(ms: u64) -> String {
    match Timestamp::from_millisecond(ms as i64) {
        Ok(ts) => ts.to_string(),
        Err(_) => String::new(),
    }
}

/// "2026-11-26 07:10:03 (5 min ago)" in local time.
pub fn describe(ms: u64) -> String {
    let Ok(ts) = Timestamp::from_millisecond(ms as i64) else {
        return "at an unknown time".into();
    };
    let local = ts
        .to_zoned(TimeZone::system())
        .strftime("%Y-%m-%d %H:%M:%S");
    let ago = messenger_proto::time::now_ms().saturating_sub(ms) / 1000;
    let ago = match ago {
        0..=59 => format!("{ago} s ago"),
        60..=3599 => format!("{} min ago", ago / 60),
        3600..=86_399 => format!("{} h ago", ago / 3600),
        _ => format!("{} days ago", ago / 86_400),
    };
    format!("{local} ({ago})")
}

/// "5 min ago", "3 h ago", "2 days ago": how long before now.
pub fn ago(ms: u64) -> String {
    let ago = messenger_proto::time::now_ms().saturating_sub(ms) / 1000;
    match ago {
        0..=59 => "just now".into(),
        60..=3599 => format!("{} min ago", ago / 60),
        3600..=86_399 => format!("{} h ago", ago / 3600),
        _ => format!("{} days ago", ago / 86_400),
    }
}
