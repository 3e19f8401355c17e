//! The keyset cursor of the admin's paged tables: where the previous page ended.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use uuid::Uuid;

/// The sort key and id of a page's last row (a session's, or an audit entry's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    pub key: DateTime<Utc>,
    pub id: Uuid,
}

impl Cursor {
    pub fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(format!("{}|{}", self.key.timestamp_micros(), self.id))
    }

    /// `None` for anything that is not a cursor this module made.
    pub fn decode(s: &str) -> Option<Cursor> {
        let raw = String::from_utf8(URL_SAFE_NO_PAD.decode(s.as_bytes()).ok()?).ok()?;
        let (micros, id) = raw.split_once('|')?;
        Some(Cursor {
            key: DateTime::from_timestamp_micros(micros.parse().ok()?)?,
            id: Uuid::parse_str(id).ok()?,
        })
    }

    /// Cuts `rows` (fetched with `limit + 1`) to `limit` and returns the cursor of the last
    /// row kept when there were more.
    pub fn page<T>(rows: &mut Vec<T>, limit: i64, of: impl Fn(&T) -> Cursor) -> Option<Cursor> {
        if rows.len() as i64 > limit {
            rows.truncate(limit as usize);
            rows.last().map(of)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_reject_garbage() {
        let cursor = Cursor {
            key: DateTime::from_timestamp_micros(1_764_000_000_123_456).unwrap(),
            id: Uuid::now_v7(),
        };
        assert_eq!(Cursor::decode(&cursor.encode()), Some(cursor));
        for bad in [
            "",
            "!!!",
            "bm90LWEtY3Vyc29y",
            &URL_SAFE_NO_PAD.encode("1|nope"),
        ] {
            assert_eq!(Cursor::decode(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_page_is_cut_at_its_limit_with_a_cursor_only_when_more_follow() {
        let row = |i: i64| Cursor {
            key: DateTime::from_timestamp_micros(i).unwrap(),
            id: Uuid::nil(),
        };
        let mut rows: Vec<Cursor> = (0..4).map(row).collect();
        assert_eq!(Cursor::page(&mut rows, 3, |c| *c), Some(row(2)));
        assert_eq!(rows.len(), 3);
        assert_eq!(Cursor::page(&mut rows, 3, |c| *c), None);
    }
}
