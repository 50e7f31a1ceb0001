//! The subset of HBase's filter language (`TScan.filterString`, parsed by HBase's
//! `ParseFilter`) that the emulator understands:
//!
//! * `PrefixFilter('row prefix')` — rows starting with the prefix;
//! * `ColumnPrefixFilter('qualifier prefix')` — cells whose qualifier starts with it;
//! * `KeyOnlyFilter()` — cells with empty values;
//! * `FirstKeyOnlyFilter()` — the first cell of each row only;
//! * `PageFilter(n)` — at most `n` rows (HBase applies it per region; here per scan);
//!
//! combined with `AND` and parentheses. Strings are single-quoted, a quote doubled inside.
//! Anything else is refused with a message naming it, never guessed.

/// A parsed filter: the conjunction of its parts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Every row prefix a row must start with.
    pub row_prefixes: Vec<Vec<u8>>,
    /// Every prefix a qualifier must start with.
    pub column_prefixes: Vec<Vec<u8>>,
    pub key_only: bool,
    pub first_key_only: bool,
    pub page_size: Option<u64>,
}

impl Filter {
    /// Whether a row passes the row-level parts.
    pub fn row_matches(&self, row: &[u8]) -> bool {
        self.row_prefixes.iter().all(|p| row.starts_with(p))
    }

    /// Whether a qualifier passes the column-level parts.
    pub fn qualifier_matches(&self, qualifier: &[u8]) -> bool {
        self.column_prefixes.iter().all(|p| qualifier.starts_with(p))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Ident(String),
    Str(Vec<u8>),
    Int(i64),
    /// A comparison operator (`=`, `!=`, `<`, …): only used by filters we refuse.
    Op(String),
    Open,
    Close,
    Comma,
}

fn tokenize(input: &[u8]) -> Result<Vec<Token>, String> {
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < input.len() {
        let c = input[i];
        match c {
            b' ' | b'\t' | b'\n' | b'\r' => i += 1,
            b'(' => {
                tokens.push(Token::Open);
                i += 1;
            }
            b')' => {
                tokens.push(Token::Close);
                i += 1;
            }
            b',' => {
                tokens.push(Token::Comma);
                i += 1;
            }
            b'\'' => {
                let mut s = Vec::new();
                i += 1;
                loop {
                    match input.get(i) {
                        None => return Err("unterminated quoted string".into()),
                        Some(b'\'') if input.get(i + 1) == Some(&b'\'') => {
                            s.push(b'\'');
                            i += 2;
                        }
                        Some(b'\'') => {
                            i += 1;
                            break;
                        }
                        Some(&b) => {
                            s.push(b);
                            i += 1;
                        }
                    }
                }
                tokens.push(Token::Str(s));
            }
            b'0'..=b'9' | b'-' => {
                let start = i;
                i += 1;
                while i < input.len() && input[i].is_ascii_digit() {
                    i += 1;
                }
                let text = String::from_utf8_lossy(&input[start..i]).into_owned();
                let n = text.parse::<i64>().map_err(|_| format!("bad number {text:?}"))?;
                tokens.push(Token::Int(n));
            }
            b'=' | b'!' | b'<' | b'>' => {
                let start = i;
                while i < input.len() && matches!(input[i], b'=' | b'!' | b'<' | b'>') {
                    i += 1;
                }
                tokens.push(Token::Op(String::from_utf8_lossy(&input[start..i]).into_owned()));
            }
            c if c.is_ascii_alphabetic() => {
                let start = i;
                while i < input.len() && (input[i].is_ascii_alphanumeric() || input[i] == b'_') {
                    i += 1;
                }
                tokens.push(Token::Ident(String::from_utf8_lossy(&input[start..i]).into_owned()));
            }
            other => return Err(format!("unexpected character {:?} at {i}", char::from(other))),
        }
    }
    Ok(tokens)
}

struct Parser {
    tokens: Vec<Token>,
    pos: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.pos)
    }

    fn next(&mut self) -> Option<Token> {
        let t = self.tokens.get(self.pos).cloned();
        self.pos += 1;
        t
    }

    fn expect(&mut self, want: &Token) -> Result<(), String> {
        match self.next() {
            Some(t) if &t == want => Ok(()),
            other => Err(format!("expected {want:?}, found {other:?}")),
        }
    }

    /// expr := term (AND term)*
    fn expr(&mut self, out: &mut Filter) -> Result<(), String> {
        self.term(out)?;
        loop {
            match self.peek() {
                Some(Token::Ident(op)) if op.eq_ignore_ascii_case("AND") => {
                    self.pos += 1;
                    self.term(out)?;
                }
                Some(Token::Ident(op)) => return Err(format!("operator {op} is not supported (only AND)")),
                _ => return Ok(()),
            }
        }
    }

    /// term := '(' expr ')' | Name '(' args ')'
    fn term(&mut self, out: &mut Filter) -> Result<(), String> {
        match self.next() {
            Some(Token::Open) => {
                self.expr(out)?;
                self.expect(&Token::Close)
            }
            Some(Token::Ident(name)) => {
                self.expect(&Token::Open)?;
                let mut args = Vec::new();
                if self.peek() != Some(&Token::Close) {
                    loop {
                        match self.next() {
                            Some(t @ (Token::Str(_) | Token::Int(_) | Token::Op(_))) => args.push(t),
                            other => return Err(format!("bad argument {other:?} to {name}")),
                        }
                        match self.next() {
                            Some(Token::Comma) => continue,
                            Some(Token::Close) => break,
                            other => return Err(format!("expected , or ) after argument, found {other:?}")),
                        }
                    }
                } else {
                    self.pos += 1;
                }
                apply(&name, args, out)
            }
            other => Err(format!("expected a filter, found {other:?}")),
        }
    }
}

