//! Timestamps as microseconds since the Unix epoch, so a time range is a comparison of integers
//! whatever offset or fraction digits a record's `started_at` was written with.
//!
//! [`unix_micros`] reads RFC 3339 (`2026-11-25T16:10:40.186123Z`, `…+01:00`) and, for what people
//! type into a filter, the shorter forms `2026-11-25`, `2026-11-25T16:10` and `2026-11-25 16:10:40`:
//! a time without an offset is UTC.

/// Microseconds since 1970-01-01T00:00:00Z of `s`, or `None` when it is not a timestamp.
pub fn unix_micros(s: &str) -> Option<i64> {
    let b = s.trim().as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let d = b.get(r)?;
        if d.is_empty() || !d.iter().all(u8::is_ascii_digit) {
            return None;
        }
        std::str::from_utf8(d).ok()?.parse().ok()
    };
    let at = |i: usize, set: &[u8]| b.get(i).is_some_and(|c| set.contains(c));
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    if !(at(4, b"-") && at(7, b"-") && (1..=12).contains(&month)) {
        return None;
    }
    if day < 1 || day > days_in_month(year, month) {
        return None;
    }
    let mut micros = days_from_civil(year, month, day) * 86_400_000_000;
    if b.len() == 10 {
        return Some(micros);
    }
    if !at(10, b"Tt ") || !at(13, b":") {
        return None;
    }
    let (hour, minute) = (num(11..13)?, num(14..16)?);
    if hour > 23 || minute > 59 {
        return None;
    }
    micros += (hour * 3600 + minute * 60) * 1_000_000;
    let mut i = 16;
    if at(i, b":") {
        let second = num(17..19)?;
        if second > 60 {
            return None;
        }
        micros += second * 1_000_000;
        i = 19;
        if at(i, b".") {
            i += 1;
            let start = i;
            while b.get(i).is_some_and(u8::is_ascii_digit) {
                i += 1;
            }
            let frac = b.get(start..i)?;
            if frac.is_empty() {
                return None;
            }
            // Microseconds: the first six digits, padded; finer digits are dropped.
            let mut us = 0i64;
            for k in 0..6 {
                us = us * 10 + frac.get(k).map_or(0, |d| i64::from(d - b'0'));
            }
            micros += us;
        }
    }
    match b.get(i) {
        None => Some(micros),
        Some(b'Z' | b'z') if i + 1 == b.len() => Some(micros),
        Some(sign @ (b'+' | b'-')) if at(i + 3, b":") && i + 6 == b.len() => {
            let (oh, om) = (num(i + 1..i + 3)?, num(i + 4..i + 6)?);
            if oh > 23 || om > 59 {
                return None;
            }
            let offset = (oh * 3600 + om * 60) * 1_000_000;
            Some(if *sign == b'+' {
                micros - offset
            } else {
                micros + offset
            })
        }
        _ => None,
    }
}

fn is_leap(year: i64) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days from 1970-01-01 to the given civil date (proleptic Gregorian; Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_timestamps_become_epoch_microseconds() {
        assert_eq!(unix_micros("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(unix_micros("1970-01-01"), Some(0));
        assert_eq!(
            unix_micros("2026-11-25T16:10:40.186123Z"),
            Some(1_795_623_040_186_123)
        );
        assert_eq!(
            unix_micros("2026-11-25T17:10:40.186123+01:00"),
            unix_micros("2026-11-25T16:10:40.186123Z")
        );
        assert_eq!(
            unix_micros("2026-11-25t16:10:40.1z"),
            Some(1_795_623_040_100_000)
        );
        // Finer than microseconds is dropped, never rounded into the next second.
        assert_eq!(
            unix_micros("2026-11-25T16:10:40.9999999Z"),
            Some(1_795_623_040_999_999)
        );
        assert_eq!(unix_micros("2026-11-25T16:10"), Some(1_795_623_000_000_000));
        assert_eq!(unix_micros("2000-02-29"), Some(951_782_400_000_000));
        assert_eq!(unix_micros("1969-12-31T23:59:59Z"), Some(-1_000_000));
    }

    #[test]
    fn anything_else_is_refused() {
        for bad in [
            "",
            "yesterday",
            "2026-13-01",
            "2026-02-30",
            "2025-02-29",
            "2026-11-25T24:00",
            "2026-11-25T16:10:40.Z",
            "2026-11-25T16:10:40+0100",
            "2026-11-25T16:10:40Zjunk",
            "2026-11-25T16",
            "20261125",
        ] {
            assert_eq!(unix_micros(bad), None, "{bad}");
        }
    }
}
