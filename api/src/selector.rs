//! Label and field selectors, with Kubernetes' syntax and matching rules.
//!
//! [`LabelSelector`] accepts the full set-based syntax of `?labelSelector=`
//! (`a=b`, `a==b`, `a!=b`, `a in (x,y)`, `a notin (x)`, `a`, `!a`, and the internal
//! `a>1` / `a<1`); [`FieldSelector`] accepts the equality syntax of `?fieldSelector=`
//! (`f=v`, `f==v`, `f!=v`, with `\,`, `\=` and `\\` escapes in values). Which fields a
//! kind supports is decided in [`crate::fields`].

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use k8s_openapi::apimachinery::pkg::apis::meta::v1 as metav1;

/// What is wrong with a selector.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The label selector text does not follow the grammar.
    #[error("unable to parse label selector: found '{found}', expected: {expected}")]
    Syntax {
        found: String,
        expected: &'static str,
    },
    /// A label key is not a valid qualified name.
    #[error("invalid label key {key:?}: {reason}")]
    InvalidKey { key: String, reason: String },
    /// A label value is not a valid label value.
    #[error("invalid label value {value:?} for key {key:?}: {reason}")]
    InvalidValue {
        key: String,
        value: String,
        reason: String,
    },
    /// The values do not fit the operator (count, or integers for `>`/`<`).
    #[error("invalid values for label key {key:?}: {reason}")]
    InvalidValues { key: String, reason: &'static str },
    /// A `matchExpressions` operator other than In, NotIn, Exists or DoesNotExist.
    #[error("{0:?} is not a valid label selector operator")]
    UnknownOperator(String),
    /// A field selector term has no `=`, `==` or `!=`.
    #[error("invalid field selector: '{selector}'; can't understand '{term}'")]
    FieldTerm { selector: String, term: String },
    /// A backslash in a field selector value is followed by something other than `\`, `,` or `=`.
    #[error("invalid field selector: invalid escape sequence: {0}")]
    InvalidEscape(String),
    /// A `,` or `=` appears unescaped in a field selector value.
    #[error("invalid field selector: unescaped character in value: {0:?}")]
    UnescapedCharacter(char),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

// ---------------------------------------------------------------------------------------
// Label selectors
// ---------------------------------------------------------------------------------------

/// How a [`Requirement`] relates its key and values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operator {
    /// `key in (v1,v2)`: the label exists and its value is one of the values.
    In,
    /// `key notin (v1,v2)`: the label is absent or its value is none of the values.
    NotIn,
    /// `key=v`.
    Equals,
    /// `key==v` (same meaning as `=`, kept for the canonical string).
    DoubleEquals,
    /// `key!=v`: the label is absent or has another value.
    NotEquals,
    /// `key`: the label exists.
    Exists,
    /// `!key`: the label does not exist.
    DoesNotExist,
    /// `key>n` (internal use): the label is an integer greater than `n`.
    GreaterThan,
    /// `key<n` (internal use): the label is an integer less than `n`.
    LessThan,
}

/// One condition of a label selector: a key, an operator and (sorted, distinct) values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirement {
    key: String,
    operator: Operator,
    values: Vec<String>,
}

impl Requirement {
    /// Builds a requirement, validating the key, the values and their number.
    ///
    /// # Errors
    /// An invalid key or value, no values for `in`/`notin`, not exactly one value for
    /// `=`/`==`/`!=`/`>`/`<`, values for `exists`/`!`, or a non-integer for `>`/`<`.
    pub fn new(
        key: &str,
        operator: Operator,
        values: impl IntoIterator<Item = String>,
    ) -> Result<Self> {
        validate_label_key(key)?;
        let values: Vec<String> = values
            .into_iter()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let bad = |reason| {
            Err(Error::InvalidValues {
                key: key.to_string(),
                reason,
            })
        };
        match operator {
            Operator::In | Operator::NotIn if values.is_empty() => {
                return bad("for 'in', 'notin' operators, values set can't be empty")
            }
            Operator::Equals | Operator::DoubleEquals | Operator::NotEquals
                if values.len() != 1 =>
            {
                return bad("exact-match compatibility requires one single value")
            }
            Operator::Exists | Operator::DoesNotExist if !values.is_empty() => {
                return bad("values set must be empty for exists and does not exist")
            }
            Operator::GreaterThan | Operator::LessThan => {
                if values.len() != 1 {
                    return bad("for 'Gt', 'Lt' operators, exactly one value is required");
                }
                if values.iter().any(|v| v.parse::<i64>().is_err()) {
                    return bad("for 'Gt', 'Lt' operators, the value must be an integer");
                }
            }
            _ => {}
        }
        for value in &values {
            validate_label_value(key, value)?;
        }
        Ok(Self {
            key: key.to_string(),
            operator,
            values,
        })
    }

