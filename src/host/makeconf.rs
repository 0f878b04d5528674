//! make.conf parsing with the semantics of Portage's `getconfig`: a sequence of shell-style
//! assignments `[export] KEY=value`, values single- or double-quoted or bare, `${VAR}` and `$VAR`
//! expanded (outside single quotes) from the variables assigned so far (unknown ones expand to
//! nothing), backslash escapes and continuations, `#` comments, `source FILE` / `. FILE`. A later
//! assignment replaces an earlier one; there is no `+=`. Files of a directory (`make.conf/` or
//! `make.conf.d/`) are read in name order, skipping hidden files and backups (`~`).

use std::collections::BTreeMap;

/// Variables assigned by make.conf, in their final (expanded) values.
pub type Vars = BTreeMap<String, String>;

/// A syntax error in a make.conf-style file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}: {msg}")]
pub struct MakeConfError {
    pub file: String,
    pub line: usize,
    pub msg: String,
}

/// Parse one file's text into `vars` (which also supplies `${VAR}` values). `source` resolves a
/// `source FILE` directive to that file's name and text (None: ignored, as Portage ignores a
/// missing sourced file only with a warning).
pub fn parse_into(
    text: &str,
    file: &str,
    vars: &mut Vars,
    source: &mut dyn FnMut(&str) -> Option<(String, String)>,
) -> Result<(), MakeConfError> {
    parse_depth(text, file, vars, source, 0)
}

/// Parse a single file's text with no sourcing and no prior variables.
pub fn parse(text: &str, file: &str) -> Result<Vars, MakeConfError> {
    let mut vars = Vars::new();
    parse_into(text, file, &mut vars, &mut |_| None)?;
    Ok(vars)
}

fn parse_depth(
    text: &str,
    file: &str,
    vars: &mut Vars,
    source: &mut dyn FnMut(&str) -> Option<(String, String)>,
    depth: usize,
) -> Result<(), MakeConfError> {
    let mut lx = Lexer {
        chars: text.chars().collect(),
        pos: 0,
        line: 1,
        file,
    };
    loop {
        // One logical command: words up to an unquoted newline or `;`.
        let start_line = lx.line;
        let mut words: Vec<Word> = Vec::new();
        let end = loop {
            match lx.word(vars)? {
                Tok::Word(w) => {
                    // An assignment takes effect as soon as its word ends (bash: left to right).
                    let prefix_ok = words.iter().enumerate().all(|(i, p)| {
                        p.assignment().is_some() || (i == 0 && p.bare && p.text == "export")
                    });
                    if prefix_ok {
                        if let Some((k, v)) = w.assignment() {
                            vars.insert(k, v);
                        }
                    }
                    words.push(w);
                }
                Tok::End => break true,
                Tok::Sep => break false,
            }
        };
        if !words.is_empty() {
            let first = &words[0];
            let is_cmd = |name: &str| first.bare && first.text == name;
            if is_cmd("source") || is_cmd(".") {
                if words.len() != 2 {
                    return Err(lx.err_at(start_line, "source needs exactly one file"));
                }
                if depth >= 8 {
                    return Err(lx.err_at(start_line, "source nested too deep"));
                }
                if let Some((name, text)) = source(&words[1].text) {
                    parse_depth(&text, &name, vars, source, depth + 1)?;
                }
            } else if is_cmd("export") {
                if words.len() < 2 || words[1..].iter().any(|w| w.assignment().is_none()) {
                    return Err(lx.err_at(start_line, "expected KEY=value after export"));
                }
            } else if let Some(bad) = words.iter().find(|w| w.assignment().is_none()) {
                return Err(lx.err_at(
                    start_line,
                    &format!("expected KEY=value, found {:?}", bad.text),
                ));
            }
        }
        if end {
            return Ok(());
        }
    }
}

/// A shell word after quote removal and expansion; `name_len` is the length of a leading
/// unquoted `NAME=` (the assignment's key), when there is one.
struct Word {
    text: String,
    name_len: Option<usize>,
    bare: bool,
}

