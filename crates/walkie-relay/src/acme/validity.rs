//! When a certificate is valid (X.509 `notBefore`, `notAfter`) and when it is due for
//! renewal: read from the DER with a walker that knows just the path to the validity
//! (Certificate -> TBSCertificate -> version?, serial, signature, issuer, validity), so the
//! relay needs no ASN.1 crate (x509-parser would add about twenty crates to its tree). Any
//! input that is not such a certificate gives `None`, never a panic.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A certificate's validity period.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Validity {
    /// Not valid before this.
    pub not_before: SystemTime,
    /// Not valid after this.
    pub not_after: SystemTime,
}

impl Validity {
    /// The validity of a DER certificate, if it parses.
    pub(crate) fn of(cert_der: &[u8]) -> Option<Validity> {
        let (tag, cert, _) = header(cert_der)?;
        if tag != SEQUENCE {
            return None;
        }
        let (tag, mut tbs, _) = header(cert)?;
        if tag != SEQUENCE {
            return None;
        }
        // The optional explicit [0] version.
        let (tag, _, rest) = header(tbs)?;
        if tag == VERSION {
            tbs = rest;
        }
        // serialNumber, signature, issuer.
        for want in [INTEGER, SEQUENCE, SEQUENCE] {
            let (tag, _, rest) = header(tbs)?;
            if tag != want {
                return None;
            }
            tbs = rest;
        }
        let (tag, validity, _) = header(tbs)?;
        if tag != SEQUENCE {
            return None;
        }
        let (tag, not_before, rest) = header(validity)?;
        let not_before = time(tag, not_before)?;
        let (tag, not_after, _) = header(rest)?;
        let not_after = time(tag, not_after)?;
        (not_after > not_before).then_some(Validity {
            not_before,
            not_after,
        })
    }

    /// The whole period.
    pub(crate) fn lifetime(&self) -> Duration {
        self.not_after
            .duration_since(self.not_before)
            .unwrap_or(Duration::ZERO)
    }

    /// When two thirds of the lifetime have passed: a renewal is due from then (30 days
    /// before the end of a 90-day Let's Encrypt certificate, like certbot's default).
    pub(crate) fn renew_at(&self) -> SystemTime {
        self.not_before
            .checked_add(self.lifetime() / 3 * 2)
            .unwrap_or(self.not_after)
    }
}

const INTEGER: u8 = 0x02;
const SEQUENCE: u8 = 0x30;
const VERSION: u8 = 0xa0;
const UTC_TIME: u8 = 0x17;
const GENERALIZED_TIME: u8 = 0x18;

/// One DER element at the start of `input`: its tag, its content, and what follows it.
/// Only the low-tag-number form and definite lengths of up to four bytes (DER's).
fn header(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    if tag & 0x1f == 0x1f {
        return None;
    }
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let (bytes, after) = rest.split_at(n);
        rest = after;
        bytes
            .iter()
            .fold(0usize, |len, &b| (len << 8) | usize::from(b))
    };
    if rest.len() < len {
        return None;
    }
    let (content, after) = rest.split_at(len);
    Some((tag, content, after))
}

/// A UTCTime (`YYMMDDHHMMSSZ`, years 1950-2049) or GeneralizedTime (`YYYYMMDDHHMMSSZ`).
fn time(tag: u8, text: &[u8]) -> Option<SystemTime> {
    let digits = match (tag, text.split_last()) {
        (UTC_TIME, Some((b'Z', digits))) if digits.len() == 12 => digits,
        (GENERALIZED_TIME, Some((b'Z', digits))) if digits.len() == 14 => digits,
        _ => return None,
    };
    if !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let number = |at: usize, len: usize| {
        digits[at..at + len]
            .iter()
            .fold(0i64, |n, d| n * 10 + i64::from(d - b'0'))
    };
    let (year, at) = if tag == UTC_TIME {
        let yy = number(0, 2);
        (if yy < 50 { 2000 + yy } else { 1900 + yy }, 2)
    } else {
        (number(0, 4), 4)
    };
    let (month, day) = (number(at, 2), number(at + 2, 2));
    let (hour, minute, second) = (number(at + 4, 2), number(at + 6, 2), number(at + 8, 2));
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 59
    {
        return None;
    }
    let secs = days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second;
    let magnitude = Duration::from_secs(secs.unsigned_abs());
    if secs >= 0 {
        UNIX_EPOCH.checked_add(magnitude)
    } else {
        UNIX_EPOCH.checked_sub(magnitude)
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
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

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn cert(not_before: (i32, u8, u8), not_after: (i32, u8, u8)) -> Vec<u8> {
        let mut params =
            rcgen::CertificateParams::new(vec!["relay.example".to_string()]).expect("params");
        params.not_before = rcgen::date_time_ymd(not_before.0, not_before.1, not_before.2);
        params.not_after = rcgen::date_time_ymd(not_after.0, not_after.1, not_after.2);
        let key = rcgen::KeyPair::generate().expect("key");
        params.self_signed(&key).expect("cert").der().to_vec()
    }

    #[test]
    fn reads_utc_and_generalized_times_of_a_real_certificate() {
        // 2024-01-02 and 2051-06-07 (past 2049: a GeneralizedTime).
        let v = Validity::of(&cert((2024, 1, 2), (2051, 6, 7))).expect("parses");
        assert_eq!(v.not_before, at(1_704_153_600));
        assert_eq!(v.not_after, at(2_569_708_800));
        let v = Validity::of(&cert((2025, 3, 1), (2025, 5, 30))).expect("parses");
        assert_eq!(v.lifetime(), Duration::from_secs(90 * 86_400));
        assert_eq!(
            v.renew_at(),
            v.not_before + Duration::from_secs(60 * 86_400)
        );
    }

    #[test]
    fn times_with_a_time_of_day() {
        assert_eq!(time(UTC_TIME, b"700101000001Z"), Some(at(1)));
        assert_eq!(
            time(UTC_TIME, b"991231235959Z"),
            Some(at(946_684_799)),
            "99 is 1999"
        );
        assert_eq!(
            time(GENERALIZED_TIME, b"20000301123456Z"),
            Some(at(951_914_096))
        );
        for bad in [
            &b"700101000001"[..],
            b"7001010000Z",
            b"701301000000Z",
            b"700100000000Z",
            b"700101240000Z",
            b"70010100000aZ",
            b"",
        ] {
            assert_eq!(time(UTC_TIME, bad), None, "{bad:?}");
        }
        assert_eq!(time(0x04, b"700101000001Z"), None);
    }

    #[test]
    fn anything_else_is_none_and_never_a_panic() {
        let der = cert((2024, 1, 2), (2025, 1, 2));
        for len in 0..der.len() {
            assert_eq!(Validity::of(&der[..len]), None, "cut at {len}");
        }
        let mut seen_some = 0;
        for i in 0..der.len() {
            for flip in [0x01u8, 0x80, 0xff] {
                let mut bad = der.clone();
                bad[i] ^= flip;
                // Most flips land in bytes the walker skips; none may panic.
                seen_some += usize::from(Validity::of(&bad).is_some());
            }
        }
        assert!(seen_some > 0);
        assert_eq!(Validity::of(b"\x30\x84\xff\xff\xff\xff"), None);
        assert_eq!(Validity::of(b"\x30\x80\x00\x00"), None);
        assert_eq!(Validity::of(b"\x1f\x01\x00"), None);
        // notAfter before notBefore.
        assert_eq!(Validity::of(&cert((2025, 1, 2), (2024, 1, 2))), None);
    }
}
