//! Invite links and the invites behind them. A link carries everything a new user needs:
//! `walkie://HOST:PORT/join/CODE#sha256:FINGERPRINT` (the relay's address, a 128-bit code,
//! and the pin of the relay's certificate). A relay with a CA-issued certificate may hand
//! out links without the pin (`walkie://HOST:PORT/join/CODE`): clients then check its
//! certificate against their system's roots and HOST. A relay that takes sign-ups without an
//! invite hands out the same link without its code. The relay keeps only the code's hash; an
//! [`Invite`] is what it keeps under it.

use serde::{Deserialize, Serialize};

/// Hex digits of an invite code (128 random bits).
pub const CODE_HEX: usize = 32;

/// A fresh random invite code: [`CODE_HEX`] lowercase hex digits.
pub fn new_code() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}

/// A parsed invite link.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InviteLink {
    /// The relay's `HOST:PORT`.
    pub addr: String,
    /// The invite code; `None` for a relay's open sign-up link.
    pub code: Option<String>,
    /// The relay certificate's pin, `sha256:HEX`; `None`: the certificate is checked against
    /// the system's roots and the relay's host name.
    pub fingerprint: Option<String>,
}

/// Why a link does not parse.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "{0:?} is not an invite link: {1} (a link looks like walkie://HOST:PORT/join/CODE#sha256:FINGERPRINT)"
)]
pub struct LinkError(pub String, pub &'static str);

impl std::str::FromStr for InviteLink {
    type Err = LinkError;
    fn from_str(link: &str) -> Result<InviteLink, LinkError> {
        let shown: String = link.chars().take(200).collect();
        let err = |why| LinkError(shown.clone(), why);
        let rest = link
            .trim()
            .strip_prefix("walkie://")
            .ok_or_else(|| err("it does not start with walkie://"))?;
        let (path, fingerprint) = match rest.split_once('#') {
            Some((path, pin)) => {
                let hex = pin
                    .strip_prefix("sha256:")
                    .ok_or_else(|| err("the pin after # must start with sha256:"))?;
                if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(err("the pin must be sha256: and 64 hex digits"));
                }
                (path, Some(format!("sha256:{}", hex.to_ascii_lowercase())))
            }
            None => (rest, None),
        };
        let (addr, join) = path
            .split_once('/')
            .ok_or_else(|| err("it has no /join path"))?;
        let code = match join.trim_end_matches('/') {
            "join" => None,
            other => {
                let code = other
                    .strip_prefix("join/")
                    .ok_or_else(|| err("its path is not /join/CODE"))?;
                if code.len() != CODE_HEX || !code.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(err("its code is not 32 hex digits"));
                }
                Some(code.to_ascii_lowercase())
            }
        };
        let port_ok = addr.rsplit_once(':').is_some_and(|(host, port)| {
            !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0)
        });
        if !port_ok || addr.len() > 255 {
            return Err(err("its address is not HOST:PORT"));
        }
        Ok(InviteLink {
            addr: addr.to_string(),
            code,
            fingerprint,
        })
    }
}

impl std::fmt::Display for InviteLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.code {
            Some(code) => write!(f, "walkie://{}/join/{code}", self.addr)?,
            None => write!(f, "walkie://{}/join", self.addr)?,
        }
        match &self.fingerprint {
            Some(pin) => write!(f, "#{pin}"),
            None => Ok(()),
        }
    }
}

/// What the relay keeps under an invite code's hash.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Invite {
    /// Sign-ups left (the record stays at 0 until it expires, so a used code is told apart
    /// from an unknown one).
    pub uses_left: u32,
    /// When it stops working, in milliseconds since the Unix epoch.
    pub expires_ms: i64,
    /// A channel the new user joins.
    pub channel: Option<String>,
    /// Who made it (`None`: the administrator).
    pub created_by: Option<String>,
    /// For a device link: the user it signs in as another device (no new account).
    #[serde(default)]
    pub device_of: Option<String>,
}

/// Why an invite code does not work.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InviteRefusal {
    /// No invite has this code.
    #[error(
        "this invite code is not known to the relay: check that the link was copied whole, or ask for a new one"
    )]
    Unknown,
    /// Every use of it is spent.
    #[error("this invite was already used; ask for a new one")]
    Used,
    /// Too late.
    #[error("this invite expired {0} ago; ask for a new one")]
    Expired(Ago),
}