    /// The label key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// How the key relates to the values.
    pub fn operator(&self) -> Operator {
        self.operator
    }

    /// The values, sorted and without duplicates.
    pub fn values(&self) -> &[String] {
        &self.values
    }

    /// Whether a set of labels satisfies this requirement.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let label = labels.get(&self.key);
        let listed = |v: &String| self.values.iter().any(|x| x == v);
        match self.operator {
            Operator::In | Operator::Equals | Operator::DoubleEquals => label.is_some_and(listed),
            Operator::NotIn | Operator::NotEquals => !label.is_some_and(listed),
            Operator::Exists => label.is_some(),
            Operator::DoesNotExist => label.is_none(),
            Operator::GreaterThan | Operator::LessThan => {
                let (Some(have), Some(want)) = (
                    label.and_then(|v| v.parse::<i64>().ok()),
                    self.values.first().and_then(|v| v.parse::<i64>().ok()),
                ) else {
                    return false;
                };
                if self.operator == Operator::GreaterThan {
                    have > want
                } else {
                    have < want
                }
            }
        }
    }
}

impl fmt::Display for Requirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let key = &self.key;
        let values = self.values.join(",");
        match self.operator {
            Operator::Exists => write!(f, "{key}"),
            Operator::DoesNotExist => write!(f, "!{key}"),
            Operator::Equals => write!(f, "{key}={values}"),
            Operator::DoubleEquals => write!(f, "{key}=={values}"),
            Operator::NotEquals => write!(f, "{key}!={values}"),
            Operator::GreaterThan => write!(f, "{key}>{values}"),
            Operator::LessThan => write!(f, "{key}<{values}"),
            Operator::In => write!(f, "{key} in ({values})"),
            Operator::NotIn => write!(f, "{key} notin ({values})"),
        }
    }
}

/// A label selector: the AND of its requirements, kept sorted by key.
///
/// The empty selector matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector {
    requirements: Vec<Requirement>,
}

impl LabelSelector {
    /// Parses the `?labelSelector=` syntax.
    ///
    /// # Errors
    /// A syntax error, or an invalid key, value or value count, naming the bad part.
    pub fn parse(s: &str) -> Result<Self> {
        let tokens = lex(s);
        let requirements = Parser {
            tokens: &tokens,
            pos: 0,
        }
        .parse()?;
        Ok(Self::from_requirements(requirements))
    }

    /// The selector that matches every object.
    pub fn everything() -> Self {
        Self::default()
    }

    /// A selector requiring every label of `labels` (`k=v,…`), as for a Service's
    /// `spec.selector`. The map is not validated; an empty map selects everything.
    pub fn from_map(labels: &BTreeMap<String, String>) -> Self {
        let requirements = labels
            .iter()
            .map(|(k, v)| Requirement {
                key: k.clone(),
                operator: Operator::Equals,
                values: vec![v.clone()],
            })
            .collect();
        Self::from_requirements(requirements)
    }

    /// Converts a `metav1.LabelSelector` (`matchLabels` + `matchExpressions`).
    ///
    /// An empty selector matches everything, as in Kubernetes. (A *missing* selector
    /// matches nothing; callers holding an `Option` decide that themselves.)
    ///
    /// # Errors
    /// An unknown operator, or an invalid key, value or value count.
    pub fn from_k8s(sel: &metav1::LabelSelector) -> Result<Self> {
        let mut requirements = Vec::new();
        for (key, value) in sel.match_labels.iter().flatten() {
            requirements.push(Requirement::new(key, Operator::Equals, [value.clone()])?);
        }
        for expr in sel.match_expressions.iter().flatten() {
            let operator = match expr.operator.as_str() {
                "In" => Operator::In,
                "NotIn" => Operator::NotIn,
                "Exists" => Operator::Exists,
                "DoesNotExist" => Operator::DoesNotExist,
                other => return Err(Error::UnknownOperator(other.to_string())),
            };
            requirements.push(Requirement::new(
                &expr.key,
                operator,
                expr.values.iter().flatten().cloned(),
            )?);
        }
        Ok(Self::from_requirements(requirements))
    }

    fn from_requirements(mut requirements: Vec<Requirement>) -> Self {
        requirements.sort_by(|a, b| a.key.cmp(&b.key));
        Self { requirements }
    }

