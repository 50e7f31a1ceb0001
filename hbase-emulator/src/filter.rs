//! HBase's filter language (`TScan.filterString`, parsed by HBase's `ParseFilter`), the part
//! of it that happybase users reach for:
//!
//! * row: `PrefixFilter('p')`, `RowFilter(op, 'comparator')`;
//! * column: `ColumnPrefixFilter('p')`, `QualifierFilter(op, 'c')`,
//!   `ColumnPaginationFilter(limit, offset)`;
//! * cell: `ValueFilter(op, 'c')`, `TimestampsFilter(t1, t2, …)`;
//! * `SingleColumnValueFilter('family', 'qualifier', op, 'c'[, filterIfMissing, latestVersionOnly])`;
//! * `KeyOnlyFilter()`, `FirstKeyOnlyFilter()`, `PageFilter(n)`;
//!
//! combined with `AND`, `OR` (HBase's `FilterList` MUST_PASS_ALL / MUST_PASS_ONE; `AND` binds
//! tighter, as in `ParseFilter`) and parentheses. Comparators are HBase's `binary:`,
//! `binaryprefix:`, `substring:` (case-insensitive) and `regexstring:` (Rust `regex` syntax,
//! unanchored like Java's `find`; look-around and back-references are refused). Operators:
//! `<`, `<=`, `=`, `!=`, `>=`, `>`; a comparison reads "cell part OP comparator value".
//! Strings are single-quoted, a quote doubled inside. Anything else is refused with a
//! message naming it, never guessed.
//!
//! **Bounds.** Parsing is recursive descent over a lazy lexer, so a hostile `filterString`
//! can claim neither stack nor memory: nesting deeper than [`MAX_DEPTH`] and more than
//! [`MAX_NODES`] filters are refused with an error (answered as `IllegalArgument`-style
//! `IOError` to that client only), never a stack overflow.
//!
//! **Evaluation.** A filter is applied to one row at a time: the row's selected, visible
//! cells (every stored version, newest first per column) go in, a keep-mask comes out; the
//! version limit is applied to the kept cells afterwards, as HBase's `ScanQueryMatcher`
//! applies filters before counting versions. `AND` narrows the mask child by child; `OR`
//! keeps a cell that any child keeps. `PageFilter` counts rows per scan (HBase: per region)
//! and `KeyOnlyFilter` empties values wherever it appears in the tree.

use std::cmp::Ordering;

/// Deepest nesting of parentheses and filter lists accepted.
pub const MAX_DEPTH: usize = 64;
/// Most filters (leaves and lists) in one filter string.
pub const MAX_NODES: usize = 1_000;

/// A comparison operator of HBase's `CompareOperator`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompareOp {
    Less,
    LessOrEqual,
    Equal,
    NotEqual,
    GreaterOrEqual,
    Greater,
}

impl CompareOp {
    fn parse(s: &str) -> Option<CompareOp> {
        Some(match s {
            "<" => CompareOp::Less,
            "<=" => CompareOp::LessOrEqual,
            "=" => CompareOp::Equal,
            "!=" => CompareOp::NotEqual,
            ">=" => CompareOp::GreaterOrEqual,
            ">" => CompareOp::Greater,
            _ => return None,
        })
    }

    /// Whether `ordering` (the cell part compared with the comparator value) satisfies it.
    fn holds(self, ordering: Ordering) -> bool {
        match self {
            CompareOp::Less => ordering == Ordering::Less,
            CompareOp::LessOrEqual => ordering != Ordering::Greater,
            CompareOp::Equal => ordering == Ordering::Equal,
            CompareOp::NotEqual => ordering != Ordering::Equal,
            CompareOp::GreaterOrEqual => ordering != Ordering::Less,
            CompareOp::Greater => ordering == Ordering::Greater,
        }
    }
}

/// One of HBase's `ByteArrayComparable`s, in the filter language's `type:value` form.
#[derive(Debug, Clone)]
pub enum Comparator {
    Binary(Vec<u8>),
    BinaryPrefix(Vec<u8>),
    /// Lower-cased: the match is case-insensitive, as HBase's `SubstringComparator`.
    Substring(Vec<u8>),
    Regex(regex::bytes::Regex),
}

