//! Entry names and values: what the vault accepts.

use crate::error::Error;
use crate::format::MAX_VALUE_BYTES;

/// Checks a name against `[A-Za-z_][A-Za-z0-9_]*` (an environment variable name).
pub fn validate(name: &str) -> Result<(), Error> {
    let mut chars = name.chars();
    let ok = matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name.len() <= 256;
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidName {
            name: shown_name(name),
        })
    }
}

/// Checks a value: UTF-8 is given by the type; no NUL (it cannot be in an environment
/// variable) and at most [`MAX_VALUE_BYTES`].
pub fn validate_value(name: &str, value: &str) -> Result<(), Error> {
    if value.len() > MAX_VALUE_BYTES {
        return Err(Error::InvalidValue {
            name: name.to_owned(),
            reason: format!(
                "it is {} bytes; the limit is {} KiB",
                value.len(),
                MAX_VALUE_BYTES / 1024
            ),
        });
    }
    if value.contains('\0') {
        return Err(Error::InvalidValue {
            name: name.to_owned(),
            reason: "it contains a NUL byte, which an environment variable cannot hold".into(),
        });
    }
    Ok(())
}

/// A rejected name as it may be shown: escaped, and cut short (a long "name" may well be a
/// value typed in the wrong place).
fn shown_name(name: &str) -> String {
    let short: String = name.chars().take(24).collect();
    let escaped = short.escape_default().to_string();
    if short.len() < name.len() {
        format!("{escaped}…")
    } else {
        escaped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["A", "_", "OPENAI_API_KEY", "a1_b2", "_x9"] {
            assert!(validate(ok).is_ok(), "{ok}");
        }
        for bad in ["", "1A", "A-B", "A B", "É", "A=B", "A\0", &"A".repeat(257)] {
            assert!(validate(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn values() {
        assert!(validate_value("A", "").is_ok());
        assert!(validate_value("A", "multi\nline ✓").is_ok());
        assert!(validate_value("A", "a\0b").is_err());
        assert!(validate_value("A", &"x".repeat(MAX_VALUE_BYTES)).is_ok());
        let err = validate_value("A", &"x".repeat(MAX_VALUE_BYTES + 1)).unwrap_err();
        assert!(err.to_string().contains("64 KiB"));
    }

    #[test]
    fn long_rejected_names_are_cut_short() {
        let err = validate("sk-0123456789abcdefghijklmnopqrstuvwxyz").unwrap_err();
        assert!(!err.to_string().contains("qrstuvwxyz"));
    }
}