    /// Whether the selector has no requirements (and so matches everything).
    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    /// The requirements, sorted by key.
    pub fn requirements(&self) -> &[Requirement] {
        &self.requirements
    }

    /// Whether every requirement holds for `labels`.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.requirements.iter().all(|r| r.matches(labels))
    }

    /// If the selector pins `key` to a single value (`=`, `==` or a one-value `in`), that value.
    pub fn exact(&self, key: &str) -> Option<&str> {
        let r = self.requirements.iter().find(|r| r.key == key)?;
        match (r.operator, r.values.as_slice()) {
            (Operator::Equals | Operator::DoubleEquals | Operator::In, [only]) => Some(only),
            _ => None,
        }
    }
}

/// The canonical string: requirements sorted by key, values sorted, joined by `,`.
impl fmt::Display for LabelSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.requirements.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{r}")?;
        }
        Ok(())
    }
}

/// A lexical token of the label selector syntax, with its text.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    End,
    Identifier(String),
    In,
    NotIn,
    Comma,
    OpenPar,
    ClosedPar,
    Not,
    Equals,
    DoubleEquals,
    NotEquals,
    GreaterThan,
    LessThan,
}

impl Token {
    /// The text the token was read from, for error messages.
    fn text(&self) -> &str {
        match self {
            Token::End => "",
            Token::Identifier(s) => s,
            Token::In => "in",
            Token::NotIn => "notin",
            Token::Comma => ",",
            Token::OpenPar => "(",
            Token::ClosedPar => ")",
            Token::Not => "!",
            Token::Equals => "=",
            Token::DoubleEquals => "==",
            Token::NotEquals => "!=",
            Token::GreaterThan => ">",
            Token::LessThan => "<",
        }
    }

    /// Where a value is expected, the keywords `in` and `notin` are plain identifiers
    /// (`x in (in)` is valid).
    fn as_value(&self) -> Token {
        match self {
            Token::In | Token::NotIn => Token::Identifier(self.text().to_string()),
            other => other.clone(),
        }
    }
}

fn is_label_whitespace(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\r' | '\n')
}

fn is_special(c: char) -> bool {
    matches!(c, '=' | '!' | '(' | ')' | ',' | '>' | '<')
}

/// Splits selector text into tokens, ending with [`Token::End`]. Identifiers run until
/// whitespace or a special character; `!=` and `==` are read greedily.
fn lex(s: &str) -> Vec<Token> {
    let mut tokens = Vec::new();
    let mut rest = s;
    loop {
        rest = rest.trim_start_matches(is_label_whitespace);
        let Some(first) = rest.chars().next() else {
            tokens.push(Token::End);
            return tokens;
        };
        if is_special(first) {
            let (token, len) = if rest.starts_with("!=") {
                (Token::NotEquals, 2)
            } else if rest.starts_with("==") {
                (Token::DoubleEquals, 2)
            } else {
                let token = match first {
                    '=' => Token::Equals,
                    '!' => Token::Not,
                    '(' => Token::OpenPar,
                    ')' => Token::ClosedPar,
                    ',' => Token::Comma,
                    '>' => Token::GreaterThan,
                    _ => Token::LessThan,
                };
                (token, 1)
            };
            tokens.push(token);
            rest = &rest[len..];
        } else {
            let end = rest
                .find(|c| is_special(c) || is_label_whitespace(c))
                .unwrap_or(rest.len());
            let word = &rest[..end];
            tokens.push(match word {
                "in" => Token::In,
                "notin" => Token::NotIn,
                _ => Token::Identifier(word.to_string()),
            });
            rest = &rest[end..];
        }
    }
}

