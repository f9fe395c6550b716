//! When a certificate is valid (X.509 `notBefore`, `notAfter`) and when it is due for
//! renewal, read with RustCrypto's `x509-cert` (a full DER decoder of the certificate, a few
//! small crates). Any input that is not a certificate gives `None`, never a panic.

use std::time::{Duration, SystemTime};

use x509_cert::Certificate;
use x509_cert::der::Decode;

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
        let cert = Certificate::from_der(cert_der).ok()?;
        let validity = &cert.tbs_certificate.validity;
        let not_before = validity.not_before.to_system_time();
        let not_after = validity.not_after.to_system_time();
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

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
                // Some flips land in bytes the validity does not depend on; none may panic.
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
