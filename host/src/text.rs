//! Bounds on the text a caller controls: every id, name, label and reason an agent, a vendor
//! key, a guardian or an administrator sends is checked here before it is stored, logged or put
//! in an audit entry. Pure: no I/O, no HTTP.
//!
//! A text is refused for its length (in bytes), for control characters (a line may be allowed
//! where the text is prose) and for Unicode's bidirectional controls, which make a text display
//! in another order than it is stored (a recipient ending in U+202E shows the text after it reversed on a card).

/// How a text may look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bound {
    /// The longest text accepted, in bytes of UTF-8.
    pub max_bytes: usize,
    /// Whether the empty text is accepted.
    pub empty: Empty,
    /// Whether line breaks (`\n`, and `\r` before one) are accepted.
    pub lines: Lines,
}

/// Whether a bounded text may be empty.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Empty {
    Allowed,
    Refused,
}

/// Whether a bounded text may hold line breaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lines {
    Allowed,
    Refused,
}

/// An id: of a vendor, actor, guardian, plugin or idempotency key (1 to 200 bytes, one line).
pub const ID: Bound = Bound {
    max_bytes: 200,
    empty: Empty::Refused,
    lines: Lines::Refused,
};

/// A short label: a provenance surface or tool, a context tag (1 to 64 bytes, one line).
pub const LABEL: Bound = Bound {
    max_bytes: 64,
    empty: Empty::Refused,
    lines: Lines::Refused,
};

/// A text param of a typed action, e.g. a payment's recipient (1 to 256 bytes, one line).
pub const PARAM: Bound = Bound {
    max_bytes: 256,
    empty: Empty::Refused,
    lines: Lines::Refused,
};

/// A display name (1 to 200 bytes, one line).
pub const NAME: Bound = ID;

/// Prose a person wrote, e.g. a guardian's reason (up to 1,000 bytes, lines allowed).
pub const REASON: Bound = Bound {
    max_bytes: 1_000,
    empty: Empty::Allowed,
    lines: Lines::Allowed,
};

/// Why a text was refused, in words that name what is wrong (the caller names the field).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TextError {
    #[error("must not be empty")]
    Empty,
    #[error("is {0} bytes; at most {1}")]
    TooLong(usize, usize),
    #[error("must not contain control characters (U+{0:04X})")]
    Control(u32),
    #[error("must not contain bidirectional controls (U+{0:04X})")]
    Bidi(u32),
}

/// Whether `c` is one of Unicode's explicit bidirectional formatting characters or marks.
pub fn is_bidi_control(c: char) -> bool {
    matches!(
        c,
        '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}'
    )
}

/// Checks `text` against `bound`.
///
/// # Errors
/// The first thing wrong with it.
pub fn check(text: &str, bound: Bound) -> Result<(), TextError> {
    if text.is_empty() && bound.empty == Empty::Refused {
        return Err(TextError::Empty);
    }
    if text.len() > bound.max_bytes {
        return Err(TextError::TooLong(text.len(), bound.max_bytes));
    }
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        let line_break = bound.lines == Lines::Allowed
            && (c == '\n' || (c == '\r' && chars.peek() == Some(&'\n')));
        if c.is_control() && !line_break {
            return Err(TextError::Control(u32::from(c)));
        }
        if is_bidi_control(c) {
            return Err(TextError::Bidi(u32::from(c)));
        }
    }
    Ok(())
}

/// [`check`], the error naming `field`: "provenance.surface is 70000 bytes; at most 64".
///
/// # Errors
/// What is wrong, prefixed with the field's name.
pub fn check_field(field: &str, text: &str, bound: Bound) -> Result<(), String> {
    check(text, bound).map_err(|e| format!("{field} {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_short_single_lines_without_controls() {
        assert_eq!(check("voice", LABEL), Ok(()));
        assert_eq!(check("", LABEL), Err(TextError::Empty));
        assert_eq!(
            check(&"s".repeat(65), LABEL),
            Err(TextError::TooLong(65, 64))
        );
        assert_eq!(check("a\nb", LABEL), Err(TextError::Control(0x0A)));
        assert_eq!(check("a\u{7f}", LABEL), Err(TextError::Control(0x7F)));
        assert_eq!(check("shop\u{202E}", LABEL), Err(TextError::Bidi(0x202E)));
        assert_eq!(check("\u{2067}x", LABEL), Err(TextError::Bidi(0x2067)));
        assert_eq!(check("玩具店", LABEL), Ok(()));
    }

    #[test]
    fn reasons_may_have_lines_but_no_other_controls() {
        assert_eq!(check("", REASON), Ok(()));
        assert_eq!(check("too much\r\nthis week", REASON), Ok(()));
        assert_eq!(check("a\rb", REASON), Err(TextError::Control(0x0D)));
        assert_eq!(check("a\0", REASON), Err(TextError::Control(0)));
        assert_eq!(check("a\u{200F}", REASON), Err(TextError::Bidi(0x200F)));
    }

    #[test]
    fn errors_name_the_field() {
        assert_eq!(
            check_field("provenance.surface", &"x".repeat(70_000), LABEL),
            Err("provenance.surface is 70000 bytes; at most 64".to_owned())
        );
    }
}