/// A recursive-descent parser over the tokens of one selector.
struct Parser<'a> {
    tokens: &'a [Token],
    pos: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Token {
        self.tokens.get(self.pos).unwrap_or(&Token::End).clone()
    }

    fn next(&mut self) -> Token {
        let t = self.peek();
        self.pos += 1;
        t
    }

    fn syntax(found: &Token, expected: &'static str) -> Error {
        Error::Syntax {
            found: found.text().to_string(),
            expected,
        }
    }

    fn parse(mut self) -> Result<Vec<Requirement>> {
        let mut requirements = Vec::new();
        loop {
            match self.peek().as_value() {
                Token::End => return Ok(requirements),
                Token::Identifier(_) | Token::Not => {}
                other => return Err(Self::syntax(&other, "!, identifier, or 'end of string'")),
            }
            requirements.push(self.requirement()?);
            match self.next() {
                Token::End => return Ok(requirements),
                Token::Comma => match self.peek().as_value() {
                    Token::Identifier(_) | Token::Not => {}
                    other => return Err(Self::syntax(&other, "identifier after ','")),
                },
                other => return Err(Self::syntax(&other, "',' or 'end of string'")),
            }
        }
    }

    fn requirement(&mut self) -> Result<Requirement> {
        let negated = self.peek() == Token::Not;
        if negated {
            self.pos += 1;
        }
        let key = match self.next().as_value() {
            Token::Identifier(key) => key,
            other => return Err(Self::syntax(&other, "identifier")),
        };
        validate_label_key(&key)?;
        let at_end = matches!(self.peek(), Token::End | Token::Comma);
        if negated {
            // `!key` takes no operator; anything after it is reported by the caller.
            return Requirement::new(&key, Operator::DoesNotExist, []);
        }
        if at_end {
            return Requirement::new(&key, Operator::Exists, []);
        }
        let operator = match self.next() {
            Token::In => Operator::In,
            Token::NotIn => Operator::NotIn,
            Token::Equals => Operator::Equals,
            Token::DoubleEquals => Operator::DoubleEquals,
            Token::NotEquals => Operator::NotEquals,
            Token::GreaterThan => Operator::GreaterThan,
            Token::LessThan => Operator::LessThan,
            other => return Err(Self::syntax(&other, "in, notin, =, ==, !=, gt, lt")),
        };
        let values = match operator {
            Operator::In | Operator::NotIn => self.value_set()?,
            _ => self.exact_value()?,
        };
        Requirement::new(&key, operator, values)
    }

    /// `( v1, v2 )`; empty entries (`()`, `(a,)`, `(,a)`) stand for the empty value.
    fn value_set(&mut self) -> Result<BTreeSet<String>> {
        let open = self.next();
        if open != Token::OpenPar {
            return Err(Self::syntax(&open, "'('"));
        }
        let mut values = BTreeSet::new();
        let mut expect_value = true;
        loop {
            match self.next().as_value() {
                Token::Identifier(v) if expect_value => {
                    values.insert(v);
                    expect_value = false;
                }
                Token::Comma => {
                    if expect_value {
                        values.insert(String::new());
                    }
                    expect_value = true;
                }
                Token::ClosedPar => {
                    if expect_value {
                        values.insert(String::new());
                    }
                    return Ok(values);
                }
                other if expect_value => {
                    return Err(Self::syntax(&other, "',', ')' or identifier"))
                }
                other => return Err(Self::syntax(&other, "',' or ')'")),
            }
        }
    }

    /// The one value after `=`, `==`, `!=`, `>` or `<`; nothing means the empty value.
    fn exact_value(&mut self) -> Result<BTreeSet<String>> {
        match self.peek().as_value() {
            Token::End | Token::Comma => Ok(BTreeSet::from([String::new()])),
            Token::Identifier(v) => {
                self.pos += 1;
                Ok(BTreeSet::from([v]))
            }
            other => Err(Self::syntax(&other, "identifier")),
        }
    }
}

/// A label key: an optional DNS-subdomain prefix and `/`, then a name of at most 63
/// characters of alphanumerics, `-`, `_` and `.`, starting and ending alphanumeric.
fn validate_label_key(key: &str) -> Result<()> {
    let invalid = |reason: &str| {
        Err(Error::InvalidKey {
            key: key.to_string(),
            reason: reason.to_string(),
        })
    };
    let (prefix, name) = match key.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    if let Some(prefix) = prefix {
        if prefix.is_empty() {
            return invalid("prefix part must be non-empty");
        }
        if name.contains('/') {
            return invalid("a qualified name may contain at most one '/'");
        }
        if let Err(reason) = check_dns_subdomain(prefix) {
            return invalid(&format!("prefix part {reason}"));
        }
    }
    if name.is_empty() {
        return invalid("name part must be non-empty");
    }
    if name.len() > 63 {
        return invalid("name part must be no more than 63 characters");
    }
    if !is_label_name(name) {
        return invalid(
            "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character",
        );
    }
    Ok(())
}

/// A label value: empty, or at most 63 characters shaped like a key's name part.
fn validate_label_value(key: &str, value: &str) -> Result<()> {
    let reason = if value.len() > 63 {
        "must be no more than 63 characters"
    } else if !value.is_empty() && !is_label_name(value) {
        "a valid label value must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character"
    } else {
        return Ok(());
    };
    Err(Error::InvalidValue {
        key: key.to_string(),
        value: value.to_string(),
        reason: reason.to_string(),
    })
}

