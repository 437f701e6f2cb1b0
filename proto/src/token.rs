//! Join tokens: `corral1.<ca-sha256-hex>.<secret>`. The first part pins the coordinator's CA (the
//! agent trusts nothing else), the second authorizes one enrollment.

use std::fmt;
use std::str::FromStr;

#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    /// Lower-case hex SHA-256 of the coordinator CA certificate's DER.
    pub ca_hash: String,
    pub secret: String,
}

const PREFIX: &str = "corral1";

impl fmt::Display for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{PREFIX}.{}.{}", self.ca_hash, self.secret)
    }
}

/// Tokens are secrets: Debug shows the CA hash only.
impl fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "JoinToken({PREFIX}.{}.<secret>)", self.ca_hash)
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("malformed join token: {0} (expected corral1.<64 hex digits>.<secret>, as printed by the coordinator)")]
pub struct TokenError(&'static str);

impl FromStr for JoinToken {
    type Err = TokenError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut parts = s.trim().splitn(3, '.');
        if parts.next() != Some(PREFIX) {
            return Err(TokenError("it does not start with \"corral1.\""));
        }
        let ca_hash = parts.next().ok_or(TokenError("the CA hash is missing"))?;
        if ca_hash.len() != 64 || !ca_hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(TokenError("the CA hash is not 64 hex digits"));
        }
        let secret = parts.next().ok_or(TokenError("the secret is missing"))?;
        if secret.is_empty() {
            return Err(TokenError("the secret is empty"));
        }
        Ok(Self { ca_hash: ca_hash.to_ascii_lowercase(), secret: secret.to_owned() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_errors() {
        let t = JoinToken { ca_hash: "a".repeat(64), secret: "s3cret".into() };
        assert_eq!(t.to_string().parse::<JoinToken>(), Ok(t.clone()));
        assert!(!format!("{t:?}").contains("s3cret"));
        assert!("k10abc".parse::<JoinToken>().is_err());
        assert!(format!("corral1.{}", "a".repeat(63)).parse::<JoinToken>().is_err());
        assert!(format!("corral1.{}.", "a".repeat(64)).parse::<JoinToken>().is_err());
    }
}
