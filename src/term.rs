//! Text that comes from outside (bundle manifests and file contents, tar headers, mirror
//! responses) made safe to print: control characters (C0, DEL, C1, which include the escape
//! sequences a terminal obeys) and the bidirectional overrides that make text read differently
//! than it is are shown as `\x1b` / `\u{202e}` instead of being written raw. Line feeds and tabs
//! are kept. Every place that prints such text goes through `printable`.

use std::borrow::Cow;

fn needs_escape(c: char) -> bool {
    (c.is_control() && c != '\n' && c != '\t')
        || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// `s` with every character a terminal would interpret escaped; borrowed when nothing needs it.
pub fn printable(s: &str) -> Cow<'_, str> {
    if !s.chars().any(needs_escape) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if !needs_escape(c) {
            out.push(c);
        } else if (c as u32) < 0x100 {
            out.push_str(&format!("\\x{:02x}", c as u32));
        } else {
            out.push_str(&format!("\\u{{{:x}}}", c as u32));
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controls_are_escaped() {
        assert_eq!(printable("laptop"), "laptop");
        assert!(matches!(printable("a\tb\nc"), Cow::Borrowed(_)));
        assert_eq!(printable("\x1b]0;pwned\x07x"), "\\x1b]0;pwned\\x07x");
        assert_eq!(printable("a\u{9b}31m\u{7f}"), "a\\x9b31m\\x7f");
        assert_eq!(printable("\r"), "\\x0d");
        assert_eq!(printable("x\u{202e}y"), "x\\u{202e}y");
        assert_eq!(printable("grüße"), "grüße");
    }
}