fn is_label_name(s: &str) -> bool {
    let bytes = s.as_bytes();
    match (bytes.first(), bytes.last()) {
        (Some(first), Some(last)) => {
            first.is_ascii_alphanumeric()
                && last.is_ascii_alphanumeric()
                && bytes
                    .iter()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        }
        _ => false,
    }
}

/// RFC 1123 subdomain: at most 253 characters, dot-separated lower-case labels.
fn check_dns_subdomain(s: &str) -> Result<(), &'static str> {
    if s.len() > 253 {
        return Err("must be no more than 253 characters");
    }
    let label_ok = |l: &str| {
        let b = l.as_bytes();
        match (b.first(), b.last()) {
            (Some(f), Some(z)) => {
                (f.is_ascii_lowercase() || f.is_ascii_digit())
                    && (z.is_ascii_lowercase() || z.is_ascii_digit())
                    && b.iter()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
            }
            _ => false,
        }
    };
    if s.split('.').all(label_ok) {
        Ok(())
    } else {
        Err("must be a lowercase RFC 1123 subdomain (lower-case alphanumerics, '-' and '.', starting and ending alphanumeric)")
    }
}

// ---------------------------------------------------------------------------------------
// Field selectors
// ---------------------------------------------------------------------------------------

/// One `field=value` or `field!=value` term.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FieldTerm {
    field: String,
    equals: bool,
    value: String,
}

/// A field selector: the AND of `field=value` / `field!=value` terms.
///
/// Which fields exist for a kind, and their values, is [`crate::fields`]' business;
/// the empty selector matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldSelector {
    terms: Vec<FieldTerm>,
}

impl FieldSelector {
    /// Parses the `?fieldSelector=` syntax: terms separated by unescaped commas, each
    /// split at its first `!=`, `==` or `=`; values may escape `\,`, `\=` and `\\`.
    /// Terms are kept in Kubernetes' order (sorted as written); empty terms are skipped.
    ///
    /// # Errors
    /// A term without an operator, a bad escape, or an unescaped `,`/`=` in a value.
    pub fn parse(s: &str) -> Result<Self> {
        let mut parts = split_terms(s);
        parts.sort_unstable();
        let mut terms = Vec::new();
        for part in parts.into_iter().filter(|p| !p.is_empty()) {
            let Some((field, op, raw)) = split_term(part) else {
                return Err(Error::FieldTerm {
                    selector: s.to_string(),
                    term: part.to_string(),
                });
            };
            terms.push(FieldTerm {
                field: field.to_string(),
                equals: op != "!=",
                value: unescape_value(raw)?,
            });
        }
        Ok(Self { terms })
    }

    /// The selector that matches every object.
    pub fn everything() -> Self {
        Self::default()
    }

    /// The selector `field=value`.
    pub fn equals(field: &str, value: &str) -> Self {
        Self {
            terms: vec![FieldTerm {
                field: field.into(),
                equals: true,
                value: value.into(),
            }],
        }
    }

    /// Whether the selector has no terms (and so matches everything).
    pub fn is_empty(&self) -> bool {
        self.terms.is_empty()
    }

    /// The terms as `(field, equals, value)`; `equals` is false for `!=`.
    pub fn requirements(&self) -> impl Iterator<Item = (&str, bool, &str)> {
        self.terms
            .iter()
            .map(|t| (t.field.as_str(), t.equals, t.value.as_str()))
    }

    /// Whether every term holds; `get` returns a field's value, and a field it does not
    /// know reads as `""` (as in Kubernetes, where `spec.nodeName=` selects unscheduled pods).
    pub fn matches(&self, get: impl Fn(&str) -> Option<String>) -> bool {
        self.terms.iter().all(|t| {
            let have = get(&t.field).unwrap_or_default();
            (have == t.value) == t.equals
        })
    }

    /// If the selector pins `field` to one value with `=` (e.g. `metadata.name=x`,
    /// `spec.nodeName=n1`), that value: what an index can look up.
    pub fn exact(&self, field: &str) -> Option<&str> {
        self.terms
            .iter()
            .find(|t| t.equals && t.field == field)
            .map(|t| t.value.as_str())
    }
}

/// The canonical string, with `\`, `,` and `=` in values escaped.
impl fmt::Display for FieldSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, t) in self.terms.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            let op = if t.equals { "=" } else { "!=" };
            write!(f, "{}{op}{}", t.field, escape_value(&t.value))?;
        }
        Ok(())
    }
}

/// Splits at commas that are not escaped by a backslash (escapes are kept).
fn split_terms(s: &str) -> Vec<&str> {
    if s.is_empty() {
        return Vec::new();
    }
    let mut terms = Vec::new();
    let mut start = 0;
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        if escaped {
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == ',' {
            terms.push(&s[start..i]);
            start = i + 1;
        }
    }
    terms.push(&s[start..]);
    terms
}