impl PartialEq for Comparator {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Comparator::Binary(a), Comparator::Binary(b))
            | (Comparator::BinaryPrefix(a), Comparator::BinaryPrefix(b))
            | (Comparator::Substring(a), Comparator::Substring(b)) => a == b,
            (Comparator::Regex(a), Comparator::Regex(b)) => a.as_str() == b.as_str(),
            _ => false,
        }
    }
}

impl Comparator {
    fn parse(spec: &[u8]) -> Result<Comparator, String> {
        let colon = spec.iter().position(|&b| b == b':').ok_or_else(|| {
            format!("comparator {:?} lacks a type (binary:, binaryprefix:, substring:, regexstring:)", show(spec))
        })?;
        let (kind, value) = (&spec[..colon], &spec[colon + 1..]);
        match kind {
            b"binary" => Ok(Comparator::Binary(value.to_vec())),
            b"binaryprefix" => Ok(Comparator::BinaryPrefix(value.to_vec())),
            b"substring" => Ok(Comparator::Substring(value.to_ascii_lowercase())),
            b"regexstring" => {
                let pattern = std::str::from_utf8(value).map_err(|_| "regexstring: is not UTF-8".to_string())?;
                regex::bytes::RegexBuilder::new(pattern)
                    .size_limit(1 << 20)
                    .build()
                    .map(Comparator::Regex)
                    .map_err(|e| format!("bad regexstring: {e}"))
            }
            other => Err(format!("comparator type {:?} is not supported by the emulator", show(other))),
        }
    }

    /// Whether `part OP comparator` holds. Substring and regex comparators only answer
    /// `=` and `!=` meaningfully (match / no match), as in HBase.
    fn test(&self, op: CompareOp, part: &[u8]) -> bool {
        let ordering = match self {
            Comparator::Binary(v) => part.cmp(v),
            Comparator::BinaryPrefix(v) => part[..part.len().min(v.len())].cmp(v),
            Comparator::Substring(s) => {
                let found = s.is_empty() || part.to_ascii_lowercase().windows(s.len()).any(|w| w == s.as_slice());
                if found {
                    Ordering::Equal
                } else {
                    Ordering::Less
                }
            }
            Comparator::Regex(r) => {
                if r.is_match(part) {
                    Ordering::Equal
                } else {
                    Ordering::Less
                }
            }
        };
        op.holds(ordering)
    }
}

/// One filter of the tree.
#[derive(Debug, Clone, PartialEq)]
pub enum Node {
    /// `FilterList` MUST_PASS_ALL.
    And(Vec<Node>),
    /// `FilterList` MUST_PASS_ONE.
    Or(Vec<Node>),
    Prefix(Vec<u8>),
    Row(CompareOp, Comparator),
    ColumnPrefix(Vec<u8>),
    Qualifier(CompareOp, Comparator),
    Value(CompareOp, Comparator),
    Timestamps(Vec<i64>),
    SingleColumnValue {
        family: Vec<u8>,
        qualifier: Vec<u8>,
        op: CompareOp,
        comparator: Comparator,
        filter_if_missing: bool,
        latest_version_only: bool,
    },
    ColumnPagination {
        limit: usize,
        offset: usize,
    },
    KeyOnly,
    FirstKeyOnly,
    Page(u64),
}

/// What a filter sees of one cell.
#[derive(Debug, Clone, Copy)]
pub struct CellRef<'a> {
    pub family: &'a [u8],
    pub qualifier: &'a [u8],
    pub ts: i64,
    pub value: &'a [u8],
}

/// A parsed filter string; the default (empty string) keeps everything.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Filter {
    root: Option<Node>,
    /// Row prefixes every row must have (the `PrefixFilter`s of the top-level `AND`): a
    /// prefix scan reads only its key range.
    pub row_prefixes: Vec<Vec<u8>>,
    /// A `KeyOnlyFilter` appears somewhere: values are returned empty.
    pub key_only: bool,
    /// The smallest `PageFilter`: rows per scan.
    pub page_size: Option<u64>,
}

impl Filter {
    /// A filter that keeps the rows starting with `prefix` (`scannerOpenWithPrefix`).
    pub fn prefix(prefix: Vec<u8>) -> Filter {
        Filter { root: Some(Node::Prefix(prefix.clone())), row_prefixes: vec![prefix], ..Filter::default() }
    }

