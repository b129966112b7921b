//! Secret newtypes: zeroized on drop, `Debug` prints no secret, values readable only through
//! an explicit `expose_secret()`.

use std::fmt;

use secrecy::{ExposeSecret, SecretString};
use zeroize::{Zeroize, Zeroizing};

use crate::error::Error;

/// Number of random bytes in a recovery code (160 bits).
const RECOVERY_BYTES: usize = 20;
/// Crockford's base32 alphabet: no I, L, O or U, so codes read aloud and typed without mix-ups.
const CROCKFORD: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
/// Characters per group in the printed form.
const GROUP: usize = 4;

/// A vault passphrase (never empty).
pub struct Passphrase(SecretString);

impl Passphrase {
    /// Wraps a passphrase, rejecting an empty one.
    pub fn new(value: SecretString) -> Result<Self, Error> {
        if value.expose_secret().is_empty() {
            return Err(Error::InvalidPassphrase {
                reason: "it is empty",
            });
        }
        Ok(Passphrase(value))
    }

    /// The passphrase itself.
    pub fn expose_secret(&self) -> &str {
        self.0.expose_secret()
    }
}

impl fmt::Debug for Passphrase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Passphrase(****)")
    }
}

/// The recovery code: 160 random bits, shown as 8 groups of 4 Crockford base32 characters
/// (`7QJ2-...`). It opens the vault on any machine, so it is printed exactly once.
pub struct RecoveryCode(Zeroizing<[u8; RECOVERY_BYTES]>);

impl RecoveryCode {
    pub(crate) fn generate() -> Result<Self, Error> {
        let mut bytes = Zeroizing::new([0u8; RECOVERY_BYTES]);
        crate::crypto::fill_random(bytes.as_mut())?;
        Ok(RecoveryCode(bytes))
    }

    pub(crate) fn bytes(&self) -> &[u8] {
        self.0.as_ref()
    }

    /// Parses a code as printed. Case, spaces and dashes do not matter, and the look-alike
    /// letters O, I and L are read as 0, 1 and 1.
    pub fn parse(text: &str) -> Result<Self, Error> {
        let mut symbols = Zeroizing::new(Vec::with_capacity(RECOVERY_BYTES * 8 / 5));
        for c in text.chars() {
            let value = match c.to_ascii_uppercase() {
                ' ' | '-' | '\t' | '\n' | '\r' => continue,
                'O' => 0,
                'I' | 'L' => 1,
                u => match CROCKFORD.iter().position(|&a| char::from(a) == u) {
                    Some(v) => v as u8,
                    None => {
                        return Err(Error::MalformedRecoveryCode {
                            reason: "it contains a character that is not in the code alphabet (0-9, A-Z without U)".into(),
                        });
                    }
                },
            };
            symbols.push(value);
        }
        let want = RECOVERY_BYTES * 8 / 5;
        if symbols.len() != want {
            return Err(Error::MalformedRecoveryCode {
                reason: format!("it has {} characters; a code has {want}", symbols.len()),
            });
        }
        let mut bytes = Zeroizing::new([0u8; RECOVERY_BYTES]);
        let mut acc: u64 = 0;
        let mut bits = 0;
        let mut out = 0;
        for &s in symbols.iter() {
            acc = (acc << 5) | u64::from(s);
            bits += 5;
            if bits >= 8 {
                bits -= 8;
                bytes[out] = (acc >> bits) as u8;
                out += 1;
            }
        }
        acc.zeroize();
        Ok(RecoveryCode(bytes))
    }

    /// The code in its printed form, `XXXX-XXXX-...`.
    pub fn expose_secret(&self) -> Zeroizing<String> {
        let mut text = Zeroizing::new(String::with_capacity(40));
        let mut acc: u64 = 0;
        let mut bits = 0;
        let mut count = 0;
        for &b in self.0.iter() {
            acc = (acc << 8) | u64::from(b);
            bits += 8;
            while bits >= 5 {
                bits -= 5;
                if count > 0 && count % GROUP == 0 {
                    text.push('-');
                }
                text.push(char::from(CROCKFORD[((acc >> bits) & 31) as usize]));
                count += 1;
            }
        }
        acc.zeroize();
        text
    }
}

impl fmt::Debug for RecoveryCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RecoveryCode(****)")
    }
}

/// 32 bytes of key material (vault key, device secret, derived keys).
pub(crate) struct Key32(pub(crate) Zeroizing<[u8; 32]>);

impl Key32 {
    pub(crate) fn zero() -> Self {
        Key32(Zeroizing::new([0u8; 32]))
    }

    pub(crate) fn random() -> Result<Self, Error> {
        let mut k = Key32::zero();
        crate::crypto::fill_random(k.0.as_mut())?;
        Ok(k)
    }
}

impl fmt::Debug for Key32 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Key32(****)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovery_code_round_trips_and_tolerates_formatting() {
        let code = RecoveryCode::generate().unwrap();
        let text = code.expose_secret();
        assert_eq!(text.len(), 32 + 7);
        assert_eq!(text.split('-').count(), 8);
        let again = RecoveryCode::parse(&text).unwrap();
        assert_eq!(again.bytes(), code.bytes());
        let sloppy = text.to_lowercase().replace('-', " ").replace('0', "o");
        assert_eq!(RecoveryCode::parse(&sloppy).unwrap().bytes(), code.bytes());
    }

    #[test]
    fn malformed_recovery_codes_are_refused() {
        assert!(RecoveryCode::parse("").is_err());
        assert!(RecoveryCode::parse("ABCD-EFGH").is_err());
        assert!(RecoveryCode::parse(&"U".repeat(32)).is_err());
        assert!(RecoveryCode::parse(&"A".repeat(33)).is_err());
    }

    #[test]
    fn debug_prints_no_secret() {
        let code = RecoveryCode::generate().unwrap();
        let shown = format!("{code:?}");
        assert!(!shown.contains(code.expose_secret().as_str()));
        assert_eq!(shown, "RecoveryCode(****)");
        let p = Passphrase::new(SecretString::from("hunter2-correct-horse")).unwrap();
        assert!(!format!("{p:?}").contains("hunter2"));
        let k = Key32::random().unwrap();
        assert_eq!(format!("{k:?}"), "Key32(****)");
        assert!(Passphrase::new(SecretString::from("")).is_err());
    }
}
