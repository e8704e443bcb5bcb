//! The subset of kubectl's JSONPath templates that `-o jsonpath=…` supports: text with
//! `{.a.b}`, `{.items[*].metadata.name}`, `{.items[0]}`, `{['a.b']}`, filters
//! `{.conditions[?(@.type=="Ready")].status}`, string literals `{"\n"}` and
//! `{range .items[*]}…{end}`. Several results of one expression are joined by spaces;
//! strings print raw, everything else as JSON.

use serde_json::Value;

/// Why a template could not be parsed or evaluated.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("unclosed action in template {0:?}")]
    Unclosed(String),
    #[error("unexpected {{end}}")]
    UnexpectedEnd,
    #[error("unclosed {{range}}")]
    UnclosedRange,
    #[error("invalid expression {0:?}")]
    Invalid(String),
    #[error("{0} is not found")]
    NotFound(String),
}

/// The result type of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, Clone, PartialEq)]
enum Segment {
    Field(String),
    Index(i64),
    Wildcard,
    Filter(Vec<Segment>, String),
}

#[derive(Debug, Clone, PartialEq)]
enum Node {
    Text(String),
    Path(String, Vec<Segment>),
    Range(Vec<Segment>, Vec<Node>),
}

/// A parsed template.
#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    nodes: Vec<Node>,
}

impl Template {
    /// Parses a template such as `{.items[*].metadata.name}`.
    ///
    /// # Errors
    /// On unbalanced braces or ranges and malformed paths.
    pub fn parse(text: &str) -> Result<Template> {
        let mut stack: Vec<(Vec<Segment>, Vec<Node>)> = Vec::new();
        let mut nodes = Vec::new();
        let mut rest = text;
        while !rest.is_empty() {
            let Some(open) = rest.find('{') else {
                nodes.push(Node::Text(rest.to_string()));
                break;
            };
            if open > 0 {
                nodes.push(Node::Text(rest[..open].to_string()));
            }
            let after = &rest[open + 1..];
            let close = find_close(after).ok_or_else(|| Error::Unclosed(text.to_string()))?;
            let action = after[..close].trim();
            rest = &after[close + 1..];
            if let Some(path) = action.strip_prefix("range ") {
                stack.push((parse_path(path.trim())?, std::mem::take(&mut nodes)));
            } else if action == "end" {
                let (path, outer) = stack.pop().ok_or(Error::UnexpectedEnd)?;
                let body = std::mem::replace(&mut nodes, outer);
                nodes.push(Node::Range(path, body));
            } else if let Some(lit) = action.strip_prefix('"').and_then(|a| a.strip_suffix('"')) {
                nodes.push(Node::Text(unescape(lit)));
            } else {
                nodes.push(Node::Path(action.to_string(), parse_path(action)?));
            }
        }
        if !stack.is_empty() {
            return Err(Error::UnclosedRange);
        }
        Ok(Template { nodes })
    }

    /// Renders the template against `data`.
    ///
    /// # Errors
    /// When a path outside a range finds nothing.
    pub fn render(&self, data: &Value) -> Result<String> {
        let mut out = String::new();
        render(&self.nodes, data, &mut out)?;
        Ok(out)
    }
}

fn render(nodes: &[Node], data: &Value, out: &mut String) -> Result<()> {
    for node in nodes {
        match node {
            Node::Text(t) => out.push_str(t),
            Node::Path(text, path) => {
                let found = eval(path, data);
                if found.is_empty() && !path.is_empty() {
                    let wildcard = path
                        .iter()
                        .any(|s| matches!(s, Segment::Wildcard | Segment::Filter(..)));
                    if !wildcard {
                        return Err(Error::NotFound(text.trim_start_matches('.').to_string()));
                    }
                }
                let parts: Vec<String> = found.iter().map(|v| scalar(v)).collect();
                out.push_str(&parts.join(" "));
            }
            Node::Range(path, body) => {
                for item in eval(path, data) {
                    render(body, item, out)?;
                }
            }
        }
    }
    Ok(())
}

fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn eval<'a>(path: &[Segment], data: &'a Value) -> Vec<&'a Value> {
    let mut current = vec![data];
    for seg in path {
        let mut next = Vec::new();
        for v in current {
            match seg {
                Segment::Field(f) => {
                    if let Some(x) = v.get(f.as_str()) {
                        next.push(x);
                    }
                }
                Segment::Index(i) => {
                    if let Some(a) = v.as_array() {
                        let idx = if *i < 0 { a.len() as i64 + i } else { *i };
                        if let Some(x) = usize::try_from(idx).ok().and_then(|i| a.get(i)) {
                            next.push(x);
                        }
                    }
                }
                Segment::Wildcard => match v {
                    Value::Array(a) => next.extend(a.iter()),
                    Value::Object(m) => next.extend(m.values()),
                    _ => {}
                },
                Segment::Filter(sub, want) => {
                    for item in v.as_array().into_iter().flatten() {
                        if eval(sub, item).iter().any(|x| scalar(x) == *want) {
                            next.push(item);
                        }
                    }
                }
            }
        }
        current = next;
    }
    current
}

