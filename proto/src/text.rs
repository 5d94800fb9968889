//! Text that crosses a trust boundary: what a worker, a spec or a file says, before it is
//! stored, logged or shown. Reasons are cut to a bound and stripped of control characters;
//! quotes of a file's content are short excerpts; names have a bounded length.

use crate::spec::error::FieldError;

/// Longest failure reason (bytes) the coordinator stores or shows; longer ones are cut.
pub const MAX_REASON_BYTES: usize = 1024;

/// Longest name (bytes) a worker sends: a device, a layer, an attack, a worker name, a host.
pub const MAX_NAME_BYTES: usize = 256;

/// Most characters of a file's content an error quotes.
pub const EXCERPT_CHARS: usize = 40;

/// `s` with every control character (newlines, escapes, NULs) replaced by a space, cut to at
/// most `max` bytes at a character boundary; a cut ends in `…`.
pub fn clean(s: &str, max: usize) -> String {
    let mut out = String::with_capacity(s.len().min(max));
    for c in s.chars() {
        let c = if c.is_control() { ' ' } else { c };
        if out.len() + c.len_utf8() > max {
            const MARK: char = '…';
            while out.len() + MARK.len_utf8() > max {
                out.pop();
            }
            out.push(MARK);
            return out;
        }
        out.push(c);
    }
    out
}

/// A failure reason as the coordinator keeps it: [`clean`] to [`MAX_REASON_BYTES`].
pub fn reason(s: &str) -> String {
    clean(s, MAX_REASON_BYTES)
}

/// A short quote of untrusted content for an error: at most [`EXCERPT_CHARS`] characters,
/// quoted and escaped, `…` where it was cut.
pub fn excerpt(s: &str) -> String {
    let mut cut: String = s.chars().take(EXCERPT_CHARS).collect();
    if cut.len() < s.len() {
        cut.push('…');
    }
    format!("{cut:?}")
}

/// Refuses a name longer than [`MAX_NAME_BYTES`] or holding a control character.
pub fn name(field: impl Into<String>, s: &str) -> Result<(), FieldError> {
    if s.len() > MAX_NAME_BYTES {
        return Err(FieldError::new(
            field,
            format!("at most {MAX_NAME_BYTES} bytes, got {}", s.len()),
        ));
    }
    if s.chars().any(char::is_control) {
        return Err(FieldError::new(
            field,
            format!("no control characters, got {}", excerpt(s)),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_strips_control_characters_and_cuts_at_a_character_boundary() {
        assert_eq!(clean("a\nb\x1b[31mc\0", 100), "a b [31mc ");
        let long = "é".repeat(1000);
        let cut = clean(&long, MAX_REASON_BYTES);
        assert!(cut.len() <= MAX_REASON_BYTES, "{}", cut.len());
        assert!(cut.ends_with('…'));
        assert_eq!(clean("short", 5), "short");
        assert_eq!(clean("longer", 5), "lo…");
    }

    #[test]
    fn excerpts_are_short_and_escaped() {
        let secret = format!("root:x:0:0:root:/root:/bin/bash\n{}", "x".repeat(500));
        let e = excerpt(&secret);
        assert!(e.chars().count() <= EXCERPT_CHARS + 4, "{e}");
        assert!(e.contains("\\n") && e.ends_with("…\""), "{e}");
    }

    #[test]
    fn names_are_bounded_and_printable() {
        assert!(name("name", "gpu-0").is_ok());
        let err = name("name", &"x".repeat(MAX_NAME_BYTES + 1)).unwrap_err();
        assert_eq!(err.field, "name");
        assert!(name("host", "a\u{7}b").unwrap_err().message.contains("control"));
    }
}
