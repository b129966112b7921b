//! Secret values: zeroized on drop, redacted in `Debug`, read only through `expose_secret()`.

pub use secrecy::{ExposeSecret, SecretBox, SecretString};

/// A 32-byte key that never prints and is wiped when dropped.
pub type SecretKey32 = SecretBox<[u8; 32]>;

/// Masks a secret for display: the first 8 and last 4 characters, never more than a third of it.
///
/// `lsk_gateway_0123…1a2b` tells an operator which key is configured without revealing it.
pub fn mask(secret: &str) -> String {
    let chars: Vec<char> = secret.chars().collect();
    let n = chars.len();
    if n < 16 {
        return "*".repeat(n.min(8));
    }
    let head: String = chars[..8].iter().collect();
    let tail: String = chars[n - 4..].iter().collect();
    format!("{head}…{tail}")
}

/// Parses 64 hex characters into a secret 32-byte key.
pub fn key_from_hex(hex_str: &str) -> Option<SecretKey32> {
    let mut out = Box::new([0u8; 32]);
    hex::decode_to_slice(hex_str.trim(), out.as_mut()).ok()?;
    Some(SecretBox::new(out))
}

/// 32 random bytes from the operating system.
pub fn random_key() -> SecretKey32 {
    let mut out = Box::new([0u8; 32]);
    getrandom::fill(out.as_mut()).expect("the operating system's random source failed");
    SecretBox::new(out)
}

/// Random bytes from the operating system.
pub fn random_array<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    getrandom::fill(&mut out).expect("the operating system's random source failed");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mask_keeps_only_the_ends() {
        assert_eq!(mask("lsk_gateway_0123456789abcdef1a2b"), "lsk_gate…1a2b");
        assert_eq!(mask("short"), "*****");
        assert_eq!(mask(""), "");
    }

    #[test]
    fn keys_do_not_print() {
        let key = key_from_hex(&"ab".repeat(32)).unwrap();
        let debug = format!("{key:?}");
        assert!(!debug.contains("ab"), "{debug}");
    }

    #[test]
    fn bad_hex_is_refused() {
        assert!(key_from_hex("xyz").is_none());
        assert!(key_from_hex(&"ab".repeat(31)).is_none());
    }
}
