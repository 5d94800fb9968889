//! Ids and the canonical form: a trial's id is the hex prefix of the SHA-256 of its canonical
//! JSON (keys sorted at every level, no whitespace); a sweep's id is its validated name.

use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::error::FieldError;

/// Hex digits of SHA-256 kept in a trial id (64 bits: collisions are out of reach for any sweep).
pub const TRIAL_ID_HEX_LEN: usize = 16;

/// `value` as canonical JSON: object keys sorted at every level, no whitespace.
pub fn canonical_string(value: &serde_json::Value) -> String {
    let mut out = String::new();
    write_canonical(value, &mut out);
    out
}

fn write_canonical(value: &serde_json::Value, out: &mut String) {
    use serde_json::Value;
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(key.clone()).to_string());
                out.push(':');
                write_canonical(&map[key], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

/// A trial's id: the hex prefix of the SHA-256 of its canonical spec.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TrialId(String);

impl TrialId {
    /// The id of a canonical JSON text.
    pub fn of_canonical_json(json: &str) -> Self {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let digest = Sha256::digest(json.as_bytes());
        let mut hex = String::with_capacity(2 * digest.len());
        for byte in digest {
            hex.push(char::from(HEX[usize::from(byte >> 4)]));
            hex.push(char::from(HEX[usize::from(byte & 15)]));
        }
        hex.truncate(TRIAL_ID_HEX_LEN);
        TrialId(hex)
    }

    /// Parses an id received from outside, checking its shape.
    pub fn parse(s: &str) -> Result<Self, FieldError> {
        if s.len() == TRIAL_ID_HEX_LEN && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            Ok(TrialId(s.to_owned()))
        } else {
            Err(FieldError::new(
                "trial_id",
                format!("must be {TRIAL_ID_HEX_LEN} lowercase hex digits, got {s:?}"),
            ))
        }
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TrialId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A sweep's id: its name from the spec (`[a-z0-9_-]`, 1 to 64 characters).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SweepId(String);

impl SweepId {
    /// Parses a sweep name, which becomes a folder name under `runs/`.
    pub fn parse(s: &str) -> Result<Self, FieldError> {
        let ok = !s.is_empty()
            && s.len() <= 64
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
            && !s.starts_with('-');
        if ok {
            Ok(SweepId(s.to_owned()))
        } else {
            Err(FieldError::new(
                "name",
                format!(
                    "a sweep name is 1 to 64 characters of a-z, 0-9, '-' and '_' (not starting with '-'), got {s:?}"
                ),
            ))
        }
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SweepId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