fn apply(name: &str, args: Vec<Token>, out: &mut Filter) -> Result<(), String> {
    match (name, args.as_slice()) {
        ("PrefixFilter", [Token::Str(p)]) => out.row_prefixes.push(p.clone()),
        ("ColumnPrefixFilter", [Token::Str(p)]) => out.column_prefixes.push(p.clone()),
        ("KeyOnlyFilter", []) => out.key_only = true,
        ("FirstKeyOnlyFilter", []) => out.first_key_only = true,
        ("PageFilter", [Token::Int(n)]) if *n >= 0 => {
            let n = *n as u64;
            out.page_size = Some(out.page_size.map_or(n, |m| m.min(n)));
        }
        ("PrefixFilter" | "ColumnPrefixFilter" | "KeyOnlyFilter" | "FirstKeyOnlyFilter" | "PageFilter", _) => {
            return Err(format!("bad arguments to {name}: {args:?}"))
        }
        _ => return Err(format!("filter {name} is not supported by the emulator")),
    }
    Ok(())
}

/// Parses a filter string; an empty string is no filter.
pub fn parse(input: &[u8]) -> Result<Filter, String> {
    let tokens = tokenize(input)?;
    let mut filter = Filter::default();
    if tokens.is_empty() {
        return Ok(filter);
    }
    let mut parser = Parser { tokens, pos: 0 };
    parser.expr(&mut filter)?;
    if parser.pos != parser.tokens.len() {
        return Err(format!("unexpected {:?} after the filter", parser.tokens[parser.pos]));
    }
    Ok(filter)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_prefix_filter_with_quotes_and_spaces() {
        let f = parse(b"PrefixFilter ('007|it''s')").unwrap();
        assert_eq!(f.row_prefixes, vec![b"007|it's".to_vec()]);
        assert!(f.row_matches(b"007|it's here"));
        assert!(!f.row_matches(b"008|"));
    }

    #[test]
    fn parses_conjunctions() {
        let f =
            parse(b"(PrefixFilter('a') AND KeyOnlyFilter()) AND PageFilter(10) AND ColumnPrefixFilter('x')").unwrap();
        assert_eq!(f.row_prefixes, vec![b"a".to_vec()]);
        assert!(f.key_only);
        assert_eq!(f.page_size, Some(10));
        assert!(f.qualifier_matches(b"xy"));
        assert!(!f.qualifier_matches(b"yx"));
    }

    #[test]
    fn refuses_what_it_does_not_know() {
        assert!(parse(b"ValueFilter(=, 'binary:x')").unwrap_err().contains("ValueFilter"));
        assert!(parse(b"PrefixFilter('a') OR PrefixFilter('b')").unwrap_err().contains("OR"));
        assert!(parse(b"PrefixFilter('a'").is_err());
        assert!(parse(b"PrefixFilter(1)").is_err());
        assert!(parse(b"PrefixFilter('a') junk").is_err());
        assert_eq!(parse(b"  ").unwrap(), Filter::default());
    }
}