impl Word {
    fn assignment(&self) -> Option<(String, String)> {
        let n = self.name_len?;
        Some((self.text[..n].to_string(), self.text[n + 1..].to_string()))
    }
}

enum Tok {
    Word(Word),
    Sep,
    End,
}

struct Lexer<'a> {
    chars: Vec<char>,
    pos: usize,
    line: usize,
    file: &'a str,
}

fn is_name_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_'
}
fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

impl Lexer<'_> {
    fn err_at(&self, line: usize, msg: &str) -> MakeConfError {
        MakeConfError {
            file: self.file.to_string(),
            line,
            msg: msg.to_string(),
        }
    }

    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += 1;
        if c == '\n' {
            self.line += 1;
        }
        Some(c)
    }

    /// The next word, or a command separator, or the end of the text.
    fn word(&mut self, vars: &Vars) -> Result<Tok, MakeConfError> {
        // Skip blanks, line continuations and comments.
        loop {
            match self.peek() {
                Some(' ' | '\t' | '\r') => {
                    self.bump();
                }
                Some('\\') if self.chars.get(self.pos + 1) == Some(&'\n') => {
                    self.bump();
                    self.bump();
                }
                Some('#') => {
                    while let Some(c) = self.peek() {
                        if c == '\n' {
                            break;
                        }
                        self.bump();
                    }
                }
                Some('\n' | ';') => {
                    self.bump();
                    return Ok(Tok::Sep);
                }
                None => return Ok(Tok::End),
                _ => break,
            }
        }
        let mut text = String::new();
        let mut bare = true;
        let mut name_len = None;
        let mut in_name = true;
        while let Some(c) = self.peek() {
            match c {
                ' ' | '\t' | '\r' | '\n' | ';' => break,
                '=' if in_name && !text.is_empty() && bare => {
                    self.bump();
                    name_len = Some(text.len());
                    in_name = false;
                    text.push('=');
                    continue;
                }
                _ => {}
            }
            let name_ok = if text.is_empty() {
                is_name_start(c)
            } else {
                is_name_char(c)
            };
            if in_name && !name_ok {
                in_name = false;
            }
            match c {
                '\'' => {
                    bare = false;
                    in_name = false;
                    let line = self.line;
                    self.bump();
                    loop {
                        match self.bump() {
                            Some('\'') => break,
                            Some(c) => text.push(c),
                            None => return Err(self.err_at(line, "unterminated single quote")),
                        }
                    }
                }
                '"' => {
                    bare = false;
                    in_name = false;
                    let line = self.line;
                    self.bump();
                    loop {
                        match self.bump() {
                            Some('"') => break,
                            Some('\\') => match self.bump() {
                                Some('\n') => {}
                                Some(c @ ('"' | '\\' | '$' | '`')) => text.push(c),
                                Some(c) => {
                                    text.push('\\');
                                    text.push(c);
                                }
                                None => return Err(self.err_at(line, "unterminated double quote")),
                            },
                            Some('$') => self.expand(vars, &mut text)?,
                            Some(c) => text.push(c),
                            None => return Err(self.err_at(line, "unterminated double quote")),
                        }
                    }
                }
                '\\' => {
                    bare = false;
                    in_name = false;
                    self.bump();
                    match self.bump() {
                        Some('\n') | None => {}
                        Some(c) => text.push(c),
                    }
                }
                '$' => {
                    in_name = false;
                    self.bump();
                    self.expand(vars, &mut text)?;
                }
                _ => {
                    self.bump();
                    text.push(c);
                }
            }
        }
        Ok(Tok::Word(Word {
            text,
            name_len,
            bare: bare && name_len.is_none(),
        }))
    }

    /// After a `$`: `${NAME}` or `$NAME` (anything else stays literal).
    fn expand(&mut self, vars: &Vars, out: &mut String) -> Result<(), MakeConfError> {
        match self.peek() {
            Some('{') => {
                let line = self.line;
                self.bump();
                let mut name = String::new();
                loop {
                    match self.bump() {
                        Some('}') => break,
                        Some(c) if is_name_char(c) => name.push(c),
                        Some(c) => {
                            return Err(self.err_at(
                                line,
                                &format!("unsupported character {c:?} in ${{...}} expansion"),
                            ))
                        }
                        None => return Err(self.err_at(line, "unterminated ${")),
                    }
                }
                out.push_str(vars.get(&name).map(String::as_str).unwrap_or(""));
            }
            Some(c) if is_name_start(c) => {
                let mut name = String::new();
                while let Some(c) = self.peek().filter(|c| is_name_char(*c)) {
                    name.push(c);
                    self.bump();
                }
                out.push_str(vars.get(&name).map(String::as_str).unwrap_or(""));
            }
            _ => out.push('$'),
        }
        Ok(())
    }
}