    /// Whether the filter keeps every cell (nothing to evaluate per row).
    pub fn is_pass_all(&self) -> bool {
        self.root.is_none()
    }

    /// A quick check on the row key alone: `false` means no cell of the row can pass.
    pub fn row_may_match(&self, row: &[u8]) -> bool {
        self.row_prefixes.iter().all(|p| row.starts_with(p))
    }

    /// Which of a row's `cells` pass (same order as the cells).
    pub fn keep(&self, row: &[u8], cells: &[CellRef<'_>]) -> Vec<bool> {
        let mut mask = vec![true; cells.len()];
        if let Some(root) = &self.root {
            root.narrow(row, cells, &mut mask);
        }
        mask
    }
}

impl Node {
    /// Narrows `mask` to the cells this filter keeps among those still kept.
    fn narrow(&self, row: &[u8], cells: &[CellRef<'_>], mask: &mut [bool]) {
        let retain = |mask: &mut [bool], keep: &dyn Fn(&CellRef<'_>) -> bool| {
            for (m, c) in mask.iter_mut().zip(cells) {
                *m = *m && keep(c);
            }
        };
        let whole_row = |mask: &mut [bool], pass: bool| {
            if !pass {
                mask.iter_mut().for_each(|m| *m = false);
            }
        };
        match self {
            Node::And(children) => {
                for child in children {
                    child.narrow(row, cells, mask);
                }
            }
            Node::Or(children) => {
                let mut any = vec![false; mask.len()];
                for child in children {
                    let mut m = mask.to_vec();
                    child.narrow(row, cells, &mut m);
                    for (a, b) in any.iter_mut().zip(m) {
                        *a = *a || b;
                    }
                }
                mask.copy_from_slice(&any);
            }
            Node::Prefix(p) => whole_row(mask, row.starts_with(p)),
            Node::Row(op, c) => whole_row(mask, c.test(*op, row)),
            Node::ColumnPrefix(p) => retain(mask, &|c| c.qualifier.starts_with(p)),
            Node::Qualifier(op, cmp) => retain(mask, &|c| cmp.test(*op, c.qualifier)),
            Node::Value(op, cmp) => retain(mask, &|c| cmp.test(*op, c.value)),
            Node::Timestamps(list) => retain(mask, &|c| list.binary_search(&c.ts).is_ok()),
            Node::SingleColumnValue { family, qualifier, op, comparator, filter_if_missing, latest_version_only } => {
                let mut column =
                    cells.iter().filter(|c| c.family == family.as_slice() && c.qualifier == qualifier.as_slice());
                let pass = if *latest_version_only {
                    match column.next() {
                        Some(c) => comparator.test(*op, c.value),
                        None => !filter_if_missing,
                    }
                } else {
                    let mut seen = false;
                    let mut any = false;
                    for c in column {
                        seen = true;
                        any = any || comparator.test(*op, c.value);
                    }
                    if seen {
                        any
                    } else {
                        !filter_if_missing
                    }
                };
                whole_row(mask, pass);
            }
            Node::ColumnPagination { limit, offset } => {
                let mut column_index = 0usize;
                let mut previous: Option<(&[u8], &[u8])> = None;
                for (m, c) in mask.iter_mut().zip(cells) {
                    if !*m {
                        continue;
                    }
                    let this = (c.family, c.qualifier);
                    if let Some(p) = previous {
                        if p != this {
                            column_index += 1;
                        }
                    }
                    previous = Some(this);
                    *m = column_index >= *offset && column_index - offset < *limit;
                }
            }
            Node::FirstKeyOnly => {
                let mut first = true;
                for m in mask.iter_mut() {
                    if *m {
                        *m = first;
                        first = false;
                    }
                }
            }
            Node::KeyOnly | Node::Page(_) => {}
        }
    }
}

fn show(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Ident(String),
    Str(Vec<u8>),
    Int(i64),
    Op(String),
    Open,
    Close,
    Comma,
}

/// Recursive descent over a lazy lexer: one token of look-ahead, nothing else buffered.
struct Parser<'a> {
    input: &'a [u8],
    pos: usize,
    peeked: Option<Token>,
    depth: usize,
    nodes: usize,
}

impl Parser<'_> {
    fn lex(&mut self) -> Result<Option<Token>, String> {
        let input = self.input;
        while self.pos < input.len() && input[self.pos].is_ascii_whitespace() {
            self.pos += 1;
        }
        let Some(&c) = input.get(self.pos) else { return Ok(None) };
        let start = self.pos;
        self.pos += 1;
        let token = match c {
            b'(' => Token::Open,
            b')' => Token::Close,
            b',' => Token::Comma,
            b'\'' => {
                let mut s = Vec::new();
                loop {
                    match input.get(self.pos) {
                        None => return Err("unterminated quoted string".into()),
                        Some(b'\'') if input.get(self.pos + 1) == Some(&b'\'') => {
                            s.push(b'\'');
                            self.pos += 2;
                        }
                        Some(b'\'') => {
                            self.pos += 1;
                            break;
                        }
                        Some(&b) => {
                            s.push(b);
                            self.pos += 1;
                        }
                    }
                }
                Token::Str(s)
            }
            b'0'..=b'9' | b'-' => {
                while self.pos < input.len() && input[self.pos].is_ascii_digit() {
                    self.pos += 1;
                }
                let text = show(&input[start..self.pos]);
                Token::Int(text.parse::<i64>().map_err(|_| format!("bad number {text:?}"))?)
            }
            b'=' | b'!' | b'<' | b'>' => {
                while self.pos < input.len() && matches!(input[self.pos], b'=' | b'!' | b'<' | b'>') {
                    self.pos += 1;
                }
                Token::Op(show(&input[start..self.pos]))
            }
            c if c.is_ascii_alphabetic() => {
                while self.pos < input.len() && (input[self.pos].is_ascii_alphanumeric() || input[self.pos] == b'_') {
                    self.pos += 1;
                }
                Token::Ident(show(&input[start..self.pos]))
            }
            other => return Err(format!("unexpected character {:?} at {start}", char::from(other))),
        };
        Ok(Some(token))
    }