fn find_close(s: &str) -> Option<usize> {
    let mut in_str = false;
    let mut prev = '\0';
    for (i, c) in s.char_indices() {
        match c {
            '"' if prev != '\\' => in_str = !in_str,
            '}' if !in_str => return Some(i),
            _ => {}
        }
        prev = c;
    }
    None
}

fn unescape(s: &str) -> String {
    s.replace("\\n", "\n")
        .replace("\\t", "\t")
        .replace("\\\"", "\"")
}

fn parse_path(text: &str) -> Result<Vec<Segment>> {
    let bad = || Error::Invalid(text.to_string());
    let mut s = text.trim();
    s = s.strip_prefix('$').unwrap_or(s);
    s = s.strip_prefix('@').unwrap_or(s);
    let mut out = Vec::new();
    while !s.is_empty() {
        if let Some(r) = s.strip_prefix('.') {
            let end = r.find(['.', '[']).unwrap_or(r.len());
            let name = &r[..end];
            if name == "*" {
                out.push(Segment::Wildcard);
            } else if !name.is_empty() {
                out.push(Segment::Field(name.to_string()));
            }
            s = &r[end..];
        } else if let Some(r) = s.strip_prefix('[') {
            let end = if r.starts_with("?(") {
                r.find(")]").map(|i| i + 1).ok_or_else(bad)?
            } else {
                r.find(']').ok_or_else(bad)?
            };
            let inner = r[..end].trim();
            s = &r[end + 1..];
            if inner == "*" {
                out.push(Segment::Wildcard);
            } else if let Some(f) = inner.strip_prefix("?(").and_then(|f| f.strip_suffix(')')) {
                let (lhs, rhs) = f.split_once("==").ok_or_else(bad)?;
                let rhs = rhs.trim().trim_matches(|c| c == '"' || c == '\'');
                out.push(Segment::Filter(parse_path(lhs.trim())?, rhs.to_string()));
            } else if let Some(key) = inner
                .strip_prefix('\'')
                .and_then(|k| k.strip_suffix('\''))
                .or_else(|| inner.strip_prefix('"').and_then(|k| k.strip_suffix('"')))
            {
                out.push(Segment::Field(key.to_string()));
            } else {
                out.push(Segment::Index(inner.parse().map_err(|_| bad())?));
            }
        } else {
            // A leading bare name, as in `{items[0]}`.
            let end = s.find(['.', '[']).unwrap_or(s.len());
            out.push(Segment::Field(s[..end].to_string()));
            s = &s[end..];
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn renders_kubectl_templates() {
        let data = json!({
            "kind": "List",
            "items": [
                {"metadata": {"name": "a", "labels": {"app.kubernetes.io/name": "x"}},
                 "spec": {"replicas": 2},
                 "status": {"conditions": [{"type": "Ready", "status": "True"}, {"type": "Other", "status": "False"}]}},
                {"metadata": {"name": "b", "labels": {}}, "spec": {"replicas": 3},
                 "status": {"conditions": [{"type": "Ready", "status": "False"}]}}
            ]
        });
        let cases = [
            ("name", "{.kind}", "List"),
            ("wildcard", "{.items[*].metadata.name}", "a b"),
            ("index", "{.items[1].spec.replicas}", "3"),
            ("negative index", "{.items[-1].metadata.name}", "b"),
            ("number", "{.items[0].spec}", "{\"replicas\":2}"),
            (
                "quoted key",
                "{.items[0].metadata.labels['app.kubernetes.io/name']}",
                "x",
            ),
            (
                "filter",
                "{.items[*].status.conditions[?(@.type==\"Ready\")].status}",
                "True False",
            ),
            (
                "range",
                "{range .items[*]}{.metadata.name}={.spec.replicas}{\"\\n\"}{end}",
                "a=2\nb=3\n",
            ),
            ("text around", "n: {.items[0].metadata.name}!", "n: a!"),
            ("no braces", "plain", "plain"),
        ];
        for (name, template, want) in cases {
            let t = Template::parse(template).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(t.render(&data).expect(name), want, "{name}");
        }
    }

    #[test]
    fn errors() {
        assert_eq!(
            Template::parse("{.a").expect_err("must fail"),
            Error::Unclosed("{.a".into())
        );
        assert_eq!(
            Template::parse("{range .items[*]}x").expect_err("must fail"),
            Error::UnclosedRange
        );
        assert_eq!(
            Template::parse("{end}").expect_err("must fail"),
            Error::UnexpectedEnd
        );
        let t = Template::parse("{.missing}").expect("parse");
        assert_eq!(
            t.render(&json!({})).expect_err("must fail"),
            Error::NotFound("missing".into())
        );
    }
}
