//! Output: the `-o` formats, tables from the server's `Table` (columns, `-o wide`,
//! NAMESPACE under `-A`, `--show-labels`), and the aligned-column writer kubectl uses.

use std::fmt::Write as _;
use std::str::FromStr;

use serde_json::{json, Value};

use super::jsonpath::{self, Template};

/// `-o`: how objects are printed.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// The server's table (the default).
    Table,
    /// The table with priority-1 columns.
    Wide,
    Yaml,
    Json,
    /// `kind.group/name`.
    Name,
    /// `jsonpath=TEMPLATE`.
    JsonPath(Template),
}

impl FromStr for Output {
    type Err = String;

    fn from_str(s: &str) -> Result<Output, String> {
        Ok(match s {
            "wide" => Output::Wide,
            "yaml" => Output::Yaml,
            "json" => Output::Json,
            "name" => Output::Name,
            other => match other.split_once('=') {
                Some(("jsonpath", t)) => {
                    Output::JsonPath(Template::parse(t).map_err(|e| e.to_string())?)
                }
                _ => {
                    return Err(format!(
                    "unable to match a printer suitable for the output format {other:?}, allowed formats are: json,jsonpath,name,wide,yaml"
                ))
                }
            },
        })
    }
}

/// How a table is printed.
#[derive(Debug, Clone, Default)]
pub struct TableOptions {
    pub wide: bool,
    pub all_namespaces: bool,
    pub show_labels: bool,
    pub no_headers: bool,
    /// Prefix names with `kind.group/`, as kubectl does when several kinds are listed.
    pub kind_prefix: Option<String>,
}

/// Lays out rows in columns separated by at least three spaces (kubectl's tabwriter).
pub fn columns(rows: &[Vec<String>]) -> String {
    let n = rows.iter().map(Vec::len).max().unwrap_or(0);
    let mut widths = vec![0; n];
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 < row.len() {
                let _ = write!(line, "{cell:<w$}", w = widths[i] + 3);
            } else {
                line.push_str(cell);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// A cell as kubectl prints it.
fn cell(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "<none>".into(),
        other => other.to_string(),
    }
}

fn labels(object: &Value) -> String {
    let Some(map) = object["metadata"]["labels"]
        .as_object()
        .filter(|m| !m.is_empty())
    else {
        return "<none>".into();
    };
    let mut pairs: Vec<String> = map
        .iter()
        .map(|(k, v)| format!("{k}={}", cell(v)))
        .collect();
    pairs.sort();
    pairs.join(",")
}

/// The header and rows of a server `Table` (`columnDefinitions` may be null for
/// watch events after the first; pass the ones seen first).
pub fn table_rows(table: &Value, columns_def: &[Value], opts: &TableOptions) -> Vec<Vec<String>> {
    let shown: Vec<usize> = columns_def
        .iter()
        .enumerate()
        .filter(|(_, c)| opts.wide || c["priority"].as_i64().unwrap_or(0) == 0)
        .map(|(i, _)| i)
        .collect();
    let mut rows = Vec::new();
    if !opts.no_headers {
        let mut header = Vec::new();
        if opts.all_namespaces {
            header.push("NAMESPACE".to_string());
        }
        for &i in &shown {
            header.push(
                columns_def[i]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_uppercase(),
            );
        }
        if opts.show_labels {
            header.push("LABELS".into());
        }
        rows.push(header);
    }
    for row in table["rows"].as_array().into_iter().flatten() {
        let cells = row["cells"].as_array().cloned().unwrap_or_default();
        let mut out = Vec::new();
        if opts.all_namespaces {
            out.push(cell_or_empty(&row["object"]["metadata"]["namespace"]));
        }
        for &i in &shown {
            let mut text = cells.get(i).map(cell).unwrap_or_default();
            if i == 0 {
                if let Some(prefix) = &opts.kind_prefix {
                    text = format!("{prefix}/{text}");
                }
            }
            out.push(text);
        }
        if opts.show_labels {
            out.push(labels(&row["object"]));
        }
        rows.push(out);
    }
    rows
}

fn cell_or_empty(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_string()
}

/// Wraps several objects in a `List` the way kubectl does; one object prints alone.
pub fn list_or_single(mut objects: Vec<Value>, single: bool) -> Value {
    if single && objects.len() == 1 {
        return objects.remove(0);
    }
    json!({"apiVersion": "v1", "kind": "List", "items": objects, "metadata": {"resourceVersion": ""}})
}

/// Prints objects as yaml, json, name or jsonpath.
///
/// # Errors
/// When a jsonpath template finds nothing.
pub fn objects(output: &Output, data: &Value, names: &[String]) -> Result<String, jsonpath::Error> {
    Ok(match output {
        Output::Yaml => serde_yaml::to_string(data).expect("a JSON value always serializes"),
        Output::Json => {
            let mut s = serde_json::to_string_pretty(data).expect("a JSON value always serializes");
            s.push('\n');
            s
        }
        Output::JsonPath(t) => t.render(data)?,
        Output::Name | Output::Table | Output::Wide => {
            names.iter().map(|n| format!("{n}\n")).collect()
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> Value {
        json!({"kind": "Table", "columnDefinitions": [
            {"name": "Name", "priority": 0}, {"name": "Up-to-date", "priority": 0},
            {"name": "Images", "priority": 1}],
         "rows": [
            {"cells": ["web", 3, "nginx"], "object": {"metadata": {"name": "web", "namespace": "a", "labels": {"b": "2", "a": "1"}}}},
            {"cells": ["db-long-name", 1, "pg"], "object": {"metadata": {"name": "db-long-name", "namespace": "bb"}}}]})
    }

    #[test]
    fn tables_print_like_kubectl() {
        let t = table();
        let defs = t["columnDefinitions"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let cases = [
            (
                "plain",
                TableOptions::default(),
                "NAME           UP-TO-DATE\nweb            3\ndb-long-name   1\n",
            ),
            (
                "wide",
                TableOptions {
                    wide: true,
                    ..Default::default()
                },
                "NAME           UP-TO-DATE   IMAGES\nweb            3            nginx\ndb-long-name   1            pg\n",
            ),
            (
                "all namespaces, labels",
                TableOptions {
                    all_namespaces: true,
                    show_labels: true,
                    ..Default::default()
                },
                "NAMESPACE   NAME           UP-TO-DATE   LABELS\na           web            3            a=1,b=2\nbb          db-long-name   1            <none>\n",
            ),
            (
                "kind prefix, no headers",
                TableOptions {
                    no_headers: true,
                    kind_prefix: Some("deployment.apps".into()),
                    ..Default::default()
                },
                "deployment.apps/web            3\ndeployment.apps/db-long-name   1\n",
            ),
        ];
        for (name, opts, want) in cases {
            assert_eq!(columns(&table_rows(&t, &defs, &opts)), want, "{name}");
        }
    }

    #[test]
    fn output_flags_parse() {
        assert_eq!("wide".parse::<Output>(), Ok(Output::Wide));
        assert!(matches!(
            "jsonpath={.a}".parse::<Output>(),
            Ok(Output::JsonPath(_))
        ));
        assert!("xml".parse::<Output>().is_err());
        let list = list_or_single(vec![json!({"a": 1}), json!({"b": 2})], true);
        assert_eq!(list["kind"], "List");
        assert_eq!(list_or_single(vec![json!({"a": 1})], true), json!({"a": 1}));
        assert_eq!(
            objects(&Output::Name, &Value::Null, &["pod/a".into()]).expect("name"),
            "pod/a\n"
        );
    }
}