    fn peek(&mut self) -> Result<Option<&Token>, String> {
        if self.peeked.is_none() {
            self.peeked = self.lex()?;
        }
        Ok(self.peeked.as_ref())
    }

    fn next(&mut self) -> Result<Option<Token>, String> {
        match self.peeked.take() {
            Some(t) => Ok(Some(t)),
            None => self.lex(),
        }
    }

    fn expect(&mut self, want: &Token) -> Result<(), String> {
        match self.next()? {
            Some(t) if &t == want => Ok(()),
            other => Err(format!("expected {want:?}, found {other:?}")),
        }
    }

    fn is_keyword(&mut self, word: &str) -> Result<bool, String> {
        Ok(matches!(self.peek()?, Some(Token::Ident(w)) if w.eq_ignore_ascii_case(word)))
    }

    fn count_node(&mut self) -> Result<(), String> {
        self.nodes += 1;
        if self.nodes > MAX_NODES {
            return Err(format!("the filter has more than {MAX_NODES} filters"));
        }
        Ok(())
    }

    /// or := and (OR and)*
    fn or(&mut self) -> Result<Node, String> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(format!("the filter is nested deeper than {MAX_DEPTH} levels"));
        }
        let mut children = vec![self.and()?];
        while self.is_keyword("OR")? {
            self.next()?;
            children.push(self.and()?);
        }
        self.depth -= 1;
        if children.len() == 1 {
            return Ok(children.pop().unwrap_or(Node::And(Vec::new())));
        }
        self.count_node()?;
        Ok(Node::Or(children))
    }

    /// and := term (AND term)*
    fn and(&mut self) -> Result<Node, String> {
        let mut children = vec![self.term()?];
        while self.is_keyword("AND")? {
            self.next()?;
            children.push(self.term()?);
        }
        if children.len() == 1 {
            return Ok(children.pop().unwrap_or(Node::And(Vec::new())));
        }
        self.count_node()?;
        Ok(Node::And(children))
    }

    /// term := '(' or ')' | Name '(' args ')'
    fn term(&mut self) -> Result<Node, String> {
        match self.next()? {
            Some(Token::Open) => {
                let node = self.or()?;
                self.expect(&Token::Close)?;
                Ok(node)
            }
            Some(Token::Ident(word)) if ["SKIP", "WHILE", "NOT"].iter().any(|k| word.eq_ignore_ascii_case(k)) => {
                Err(format!("operator {word} is not supported by the emulator (only AND, OR)"))
            }
            Some(Token::Ident(name)) => {
                self.expect(&Token::Open)?;
                let mut args = Vec::new();
                if self.peek()? == Some(&Token::Close) {
                    self.next()?;
                } else {
                    loop {
                        match self.next()? {
                            Some(t @ (Token::Str(_) | Token::Int(_) | Token::Op(_) | Token::Ident(_))) => {
                                if args.len() >= 10_000 {
                                    return Err(format!("too many arguments to {name}"));
                                }
                                args.push(t)
                            }
                            other => return Err(format!("bad argument {other:?} to {name}")),
                        }
                        match self.next()? {
                            Some(Token::Comma) => continue,
                            Some(Token::Close) => break,
                            other => return Err(format!("expected , or ) after argument, found {other:?}")),
                        }
                    }
                }
                self.count_node()?;
                leaf(&name, args)
            }
            other => Err(format!("expected a filter, found {other:?}")),
        }
    }
}

