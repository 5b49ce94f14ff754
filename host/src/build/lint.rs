//! A token-level lint of candidate source: the second line of defence behind the compile
//! sandbox, and a clearer error message for the common attacks.
//!
//! It strips comments and literals, then refuses the macros and attributes that reach outside
//! the candidate at compile time (`include_bytes!`, `env!`, `#[path]`, …) and the keywords that
//! reach outside at run time (`unsafe`, `extern`).

/// Macros that read the host at compile time or emit raw code.
const FORBIDDEN_MACROS: &[&str] = &[
    "include",
    "include_bytes",
    "include_str",
    "env",
    "option_env",
    "asm",
    "global_asm",
    "naked_asm",
    "concat_idents",
];

/// Keywords a metric never needs; they are the only ways to create imports or raw pointers.
const FORBIDDEN_KEYWORDS: &[&str] = &["unsafe", "extern"];

/// Attributes that change linking, module paths or crate configuration.
const FORBIDDEN_ATTRS: &[&str] = &[
    "path",
    "no_mangle",
    "export_name",
    "link",
    "link_name",
    "link_section",
    "used",
    "crate_type",
    "crate_name",
    "no_main",
    "no_core",
    "feature",
    "register_tool",
    "debugger_visualizer",
];

/// One lint finding.
#[derive(Debug, Clone, PartialEq)]
pub struct Finding {
    /// 1-based line.
    pub line: usize,
    /// What was found and why it is refused.
    pub message: String,
}

#[derive(Debug, PartialEq)]
enum Tok {
    Ident(String),
    Punct(char),
}

