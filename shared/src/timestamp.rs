//! Dates as Prisma writes them.
//!
//! Prisma's SQLite driver adapters store `DateTime` columns as UTC text such as
//! `2026-01-31T09:15:00.123+00:00`; its older native engine stored integer
//! milliseconds since the Unix epoch. We write the first and read both. SQLite
//! compares these values as text or numbers rather than as dates, so nothing orders
//! by them: order comes from integer sequences.

use chrono::{DateTime, SecondsFormat, TimeZone, Utc};

/// The current time in Prisma's text format.
pub fn now() -> String {
    format(Utc::now())
}

/// The current time as integer milliseconds since the Unix epoch, for columns that
/// are compared as numbers (queue positions, leases, hand-off times).
pub fn now_millis() -> i64 {
    Utc::now().timestamp_millis()
}

/// Formats an instant as `YYYY-MM-DDTHH:MM:SS.sss+00:00`.
pub fn format(at: DateTime<Utc>) -> String {
    // `use_z = false` gives the `+00:00` offset Prisma writes, not `Z`.
    at.to_rfc3339_opts(SecondsFormat::Millis, false)
}

/// Reads a stored `DateTime` value: RFC 3339 text, SQLite's own
/// `YYYY-MM-DD HH:MM:SS` (what `CURRENT_TIMESTAMP` defaults produce), or integer
/// milliseconds since the epoch.
pub fn parse(value: &libsql::Value) -> Option<DateTime<Utc>> {
    match value {
        libsql::Value::Integer(ms) => Utc.timestamp_millis_opt(*ms).single(),
        libsql::Value::Real(ms) => Utc.timestamp_millis_opt(*ms as i64).single(),
        libsql::Value::Text(text) => parse_text(text),
        _ => None,
    }
}

fn parse_text(text: &str) -> Option<DateTime<Utc>> {
    if let Ok(at) = DateTime::parse_from_rfc3339(text) {
        return Some(at.with_timezone(&Utc));
    }
    chrono::NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f")
        .ok()
        .map(|naive| naive.and_utc())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_like_prisma_driver_adapters() {
        let at = Utc.with_ymd_and_hms(2026, 1, 31, 9, 15, 0).unwrap()
            + chrono::Duration::milliseconds(123);
        assert_eq!(format(at), "2026-01-31T09:15:00.123+00:00");
        let whole = Utc.with_ymd_and_hms(2026, 1, 31, 9, 15, 0).unwrap();
        assert_eq!(format(whole), "2026-01-31T09:15:00.000+00:00");
    }

    #[test]
    fn reads_text_integer_milliseconds_and_sqlite_defaults() {
        let expected = Utc.with_ymd_and_hms(2026, 1, 31, 9, 15, 0).unwrap()
            + chrono::Duration::milliseconds(123);
        let text = libsql::Value::Text("2026-01-31T09:15:00.123+00:00".into());
        assert_eq!(parse(&text), Some(expected));
        let zulu = libsql::Value::Text("2026-01-31T09:15:00.123Z".into());
        assert_eq!(parse(&zulu), Some(expected));
        let millis = libsql::Value::Integer(expected.timestamp_millis());
        assert_eq!(parse(&millis), Some(expected));
        let sqlite = libsql::Value::Text("2026-01-31 09:15:00".into());
        assert_eq!(
            parse(&sqlite),
            Some(expected - chrono::Duration::milliseconds(123))
        );
        assert_eq!(parse(&libsql::Value::Text("yesterday".into())), None);
        assert_eq!(parse(&libsql::Value::Null), None);
    }
}
