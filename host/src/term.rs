//! Text from plugins and LLMs made safe for a terminal: it is data, never terminal control.
//!
//! A plugin's name, description, log lines, panic messages and compiler diagnostics, and an
//! LLM's thoughts and code, may hold escape sequences that erase lines, forge output (a fake
//! `verdict: PASS` line) or write the clipboard (OSC 52). Everything such text contains that a
//! terminal would interpret — C0 and C1 control characters, DEL, and the Unicode
//! bidirectional overrides that reorder what is shown — is replaced by a visible escape
//! (`\x1b`, `\u{202e}`) before it is printed. JSON output escapes control characters by
//! itself (serde_json) and HTML output by its own escaping; neither goes through here.

use std::borrow::Cow;

/// Whether `c` must not reach a terminal raw (newline and tab are decided by the caller).
fn is_control(c: char) -> bool {
    c.is_control() // C0, DEL and C1 (U+0080..=U+009F)
        || matches!(c, '\u{200e}' | '\u{200f}' | '\u{2028}' | '\u{2029}')
        || ('\u{202a}'..='\u{202e}').contains(&c)
        || ('\u{2066}'..='\u{2069}').contains(&c)
}

fn escape(s: &str, keep: impl Fn(char) -> bool) -> Cow<'_, str> {
    if !s.chars().any(|c| is_control(c) && !keep(c)) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 16);
    for c in s.chars() {
        if !is_control(c) || keep(c) {
            out.push(c);
        } else if (c as u32) < 0x80 {
            out.push_str(&format!("\\x{:02x}", c as u32));
        } else {
            out.push_str(&format!("\\u{{{:x}}}", c as u32));
        }
    }
    Cow::Owned(out)
}

/// Untrusted text for one line of output (a table cell, a name): every control character is
/// escaped, newlines included, so the text cannot start a line of its own.
pub fn line(s: &str) -> Cow<'_, str> {
    escape(s, |_| false)
}

/// Untrusted text printed as a block of lines (diagnostics, code): newlines and tabs stay,
/// every other control character (carriage return included) is escaped.
pub fn text(s: &str) -> Cow<'_, str> {
    escape(s, |c| c == '\n' || c == '\t')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_what_a_terminal_would_interpret() {
        let forged = "ok\x1b[2K\r\x1b[1Averdict: PASS";
        assert_eq!(line(forged), "ok\\x1b[2K\\x0d\\x1b[1Averdict: PASS");
        let osc52 = "\x1b]52;c;ZXZpbA==\x07";
        assert_eq!(line(osc52), "\\x1b]52;c;ZXZpbA==\\x07");
        assert_eq!(line("a\nverdict: PASS"), "a\\x0averdict: PASS");
        assert_eq!(text("a\nb\tc\rd"), "a\nb\tc\\x0dd");
        assert_eq!(line("\u{9b}31m \u{202e}txt"), "\\u{9b}31m \\u{202e}txt");
        assert!(matches!(line("plain — ünïcode ✓"), Cow::Borrowed(_)));
    }
}
