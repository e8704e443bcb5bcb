//! Bad values rendered as Kubernetes prints them (Go's `%q`, `%v` and `%#v`).

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// A value that can appear in a field error, rendered as Kubernetes would.
pub trait BadValue {
    /// The rendered value, e.g. `"web"` (quoted) or `-1`.
    fn render(&self) -> String;
}

impl BadValue for &str {
    fn render(&self) -> String {
        quote(self)
    }
}

impl BadValue for String {
    fn render(&self) -> String {
        quote(self)
    }
}

impl BadValue for &String {
    fn render(&self) -> String {
        quote(self)
    }
}

macro_rules! plain {
    ($($t:ty),*) => {$(
        impl BadValue for $t {
            fn render(&self) -> String {
                self.to_string()
            }
        }
    )*};
}
plain!(i32, i64, u16, u32, usize, bool);

/// An optional number prints as `null` when absent, as Go prints a nil pointer.
impl BadValue for Option<i64> {
    fn render(&self) -> String {
        self.map_or_else(|| "null".to_string(), |v| v.to_string())
    }
}

/// `intstr.IntOrString` prints through its `String()` method: unquoted.
impl BadValue for &IntOrString {
    fn render(&self) -> String {
        match self {
            IntOrString::Int(i) => i.to_string(),
            IntOrString::String(s) => s.clone(),
        }
    }
}

/// A value already rendered (maps, structs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Raw(pub String);

impl BadValue for Raw {
    fn render(&self) -> String {
        self.0.clone()
    }
}

/// Go's `%q`: double-quoted, with `"`, `\` and control characters escaped.
pub fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                out.push_str(&format!("\\x{:02x}", c as u32))
            }
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Go's `%#v` of a `map[string]string`: `map[string]string{"a":"b", "c":"d"}`, or
/// `map[string]string(nil)` when absent.
pub fn go_map(map: Option<&BTreeMap<String, String>>) -> Raw {
    Raw(match map {
        None => "map[string]string(nil)".to_string(),
        Some(m) => {
            let entries: Vec<String> = m
                .iter()
                .map(|(k, v)| format!("{}:{}", quote(k), quote(v)))
                .collect();
            format!("map[string]string{{{}}}", entries.join(", "))
        }
    })
}

/// Go's `%#v` of a `metav1.LabelSelector`, as in `spec.selector: Invalid value:
/// v1.LabelSelector{MatchLabels:map[string]string{"app":"web"}, MatchExpressions:[]v1.LabelSelectorRequirement(nil)}`.
pub fn go_selector(selector: &LabelSelector) -> Raw {
    let expressions = match &selector.match_expressions {
        None => "[]v1.LabelSelectorRequirement(nil)".to_string(),
        Some(exprs) => {
            let items: Vec<String> = exprs
                .iter()
                .map(|e| {
                    let values = match &e.values {
                        None => "[]string(nil)".to_string(),
                        Some(v) => {
                            let quoted: Vec<String> = v.iter().map(|s| quote(s)).collect();
                            format!("[]string{{{}}}", quoted.join(", "))
                        }
                    };
                    format!(
                        "v1.LabelSelectorRequirement{{Key:{}, Operator:{}, Values:{values}}}",
                        quote(&e.key),
                        quote(&e.operator)
                    )
                })
                .collect();
            format!("[]v1.LabelSelectorRequirement{{{}}}", items.join(", "))
        }
    };
    Raw(format!(
        "v1.LabelSelector{{MatchLabels:{}, MatchExpressions:{expressions}}}",
        go_map(selector.match_labels.as_ref()).0
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    #[test]
    fn quote_matches_go() {
        let cases = [
            ("plain", "web", "\"web\""),
            ("quote", "a\"b", "\"a\\\"b\""),
            ("backslash", "a\\b", "\"a\\\\b\""),
            ("newline", "a\nb", "\"a\\nb\""),
            ("control", "a\u{1}", "\"a\\x01\""),
            ("unicode kept", "é", "\"é\""),
        ];
        for (name, input, want) in cases {
            assert_eq!(quote(input), want, "{name}");
        }
    }

    #[test]
    fn maps_and_selectors_match_go() {
        let labels: BTreeMap<String, String> = [("b", "2"), ("a", "1")]
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect();
        let cases = [
            ("nil map", go_map(None).0, "map[string]string(nil)".to_string()),
            ("sorted map", go_map(Some(&labels)).0, "map[string]string{\"a\":\"1\", \"b\":\"2\"}".to_string()),
            (
                "selector",
                go_selector(&LabelSelector {
                    match_labels: Some(labels.clone()),
                    match_expressions: None,
                })
                .0,
                "v1.LabelSelector{MatchLabels:map[string]string{\"a\":\"1\", \"b\":\"2\"}, MatchExpressions:[]v1.LabelSelectorRequirement(nil)}".to_string(),
            ),
            (
                "selector with expressions",
                go_selector(&LabelSelector {
                    match_labels: None,
                    match_expressions: Some(vec![LabelSelectorRequirement {
                        key: "tier".into(),
                        operator: "In".into(),
                        values: Some(vec!["web".into()]),
                    }]),
                })
                .0,
                "v1.LabelSelector{MatchLabels:map[string]string(nil), MatchExpressions:[]v1.LabelSelectorRequirement{v1.LabelSelectorRequirement{Key:\"tier\", Operator:\"In\", Values:[]string{\"web\"}}}}".to_string(),
            ),
            ("int or string", (&IntOrString::String("25%".into())).render(), "25%".to_string()),
            ("nil pointer", None::<i64>.render(), "null".to_string()),
        ];
        for (name, got, want) in cases {
            assert_eq!(got, want, "{name}");
        }
    }
}
