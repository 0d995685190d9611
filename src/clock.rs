//! Wall-clock instants as the host gives them (nanoseconds since the Unix epoch), written as RFC 3339.

use crate::json::digits;

/// An instant in nanoseconds since the epoch that displays as `YYYY-MM-DDTHH:MM:SS.ffffffZ`
/// (microsecond precision, UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rfc3339(pub u64);

impl Rfc3339 {
    /// Appends the instant (27 bytes, no quotes).
    pub fn write_to(&self, out: &mut Vec<u8>) {
        let micros = self.0 / 1_000;
        let secs = micros / 1_000_000;
        let frac = micros % 1_000_000;
        let days = (secs / 86_400) as i64;
        let rem = secs % 86_400;
        let (y, m, d) = civil_from_days(days);
        let (hh, mm, ss) = (rem / 3600, (rem / 60) % 60, rem % 60);
        // Years past 9999 cannot come from a u64 of nanoseconds (that ends in 2554).
        digits(out, y.unsigned_abs(), 4);
        for (sep, value, width) in [
            (b'-', u64::from(m), 2),
            (b'-', u64::from(d), 2),
            (b'T', hh, 2),
            (b':', mm, 2),
            (b':', ss, 2),
            (b'.', frac, 6),
        ] {
            out.push(sep);
            digits(out, value, width);
        }
        out.push(b'Z');
    }
}

/// Howard Hinnant's days-to-civil: proleptic Gregorian date of a day count since 1970-01-01.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn rfc3339(ns: u64) -> String {
        let mut out = Vec::new();
        Rfc3339(ns).write_to(&mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn known_instants() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(
            rfc3339(1_795_623_040_186_123_456),
            "2026-11-25T16:10:40.186123Z"
        );
        // A leap day.
        assert_eq!(
            rfc3339(951_782_400_000_000_000),
            "2000-02-29T00:00:00.000000Z"
        );
    }

    proptest! {
        #[test]
        fn agrees_with_the_days_arithmetic_of_a_reference(days in 0i64..200_000) {
            // Round-trip against the inverse (days-from-civil) computed independently.
            let (y, m, d) = civil_from_days(days);
            let y2 = if m <= 2 { y - 1 } else { y };
            let era = y2.div_euclid(400);
            let yoe = y2 - era * 400;
            let mp = if m > 2 { m - 3 } else { m + 9 } as i64;
            let doy = (153 * mp + 2) / 5 + d as i64 - 1;
            let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
            prop_assert_eq!(era * 146_097 + doe - 719_468, days);
            prop_assert!((1..=12).contains(&m) && (1..=31).contains(&d));
        }
    }
}