/// Splits a term at the first position where `!=`, `==` or `=` starts (tried in that
/// order, so `a==b` is not read as `a` = `=b`).
fn split_term(term: &str) -> Option<(&str, &'static str, &str)> {
    term.char_indices().find_map(|(i, _)| {
        ["!=", "==", "="]
            .into_iter()
            .find(|op| term[i..].starts_with(op))
            .map(|op| (&term[..i], op, &term[i + op.len()..]))
    })
}

fn unescape_value(raw: &str) -> Result<String> {
    let mut out = String::with_capacity(raw.len());
    let mut escaped = false;
    for c in raw.chars() {
        if escaped {
            if !matches!(c, '\\' | ',' | '=') {
                return Err(Error::InvalidEscape(format!("\\{c}")));
            }
            out.push(c);
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == ',' || c == '=' {
            return Err(Error::UnescapedCharacter(c));
        } else {
            out.push(c);
        }
    }
    if escaped {
        return Err(Error::InvalidEscape("\\".to_string()));
    }
    Ok(out)
}

fn escape_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        if matches!(c, '\\' | ',' | '=') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn label_selectors_parse_to_canonical_strings() {
        let cases = [
            ("", ""),
            ("   ", ""),
            ("a=b", "a=b"),
            ("a==b", "a==b"),
            ("a!=b", "a!=b"),
            ("a", "a"),
            ("!a", "!a"),
            ("a=", "a="),
            (
                "x in (foo,,baz),y,z notin ()",
                "x in (,baz,foo),y,z notin ()",
            ),
            (
                "k8s-app in (kube-dns,foo),!missing",
                "k8s-app in (foo,kube-dns),!missing",
            ),
            ("  b = 1 ,  a  in ( y , x )  ", "a in (x,y),b=1"),
            ("env in (prod)", "env in (prod)"),
            ("x in (in,notin)", "x in (in,notin)"),
            ("a=in", "a=in"),
            ("a>1,b<3", "a>1,b<3"),
            ("example.com/app=web", "example.com/app=web"),
            ("tier notin (a,b,a)", "tier notin (a,b)"),
            ("z,a,m", "a,m,z"),
        ];
        for (input, want) in cases {
            let sel = LabelSelector::parse(input).unwrap_or_else(|e| panic!("{input:?}: {e}"));
            assert_eq!(sel.to_string(), want, "{input:?}");
            assert_eq!(
                LabelSelector::parse(want).as_ref(),
                Ok(&sel),
                "round trip of {want:?}"
            );
        }
    }

    #[test]
    fn invalid_label_selectors_name_the_bad_part() {
        let cases = [
            ("a=b,", "found '', expected: identifier after ','"),
            (",a", "found ',', expected: !, identifier"),
            ("a b", "found 'b', expected: in, notin, =, ==, !=, gt, lt"),
            ("a=b c", "found 'c', expected: ',' or 'end of string'"),
            ("a in x", "found 'x', expected: '('"),
            ("a in (x", "found '', expected: ',' or ')'"),
            ("a in (x y)", "found 'y', expected: ',' or ')'"),
            ("a in (=)", "found '=', expected: ',', ')' or identifier"),
            ("a = = b", "found '=', expected: identifier"),
            ("!a=b", "found '=', expected: ',' or 'end of string'"),
            ("!", "found '', expected: identifier"),
            ("a (b)", "found '(', expected: in, notin"),
            ("a>x", "the value must be an integer"),
            ("a<", "the value must be an integer"),
            ("a<-3", "invalid label value \"-3\""),
            ("-bad=x", "invalid label key \"-bad\""),
            ("/a=b", "prefix part must be non-empty"),
            (
                "Example.com/a=b",
                "prefix part must be a lowercase RFC 1123 subdomain",
            ),
            ("a/b/c=d", "at most one '/'"),
            (
                &format!("{}=x", "k".repeat(64)),
                "no more than 63 characters",
            ),
            ("a=-x", "invalid label value \"-x\" for key \"a\""),
            (
                &format!("a={}", "v".repeat(64)),
                "no more than 63 characters",
            ),
            ("a in (ok,bad!)", "found '!', expected: ',' or ')'"),
        ];
        for (input, want) in cases {
            match LabelSelector::parse(input) {
                Ok(sel) => panic!("{input:?} parsed as {sel}"),
                Err(e) => assert!(
                    e.to_string().contains(want),
                    "{input:?}: {e} does not contain {want:?}"
                ),
            }
        }
    }

    #[test]
    fn label_selectors_match_like_kubernetes() {
        let app_web = labels(&[("app", "web"), ("tier", "front"), ("n", "5")]);
        let empty = labels(&[]);
        let cases = [
            ("", &app_web, true),
            ("", &empty, true),
            ("app=web", &app_web, true),
            ("app==web", &app_web, true),
            ("app=db", &app_web, false),
            ("app!=db", &app_web, true),
            ("app!=web", &app_web, false),
            ("app!=web", &empty, true),
            ("app", &app_web, true),
            ("app", &empty, false),
            ("!app", &app_web, false),
            ("!app", &empty, true),
            ("app in (web,db)", &app_web, true),
            ("app in (db)", &app_web, false),
            ("app in (web)", &empty, false),
            ("app notin (db)", &app_web, true),
            ("app notin (web)", &app_web, false),
            ("app notin (web)", &empty, true),
            ("app=web,tier=front", &app_web, true),
            ("app=web,tier=back", &app_web, false),
            ("n>4", &app_web, true),
            ("n>5", &app_web, false),
            ("n<6", &app_web, true),
            ("app>1", &app_web, false),
            ("n<6", &empty, false),
            ("missing=", &empty, false),
            ("missing in ()", &labels(&[("missing", "")]), true),
        ];
        for (input, set, want) in cases {
            let sel = LabelSelector::parse(input).unwrap_or_else(|e| panic!("{input:?}: {e}"));
            assert_eq!(sel.matches(set), want, "{input:?} on {set:?}");
        }
    }

    #[test]
    fn from_k8s_converts_match_labels_and_expressions() {
        let expr =
            |key: &str, op: &str, values: Option<&[&str]>| metav1::LabelSelectorRequirement {
                key: key.into(),
                operator: op.into(),
                values: values.map(|v| v.iter().map(|s| s.to_string()).collect()),
            };
        let sel = |ml: Option<&[(&str, &str)]>,
                   me: Option<Vec<metav1::LabelSelectorRequirement>>| {
            metav1::LabelSelector {
                match_labels: ml.map(labels),
                match_expressions: me,
            }
        };
        let cases: Vec<(&str, metav1::LabelSelector, Result<&str, &str>)> = vec![
            ("empty selects everything", sel(None, None), Ok("")),
            (
                "empty maps select everything",
                sel(Some(&[]), Some(vec![])),
                Ok(""),
            ),
            (
                "match labels",
                sel(Some(&[("b", "2"), ("a", "1")]), None),
                Ok("a=1,b=2"),
            ),
            (
                "all operators, sorted by key",
                sel(
                    Some(&[("app", "web")]),
                    Some(vec![
                        expr("tier", "In", Some(&["front", "back"])),
                        expr("env", "NotIn", Some(&["dev"])),
                        expr("canary", "DoesNotExist", None),
                        expr("beta", "Exists", Some(&[])),
                    ]),
                ),
                Ok("app=web,beta,!canary,env notin (dev),tier in (back,front)"),
            ),
            (
                "unknown operator",
                sel(None, Some(vec![expr("a", "Gt", Some(&["1"]))])),
                Err("\"Gt\" is not a valid label selector operator"),
            ),
            (
                "in without values",
                sel(None, Some(vec![expr("a", "In", None)])),
                Err("values set can't be empty"),
            ),
            (
                "exists with values",
                sel(None, Some(vec![expr("a", "Exists", Some(&["x"]))])),
                Err("values set must be empty"),
            ),
            (
                "bad key",
                sel(Some(&[("-a", "1")]), None),
                Err("invalid label key \"-a\""),
            ),
            (
                "bad value",
                sel(Some(&[("a", "x y")]), None),
                Err("invalid label value \"x y\""),
            ),
        ];
        for (name, input, want) in cases {
            match (LabelSelector::from_k8s(&input), want) {
                (Ok(got), Ok(want)) => assert_eq!(got.to_string(), want, "{name}"),
                (Err(e), Err(want)) => assert!(e.to_string().contains(want), "{name}: {e}"),
                (got, want) => panic!("{name}: got {got:?}, want {want:?}"),
            }
        }
        let web =
            LabelSelector::from_k8s(&sel(Some(&[("app", "web")]), None)).expect("valid selector");
        assert!(web.matches(&labels(&[("app", "web"), ("x", "y")])));
        assert!(!web.matches(&labels(&[("app", "db")])));
    }

    #[test]
    fn from_map_and_exact() {
        let sel = LabelSelector::from_map(&labels(&[("b", "2"), ("a", "1")]));
        assert_eq!(sel.to_string(), "a=1,b=2");
        assert!(LabelSelector::from_map(&BTreeMap::new()).is_empty());
        assert!(LabelSelector::everything().is_empty());
        let cases = [
            ("a=1", "a", Some("1")),
            ("a in (1)", "a", Some("1")),
            ("a in (1,2)", "a", None),
            ("a!=1", "a", None),
            ("b=2", "a", None),
        ];
        for (input, key, want) in cases {
            let sel = LabelSelector::parse(input).expect("valid selector");
            assert_eq!(sel.exact(key), want, "{input}");
        }
    }

    /// A field selector term as `requirements()` yields it.
    type Term = (&'static str, bool, &'static str);

    #[test]
    fn field_selectors_parse() {
        let cases: [(&str, Vec<Term>, &str); 8] = [
            ("", vec![], ""),
            (
                "metadata.name=x",
                vec![("metadata.name", true, "x")],
                "metadata.name=x",
            ),
            (
                "metadata.name==x",
                vec![("metadata.name", true, "x")],
                "metadata.name=x",
            ),
            (
                "spec.nodeName=",
                vec![("spec.nodeName", true, "")],
                "spec.nodeName=",
            ),
            (
                "status.phase!=Succeeded,spec.nodeName=node-1,status.phase!=Failed",
                vec![
                    ("spec.nodeName", true, "node-1"),
                    ("status.phase", false, "Failed"),
                    ("status.phase", false, "Succeeded"),
                ],
                "spec.nodeName=node-1,status.phase!=Failed,status.phase!=Succeeded",
            ),
            (
                "a=b,,c=d,",
                vec![("a", true, "b"), ("c", true, "d")],
                "a=b,c=d",
            ),
            (
                r"a=x\,y\=z\\w",
                vec![("a", true, r"x,y=z\w")],
                r"a=x\,y\=z\\w",
            ),
            ("a==", vec![("a", true, "")], "a="),
        ];
        for (input, want, display) in cases {
            let sel = FieldSelector::parse(input).unwrap_or_else(|e| panic!("{input:?}: {e}"));
            assert_eq!(sel.requirements().collect::<Vec<_>>(), want, "{input:?}");
            assert_eq!(sel.to_string(), display, "{input:?}");
            assert_eq!(sel.is_empty(), want.is_empty(), "{input:?}");
        }
    }

    #[test]
    fn invalid_field_selectors() {
        let cases = [
            (
                "metadata.name",
                Error::FieldTerm {
                    selector: "metadata.name".into(),
                    term: "metadata.name".into(),
                },
            ),
            (
                "a=b,c",
                Error::FieldTerm {
                    selector: "a=b,c".into(),
                    term: "c".into(),
                },
            ),
            ("a=b=c", Error::UnescapedCharacter('=')),
            ("a!==b", Error::UnescapedCharacter('=')),
            (r"a=b\x", Error::InvalidEscape(r"\x".into())),
            (r"a=b\", Error::InvalidEscape(r"\".into())),
        ];
        for (input, want) in cases {
            assert_eq!(FieldSelector::parse(input), Err(want), "{input:?}");
        }
    }

    #[test]
    fn field_selectors_match_and_pin() {
        let pod = |field: &str| match field {
            "metadata.name" => Some("web-1".to_string()),
            "spec.nodeName" => Some(String::new()),
            "status.phase" => Some("Running".to_string()),
            _ => None,
        };
        let cases = [
            ("", true),
            ("metadata.name=web-1", true),
            ("metadata.name=web-2", false),
            ("metadata.name!=web-2", true),
            ("spec.nodeName=", true),
            ("spec.nodeName=n1", false),
            ("status.phase!=Succeeded,status.phase!=Failed", true),
            ("status.phase!=Running", false),
            ("unknown.field=", true),
            ("unknown.field=x", false),
        ];
        for (input, want) in cases {
            let sel = FieldSelector::parse(input).expect("valid selector");
            assert_eq!(sel.matches(pod), want, "{input:?}");
        }
        let sel = FieldSelector::parse("spec.nodeName!=n2,metadata.name=x,spec.nodeName=n1")
            .expect("valid selector");
        assert_eq!(sel.exact("spec.nodeName"), Some("n1"));
        assert_eq!(sel.exact("metadata.name"), Some("x"));
        assert_eq!(sel.exact("status.phase"), None);
        assert_eq!(
            FieldSelector::equals("metadata.name", "a,b").to_string(),
            r"metadata.name=a\,b"
        );
        assert!(FieldSelector::everything().is_empty());
    }
}