fn op_arg(name: &str, t: &Token) -> Result<CompareOp, String> {
    match t {
        Token::Op(s) => CompareOp::parse(s).ok_or_else(|| format!("bad comparison operator {s:?} in {name}")),
        other => Err(format!("expected a comparison operator in {name}, found {other:?}")),
    }
}

fn bool_arg(name: &str, t: &Token) -> Result<bool, String> {
    match t {
        Token::Ident(w) if w.eq_ignore_ascii_case("true") => Ok(true),
        Token::Ident(w) if w.eq_ignore_ascii_case("false") => Ok(false),
        other => Err(format!("expected true or false in {name}, found {other:?}")),
    }
}

fn non_negative(name: &str, n: i64) -> Result<usize, String> {
    usize::try_from(n).map_err(|_| format!("{name} needs a non-negative number, got {n}"))
}

/// Builds one filter from its name and arguments.
fn leaf(name: &str, args: Vec<Token>) -> Result<Node, String> {
    use Token::{Int, Str};
    let node = match (name, args.as_slice()) {
        ("PrefixFilter", [Str(p)]) => Node::Prefix(p.clone()),
        ("ColumnPrefixFilter", [Str(p)]) => Node::ColumnPrefix(p.clone()),
        ("KeyOnlyFilter", []) => Node::KeyOnly,
        ("FirstKeyOnlyFilter", []) => Node::FirstKeyOnly,
        ("PageFilter", [Int(n)]) => Node::Page(non_negative(name, *n)? as u64),
        ("RowFilter", [op, Str(c)]) => Node::Row(op_arg(name, op)?, Comparator::parse(c)?),
        ("QualifierFilter", [op, Str(c)]) => Node::Qualifier(op_arg(name, op)?, Comparator::parse(c)?),
        ("ValueFilter", [op, Str(c)]) => Node::Value(op_arg(name, op)?, Comparator::parse(c)?),
        ("ColumnPaginationFilter", [Int(limit), Int(offset)]) => {
            Node::ColumnPagination { limit: non_negative(name, *limit)?, offset: non_negative(name, *offset)? }
        }
        ("TimestampsFilter", list) => {
            let mut ts = Vec::with_capacity(list.len());
            for t in list {
                match t {
                    Int(n) if *n >= 0 => ts.push(*n),
                    other => return Err(format!("TimestampsFilter takes non-negative timestamps, found {other:?}")),
                }
            }
            ts.sort_unstable();
            Node::Timestamps(ts)
        }
        ("SingleColumnValueFilter", [Str(family), Str(qualifier), op, Str(c), rest @ ..]) => {
            let (filter_if_missing, latest_version_only) = match rest {
                [] => (false, true),
                [a, b] => (bool_arg(name, a)?, bool_arg(name, b)?),
                _ => return Err(format!("bad arguments to {name}: {args:?}")),
            };
            Node::SingleColumnValue {
                family: family.clone(),
                qualifier: qualifier.clone(),
                op: op_arg(name, op)?,
                comparator: Comparator::parse(c)?,
                filter_if_missing,
                latest_version_only,
            }
        }
        (
            "PrefixFilter"
            | "ColumnPrefixFilter"
            | "KeyOnlyFilter"
            | "FirstKeyOnlyFilter"
            | "PageFilter"
            | "RowFilter"
            | "QualifierFilter"
            | "ValueFilter"
            | "ColumnPaginationFilter"
            | "SingleColumnValueFilter",
            _,
        ) => return Err(format!("bad arguments to {name}: {args:?}")),
        _ => return Err(format!("filter {name} is not supported by the emulator")),
    };
    Ok(node)
}

