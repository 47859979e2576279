//! Text that came from a file (certificate subjects, CSR names, manifest
//! fields) and ends up on a terminal or in a name a service trusts.
//!
//! Two questions are answered here, once for the whole tool:
//! - how to print such text so it cannot move the cursor, recolour the
//!   terminal, start a new line that looks like our own output, or reorder
//!   what follows it ([`escape_for_terminal`]);
//! - which characters make a name unsafe or invisible ([`is_control`],
//!   [`is_format`], [`is_invisible`], [`describe_char`]).

/// C0 controls (U+0000..U+001F, NUL, ESC, newline...), DEL and the C1
/// controls (U+0080..U+009F, which include CSI U+009B): Unicode's Cc.
pub fn is_control(c: char) -> bool {
    c.is_control()
}

/// Unicode format characters (General_Category Cf, Unicode 15.1): zero-width
/// space and joiners, word joiner, BOM, soft hyphen, the bidi controls, tag
/// characters... They draw nothing, or reorder the text around them.
pub fn is_format(c: char) -> bool {
    matches!(
        c as u32,
        0x00AD
            | 0x0600..=0x0605
            | 0x061C
            | 0x06DD
            | 0x070F
            | 0x0890..=0x0891
            | 0x08E2
            | 0x180E
            | 0x200B..=0x200F
            | 0x202A..=0x202E
            | 0x2060..=0x2064
            | 0x2066..=0x206F
            | 0xFEFF
            | 0xFFF9..=0xFFFB
            | 0x110BD
            | 0x110CD
            | 0x13430..=0x1343F
            | 0x1BCA0..=0x1BCA3
            | 0x1D173..=0x1D17A
            | 0xE0001
            | 0xE0020..=0xE007F
    )
}

/// The bidirectional controls (LRM, RLM, ALM, LRE..RLO, LRI..PDI): they make
/// the text display in another order than it is compared in.
pub fn is_bidi_control(c: char) -> bool {
    matches!(
        c as u32,
        0x061C | 0x200E | 0x200F | 0x202A..=0x202E | 0x2066..=0x2069
    )
}

/// Characters that draw nothing: whitespace, controls, format characters,
/// and the default-ignorable fillers that are not Cf (Hangul fillers,
/// combining grapheme joiner, variation selectors, Braille blank...).
pub fn is_invisible(c: char) -> bool {
    c.is_whitespace()
        || is_control(c)
        || is_format(c)
        || matches!(
            c as u32,
            0x034F
                | 0x115F
                | 0x1160
                | 0x17B4
                | 0x17B5
                | 0x180B..=0x180D
                | 0x180F
                | 0x2800
                | 0x3164
                | 0xFE00..=0xFE0F
                | 0xFFA0
                | 0xE0100..=0xE01EF
        )
}

/// Name a character for an error message: `U+001B (ESC)`, `U+200B (zero
/// width space)`, `U+00E9`.
pub fn describe_char(c: char) -> String {
    let name = match c as u32 {
        0x00 => "NUL",
        0x07 => "BEL",
        0x08 => "backspace",
        0x09 => "tab",
        0x0A => "line feed",
        0x0D => "carriage return",
        0x1B => "ESC",
        0x7F => "DEL",
        0x9B => "CSI",
        0x00AD => "soft hyphen",
        0x200B => "zero width space",
        0x200C => "zero width non-joiner",
        0x200D => "zero width joiner",
        0x2060 => "word joiner",
        0xFEFF => "zero width no-break space (BOM)",
        0x2028 => "line separator",
        0x2029 => "paragraph separator",
        _ if is_bidi_control(c) => "bidi control",
        _ if is_control(c) => "control character",
        _ if is_format(c) => "invisible format character",
        _ if c.is_whitespace() => "whitespace",
        _ if is_invisible(c) => "invisible character",
        _ => "",
    };
    if name.is_empty() {
        format!("U+{:04X}", c as u32)
    } else {
        format!("U+{:04X} ({name})", c as u32)
    }
}

/// Text from a file, made safe to print on a terminal: C0 controls and DEL
/// become `\xNN` (ESC is `\x1b`, a newline `\x0a`); C1 controls, format
/// characters (zero-width, bidi controls, BOM) and the line/paragraph
/// separators become `\u{NNNN}`. Everything else, including non-ASCII
/// letters, is kept. JSON output does not need this: serde escapes controls.
pub fn escape_for_terminal(s: &str) -> String {
    if !s.chars().any(needs_escape) {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if !needs_escape(c) {
            out.push(c);
        } else if (c as u32) < 0x80 {
            out.push_str(&format!("\\x{:02x}", c as u32));
        } else {
            out.push_str(&format!("\\u{{{:x}}}", c as u32));
        }
    }
    out
}

fn needs_escape(c: char) -> bool {
    is_control(c) || is_format(c) || matches!(c, '\u{2028}' | '\u{2029}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_controls_format_and_separators_only() {
        assert_eq!(escape_for_terminal("O=acme, CN=dev-1"), "O=acme, CN=dev-1");
        assert_eq!(escape_for_terminal("Grüße 設備"), "Grüße 設備");
        assert_eq!(
            escape_for_terminal("a\u{1b}[31mred\nb\0c\u{7f}"),
            "a\\x1b[31mred\\x0ab\\x00c\\x7f"
        );
        assert_eq!(
            escape_for_terminal("\u{9b}2J\u{200b}\u{202e}x\u{2028}"),
            "\\u{9b}2J\\u{200b}\\u{202e}x\\u{2028}"
        );
    }

    #[test]
    fn invisible_and_described() {
        for c in [
            '\u{200b}', '\u{200c}', '\u{200d}', '\u{2060}', '\u{feff}', ' ', '\u{3000}',
        ] {
            assert!(is_invisible(c), "{c:?}");
        }
        for c in ['a', 'é', '-', '設'] {
            assert!(!is_invisible(c), "{c:?}");
        }
        assert_eq!(describe_char('\0'), "U+0000 (NUL)");
        assert_eq!(describe_char('\u{1b}'), "U+001B (ESC)");
        assert_eq!(describe_char('\u{202e}'), "U+202E (bidi control)");
        assert_eq!(describe_char('\u{85}'), "U+0085 (control character)");
        assert_eq!(describe_char('é'), "U+00E9");
    }
}