/// A past duration for humans ("3 hours").
#[derive(Debug, PartialEq, Eq)]
pub struct Ago(pub i64);

impl std::fmt::Display for Ago {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let secs = self.0.max(0) / 1000;
        let (n, unit) = match secs {
            s if s < 120 => (s, "second"),
            s if s < 7200 => (s / 60, "minute"),
            s if s < 172_800 => (s / 3600, "hour"),
            s => (s / 86_400, "day"),
        };
        write!(f, "{n} {unit}{}", if n == 1 { "" } else { "s" })
    }
}

impl Invite {
    /// The invite after one use at `now_ms`, or why it cannot be used.
    pub fn redeem(&self, now_ms: i64) -> Result<Invite, InviteRefusal> {
        if now_ms >= self.expires_ms {
            return Err(InviteRefusal::Expired(Ago(now_ms - self.expires_ms)));
        }
        if self.uses_left == 0 {
            return Err(InviteRefusal::Used);
        }
        Ok(Invite {
            uses_left: self.uses_left - 1,
            ..self.clone()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FP: &str = "sha256:00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

    #[test]
    fn links_roundtrip_with_and_without_a_code() {
        let code = new_code();
        assert_eq!(code.len(), CODE_HEX);
        let link = InviteLink {
            addr: "relay.example.org:7300".into(),
            code: Some(code.clone()),
            fingerprint: Some(FP.into()),
        };
        let text = link.to_string();
        assert_eq!(
            text,
            format!("walkie://relay.example.org:7300/join/{code}#{FP}")
        );
        assert_eq!(text.parse::<InviteLink>(), Ok(link));
        let open: InviteLink = format!("walkie://[::1]:7300/join#{FP}")
            .parse()
            .expect("open sign-up link");
        assert_eq!((open.addr.as_str(), open.code), ("[::1]:7300", None));
        let upper: InviteLink = format!(
            "walkie://h:1/join/{}#{}",
            code.to_uppercase(),
            FP.to_uppercase().replace("SHA256", "sha256")
        )
        .parse()
        .expect("case");
        assert_eq!(upper.code.as_deref(), Some(code.as_str()));
        // Without a pin: a relay with a CA-issued certificate.
        let unpinned = InviteLink {
            addr: "relay.example.org:7300".into(),
            code: Some(code.clone()),
            fingerprint: None,
        };
        let text = unpinned.to_string();
        assert_eq!(text, format!("walkie://relay.example.org:7300/join/{code}"));
        assert_eq!(text.parse::<InviteLink>(), Ok(unpinned));
        let open: InviteLink = "walkie://relay.example.org:7300/join"
            .parse()
            .expect("open sign-up link without a pin");
        assert_eq!((open.code, open.fingerprint), (None, None));
    }

    #[test]
    fn broken_links_say_what_is_wrong() {
        for (link, why) in [
            ("http://h:1/join#x", "walkie://"),
            ("walkie://h:1/join/abcd#", "sha256:"),
            ("walkie://h:1/join/abcd", "32 hex"),
            ("walkie://h/join", "HOST:PORT"),
            ("walkie://h:1/join/abcd#sha256:00", "64 hex"),
            (&format!("walkie://h:1/join/abcd#{FP}") as &str, "32 hex"),
            (&format!("walkie://h/join#{FP}"), "HOST:PORT"),
            (&format!("walkie://h:1/leave#{FP}"), "/join"),
        ] {
            let e = link.parse::<InviteLink>().expect_err(link);
            assert!(e.to_string().contains(why), "{link}: {e}");
        }
    }

    #[test]
    fn invites_are_spent_and_expire() {
        let invite = Invite {
            uses_left: 2,
            expires_ms: 10_000,
            channel: Some("crew".into()),
            created_by: None,
            device_of: None,
        };
        let once = invite.redeem(1_000).expect("first use");
        assert_eq!(once.uses_left, 1);
        let twice = once.redeem(2_000).expect("second use");
        assert_eq!(twice.redeem(3_000), Err(InviteRefusal::Used));
        assert_eq!(
            invite.redeem(10_000 + 3 * 3_600_000),
            Err(InviteRefusal::Expired(Ago(3 * 3_600_000)))
        );
        assert_eq!(
            InviteRefusal::Expired(Ago(3 * 3_600_000)).to_string(),
            "this invite expired 3 hours ago; ask for a new one"
        );
        assert_eq!(Ago(61_000).to_string(), "61 seconds");
    }
}