/// Collects what the store uses outside per-row evaluation: the top-level `AND`'s row
/// prefixes, and `KeyOnlyFilter` / `PageFilter` anywhere.
fn collect(node: &Node, top_level_and: bool, f: &mut Filter) {
    match node {
        Node::And(children) => children.iter().for_each(|c| collect(c, top_level_and, f)),
        Node::Or(children) => children.iter().for_each(|c| collect(c, false, f)),
        Node::Prefix(p) if top_level_and => f.row_prefixes.push(p.clone()),
        Node::KeyOnly => f.key_only = true,
        Node::Page(n) => f.page_size = Some(f.page_size.map_or(*n, |m| m.min(*n))),
        _ => {}
    }
}

/// Parses a filter string; an empty string is no filter.
pub fn parse(input: &[u8]) -> Result<Filter, String> {
    let mut parser = Parser { input, pos: 0, peeked: None, depth: 0, nodes: 0 };
    if parser.peek()?.is_none() {
        return Ok(Filter::default());
    }
    let root = parser.or()?;
    if let Some(t) = parser.next()? {
        return Err(format!("unexpected {t:?} after the filter"));
    }
    let mut filter = Filter::default();
    collect(&root, true, &mut filter);
    filter.root = Some(root);
    Ok(filter)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cell<'a>(family: &'a str, qualifier: &'a str, ts: i64, value: &'a str) -> CellRef<'a> {
        CellRef { family: family.as_bytes(), qualifier: qualifier.as_bytes(), ts, value: value.as_bytes() }
    }

    fn kept(filter: &str, row: &str, cells: &[CellRef<'_>]) -> Vec<bool> {
        parse(filter.as_bytes()).unwrap().keep(row.as_bytes(), cells)
    }

    #[test]
    fn parses_prefix_filter_with_quotes_and_spaces() {
        let f = parse(b"PrefixFilter ('007|it''s')").unwrap();
        assert_eq!(f.row_prefixes, vec![b"007|it's".to_vec()]);
        assert!(f.row_may_match(b"007|it's here"));
        assert!(!f.row_may_match(b"008|"));
    }

    #[test]
    fn conjunctions_collect_prefixes_pages_and_key_only() {
        let f =
            parse(b"(PrefixFilter('a') AND KeyOnlyFilter()) AND PageFilter(10) AND ColumnPrefixFilter('x')").unwrap();
        assert_eq!(f.row_prefixes, vec![b"a".to_vec()]);
        assert!(f.key_only);
        assert_eq!(f.page_size, Some(10));
        let cells = [cell("f", "xy", 1, "v"), cell("f", "yx", 1, "v")];
        assert_eq!(f.keep(b"ab", &cells), vec![true, false]);
        assert_eq!(f.keep(b"b", &cells), vec![false, false]);
    }

    #[test]
    fn or_keeps_what_any_branch_keeps_and_and_binds_tighter() {
        let cells = [cell("f", "a", 1, "1"), cell("f", "b", 1, "2"), cell("f", "c", 1, "3")];
        let f = "QualifierFilter(=, 'binary:a') OR ValueFilter(=, 'binary:3')";
        assert_eq!(kept(f, "r", &cells), vec![true, false, true]);
        // a OR (b AND c): b AND c keeps nothing here.
        let f = "QualifierFilter(=,'binary:a') OR QualifierFilter(=,'binary:b') AND ValueFilter(=,'binary:3')";
        assert_eq!(kept(f, "r", &cells), vec![true, false, false]);
        // Prefixes under OR do not narrow the scan range.
        assert!(parse(b"PrefixFilter('a') OR PrefixFilter('b')").unwrap().row_prefixes.is_empty());
        assert_eq!(kept("PrefixFilter('a') OR PrefixFilter('b')", "bx", &cells), vec![true; 3]);
        assert_eq!(kept("PrefixFilter('a') OR PrefixFilter('b')", "cx", &cells), vec![false; 3]);
    }

    #[test]
    fn comparators_and_operators_follow_hbase() {
        let cells = [cell("f", "q", 1, "Hello World")];
        for (f, want) in [
            ("ValueFilter(=, 'binary:Hello World')", true),
            ("ValueFilter(!=, 'binary:Hello World')", false),
            ("ValueFilter(>, 'binary:Hello')", true),
            ("ValueFilter(<, 'binary:Hello')", false),
            ("ValueFilter(=, 'binaryprefix:Hell')", true),
            ("ValueFilter(=, 'substring:WORLD')", true),
            ("ValueFilter(!=, 'substring:moon')", true),
            ("ValueFilter(=, 'regexstring:W.rld$')", true),
            ("ValueFilter(=, 'regexstring:^World')", false),
        ] {
            assert_eq!(kept(f, "r", &cells), vec![want], "{f}");
        }
        assert_eq!(kept("RowFilter(<=, 'binary:m')", "abc", &cells), vec![true]);
        assert_eq!(kept("RowFilter(>=, 'binary:m')", "abc", &cells), vec![false]);
    }

    #[test]
    fn single_column_value_filter_tests_the_latest_version_and_missing_columns() {
        let cells = [cell("f", "a", 2, "new"), cell("f", "a", 1, "old"), cell("f", "b", 1, "x")];
        let row = |f: &str| kept(f, "r", &cells);
        assert_eq!(row("SingleColumnValueFilter('f', 'a', =, 'binary:new')"), vec![true; 3]);
        assert_eq!(row("SingleColumnValueFilter('f', 'a', =, 'binary:old')"), vec![false; 3]);
        assert_eq!(row("SingleColumnValueFilter('f', 'a', =, 'binary:old', false, false)"), vec![true; 3]);
        assert_eq!(row("SingleColumnValueFilter('f', 'zz', =, 'binary:x')"), vec![true; 3]);
        assert_eq!(row("SingleColumnValueFilter('f', 'zz', =, 'binary:x', true, true)"), vec![false; 3]);
    }

    #[test]
    fn pagination_timestamps_and_first_key_only() {
        let cells = [cell("f", "a", 2, "1"), cell("f", "a", 1, "0"), cell("f", "b", 5, "2"), cell("g", "a", 7, "3")];
        assert_eq!(kept("ColumnPaginationFilter(1, 1)", "r", &cells), vec![false, false, true, false]);
        assert_eq!(kept("ColumnPaginationFilter(2, 0)", "r", &cells), vec![true, true, true, false]);
        assert_eq!(kept("TimestampsFilter(7, 1)", "r", &cells), vec![false, true, false, true]);
        assert_eq!(kept("FirstKeyOnlyFilter()", "r", &cells), vec![true, false, false, false]);
    }

    #[test]
    fn refuses_what_it_does_not_know() {
        assert!(parse(b"DependentColumnFilter('f', 'q')").unwrap_err().contains("DependentColumnFilter"));
        assert!(parse(b"SKIP ValueFilter(=, 'binary:x')").unwrap_err().contains("SKIP"));
        assert!(parse(b"ValueFilter(=, 'nocolon')").is_err());
        assert!(parse(b"ValueFilter(=, 'long:1')").unwrap_err().contains("long"));
        assert!(parse(b"ValueFilter(=, 'regexstring:(a')").is_err());
        assert!(parse(b"PrefixFilter('a'").is_err());
        assert!(parse(b"PrefixFilter(1)").is_err());
        assert!(parse(b"PrefixFilter('a') junk").is_err());
        assert_eq!(parse(b"  ").unwrap(), Filter::default());
    }

    #[test]
    fn deep_nesting_and_huge_filters_are_refused_not_overflowed() {
        let open = vec![b'('; 100_000];
        assert!(parse(&open).unwrap_err().contains("nested deeper"));
        let mut nested = "(".repeat(MAX_DEPTH - 1);
        nested.push_str("KeyOnlyFilter()");
        nested.push_str(&")".repeat(MAX_DEPTH - 1));
        assert!(parse(nested.as_bytes()).is_ok());
        let many = vec!["KeyOnlyFilter()"; MAX_NODES + 1].join(" AND ");
        assert!(parse(many.as_bytes()).unwrap_err().contains("more than"));
    }
}
