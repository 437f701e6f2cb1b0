//! Random secrets, hashes and join tokens.

use ring::rand::{SecureRandom, SystemRandom};

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref())
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `n` random bytes as hex.
pub fn random_hex(n: usize) -> String {
    let mut buf = vec![0u8; n];
    // The system RNG failing is not recoverable; there is no safe fallback for key material.
    #[allow(clippy::expect_used)]
    SystemRandom::new().fill(&mut buf).expect("the system random number generator failed");
    hex(&buf)
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}