/// Split source into identifiers and punctuation with line numbers, dropping comments,
/// string/char literals, numbers and whitespace.
fn tokens(src: &str) -> Vec<(usize, Tok)> {
    let b: Vec<char> = src.chars().collect();
    let (mut i, mut line, mut out) = (0usize, 1usize, Vec::new());
    let at = |i: usize| b.get(i).copied().unwrap_or('\0');
    while i < b.len() {
        let c = b[i];
        if c == '\n' {
            line += 1;
            i += 1;
        } else if c.is_whitespace() {
            i += 1;
        } else if c == '/' && at(i + 1) == '/' {
            while i < b.len() && b[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && at(i + 1) == '*' {
            let mut depth = 0;
            while i < b.len() {
                if b[i] == '/' && at(i + 1) == '*' {
                    depth += 1;
                    i += 2;
                } else if b[i] == '*' && at(i + 1) == '/' {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    line += (b[i] == '\n') as usize;
                    i += 1;
                }
            }
        } else if (c == 'r' || c == 'b' || c == 'c') && raw_string_start(&b, i).is_some() {
            let (hashes, body) = raw_string_start(&b, i).expect("checked");
            i = body;
            loop {
                if i >= b.len() {
                    break;
                }
                if b[i] == '"' && (0..hashes).all(|k| at(i + 1 + k) == '#') {
                    i += 1 + hashes;
                    break;
                }
                line += (b[i] == '\n') as usize;
                i += 1;
            }
        } else if c == '"' || ((c == 'b' || c == 'c') && at(i + 1) == '"') {
            i += if c == '"' { 1 } else { 2 };
            while i < b.len() && b[i] != '"' {
                if b[i] == '\\' {
                    i += 1;
                }
                line += (at(i) == '\n') as usize;
                i += 1;
            }
            i += 1;
        } else if c == '\'' {
            // A char literal ('x', '\n', '\u{..}') or a lifetime ('a).
            if at(i + 1) == '\\' {
                i += 2;
                while i < b.len() && b[i] != '\'' {
                    i += 1;
                }
                i += 1;
            } else if at(i + 2) == '\'' {
                i += 3;
            } else {
                i += 1;
                while i < b.len() && (b[i].is_alphanumeric() || b[i] == '_') {
                    i += 1;
                }
            }
        } else if c.is_alphabetic() || c == '_' {
            let s = i;
            while i < b.len() && (b[i].is_alphanumeric() || b[i] == '_') {
                i += 1;
            }
            let word: String = b[s..i].iter().collect();
            // Raw identifiers (`r#unsafe`) are the same identifier.
            let word = word.strip_prefix("r#").map(str::to_string).unwrap_or(word);
            out.push((line, Tok::Ident(word)));
        } else if c.is_ascii_digit() {
            while i < b.len() && (b[i].is_alphanumeric() || b[i] == '_' || b[i] == '.') {
                i += 1;
            }
        } else {
            out.push((line, Tok::Punct(c)));
            i += 1;
        }
    }
    out
}

/// `Some((hashes, index of the first body char))` if a raw string literal starts at `i`.
fn raw_string_start(b: &[char], i: usize) -> Option<(usize, usize)> {
    let mut j = i;
    if b[j] == 'b' || b[j] == 'c' {
        j += 1;
    }
    if b.get(j) != Some(&'r') {
        return None;
    }
    j += 1;
    let mut hashes = 0;
    while b.get(j) == Some(&'#') {
        hashes += 1;
        j += 1;
    }
    (b.get(j) == Some(&'"')).then_some((hashes, j + 1))
}

/// Lint a candidate source; an empty result means nothing was found.
pub fn lint(src: &str) -> Vec<Finding> {
    let toks = tokens(src);
    let mut findings = Vec::new();
    let mut attr_depth: Option<usize> = None; // bracket depth inside `#[ ... ]`
    for (k, (line, tok)) in toks.iter().enumerate() {
        let next = toks.get(k + 1).map(|t| &t.1);
        match tok {
            Tok::Punct('#') => {
                let mut j = k + 1;
                if toks.get(j).map(|t| &t.1) == Some(&Tok::Punct('!')) {
                    j += 1;
                }
                if toks.get(j).map(|t| &t.1) == Some(&Tok::Punct('[')) && attr_depth.is_none() {
                    attr_depth = Some(0);
                }
            }
            Tok::Punct('[') => {
                if let Some(d) = attr_depth.as_mut() {
                    *d += 1;
                }
            }
            Tok::Punct(']') => {
                if let Some(d) = attr_depth.as_mut() {
                    *d -= 1;
                    if *d == 0 {
                        attr_depth = None;
                    }
                }
            }
            Tok::Ident(w) => {
                if FORBIDDEN_KEYWORDS.contains(&w.as_str()) {
                    findings.push(Finding {
                        line: *line,
                        message: format!("`{w}` is not allowed in a candidate metric"),
                    });
                } else if next == Some(&Tok::Punct('!')) && FORBIDDEN_MACROS.contains(&w.as_str()) {
                    findings.push(Finding {
                        line: *line,
                        message: format!(
                            "`{w}!` is not allowed in a candidate metric (it reads outside the candidate at compile time)"
                        ),
                    });
                } else if attr_depth.is_some() && FORBIDDEN_ATTRS.contains(&w.as_str()) {
                    findings.push(Finding {
                        line: *line,
                        message: format!(
                            "the attribute `{w}` is not allowed in a candidate metric"
                        ),
                    });
                }
            }
            _ => {}
        }
    }
    findings
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msgs(src: &str) -> Vec<String> {
        lint(src)
            .into_iter()
            .map(|f| format!("{}: {}", f.line, f.message))
            .collect()
    }

    #[test]
    fn clean_candidate_passes() {
        let src = r##"
            use autoprune_sdk::prelude::*;
            // include_bytes!("/etc/passwd") in a comment is fine
            /* nested /* unsafe */ comment */
            const S: &str = "env!(\"HOME\") unsafe";
            const R: &str = r#"extern"#;
            fn f<'a>(x: &'a [f32]) -> char { let _ = x; 'u' }
            #[derive(Debug)] struct Path;
            fn env() {} fn g() { env(); let path = 1; let _ = path; }
        "##;
        assert!(lint(src).is_empty(), "{:?}", msgs(src));
    }

    #[test]
    fn attacks_are_found() {
        for (src, what) in [
            (
                "const X: &[u8] = include_bytes!(\"/etc/hostname\");",
                "include_bytes!",
            ),
            (
                "const X: &str = include_str ! (\"/etc/hostname\");",
                "include_str!",
            ),
            ("const H: &str = env!(\"HOME\");", "env!"),
            (
                "const H: Option<&str> = option_env!(\"HOME\");",
                "option_env!",
            ),
            ("#[path = \"/etc/os-release\"] mod x;", "path"),
            ("extern \"C\" { fn host_fn(); }", "extern"),
            ("fn f() { unsafe { } }", "unsafe"),
            ("#[unsafe(no_mangle)] fn f() {}", "no_mangle"),
            ("#![feature(asm)]", "feature"),
            ("fn f() { r#unsafe(); }", "unsafe"),
        ] {
            let m = msgs(src);
            assert!(m.iter().any(|s| s.contains(what)), "{src}: {m:?}");
        }
    }

    #[test]
    fn lines_are_counted_through_literals() {
        let src = "const A: &str = \"a\nb\";\n/* c\nd */\nunsafe fn f() {}";
        assert_eq!(lint(src)[0].line, 5);
    }
}