/// Whether a file in a configuration directory is read (Portage skips hidden files and
/// editor backups).
pub fn is_config_name(name: &str) -> bool {
    !name.starts_with('.') && !name.ends_with('~') && !name.ends_with(".bak")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assignments_quotes_and_expansion() {
        let v = parse(
            "# comment\n\
             COMMON_FLAGS=\"-O2 -pipe\"\n\
             CFLAGS=\"${COMMON_FLAGS} -march=native\"\n\
             CXXFLAGS=$COMMON_FLAGS\n\
             export CHOST='x86_64-pc-linux-gnu'\n\
             LIT='${COMMON_FLAGS}'\n\
             USE=\"a b\n  c\" # trailing comment\n\
             EMPTY=\n\
             A=1 B=${A}2\n\
             UNSET=\"${NOPE}x\"\n",
            "make.conf",
        )
        .unwrap();
        assert_eq!(v["CFLAGS"], "-O2 -pipe -march=native");
        assert_eq!(v["CXXFLAGS"], "-O2 -pipe");
        assert_eq!(v["CHOST"], "x86_64-pc-linux-gnu");
        assert_eq!(v["LIT"], "${COMMON_FLAGS}");
        assert_eq!(v["USE"], "a b\n  c");
        assert_eq!(v["EMPTY"], "");
        assert_eq!(v["B"], "12");
        assert_eq!(v["UNSET"], "x");
    }

    #[test]
    fn later_assignment_replaces_and_no_increment() {
        let v = parse("USE=\"a\"\nUSE=\"${USE} b\"\nUSE=c\n", "f").unwrap();
        assert_eq!(v["USE"], "c");
        let v = parse("USE=\"a\"\nUSE=\"${USE} b\"\n", "f").unwrap();
        assert_eq!(v["USE"], "a b");
    }

    #[test]
    fn escapes_and_continuations() {
        let v = parse(
            "X=\"a \\\"q\\\" \\$HOME\"\nY=one\\\ntwo\nZ=\"line\\\n next\"\n",
            "f",
        )
        .unwrap();
        assert_eq!(v["X"], "a \"q\" $HOME");
        assert_eq!(v["Y"], "onetwo");
        assert_eq!(v["Z"], "line next");
    }

    #[test]
    fn errors_name_file_and_line() {
        let e = parse("A=1\nB=\"open\n", "make.conf").unwrap_err();
        assert_eq!(e.file, "make.conf");
        assert_eq!(e.line, 2);
        assert!(e.to_string().contains("unterminated"), "{e}");
        let e = parse("A=1\njunk here\n", "make.conf").unwrap_err();
        assert_eq!(e.line, 2);
        assert!(e.to_string().starts_with("make.conf:2: "), "{e}");
    }

    #[test]
    fn source_directive() {
        let mut vars = Vars::new();
        parse_into(
            "A=1\nsource extra.conf\nC=\"$B\"\n",
            "make.conf",
            &mut vars,
            &mut |p| (p == "extra.conf").then(|| (p.to_string(), "B=\"$A-2\"\n".to_string())),
        )
        .unwrap();
        assert_eq!(vars["C"], "1-2");
    }
}
