//! Reading `-f` manifests: files, directories (their `.yaml`, `.yml` and `.json`
//! files, sorted), and `-` for stdin; multi-document YAML becomes several objects.

use std::io::Read;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

/// Why manifests could not be read.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the path \"{path}\" does not exist")]
    Missing { path: PathBuf },
    #[error("failed to read {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("error parsing {source_name}")]
    Parse {
        source_name: String,
        #[source]
        source: serde_yaml::Error,
    },
    #[error("error validating \"{source_name}\": object has no {what}")]
    Incomplete {
        source_name: String,
        what: &'static str,
    },
}

/// The result type of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// One object from a manifest, with where it came from (for messages).
#[derive(Debug, Clone, PartialEq)]
pub struct Manifest {
    pub source: String,
    pub object: Value,
}

/// Reads every `-f` argument in order.
///
/// # Errors
/// When a path is missing or unreadable, or a document is not valid YAML.
pub fn read_all(args: &[String]) -> Result<Vec<Manifest>> {
    let mut out = Vec::new();
    for arg in args {
        if arg == "-" {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .map_err(|source| Error::Read {
                    path: "stdin".into(),
                    source,
                })?;
            out.extend(parse("STDIN", &text)?);
            continue;
        }
        let path = Path::new(arg);
        let meta = std::fs::metadata(path).map_err(|_| Error::Missing { path: path.into() })?;
        let files = if meta.is_dir() {
            let mut files: Vec<PathBuf> = std::fs::read_dir(path)
                .map_err(|source| Error::Read {
                    path: arg.clone(),
                    source,
                })?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.extension()
                        .is_some_and(|e| e == "yaml" || e == "yml" || e == "json")
                })
                .collect();
            files.sort();
            files
        } else {
            vec![path.to_path_buf()]
        };
        for file in files {
            let name = file.display().to_string();
            let text = std::fs::read_to_string(&file).map_err(|source| Error::Read {
                path: name.clone(),
                source,
            })?;
            out.extend(parse(&name, &text)?);
        }
    }
    Ok(out)
}

/// Splits and parses a (multi-document) YAML or JSON text; empty documents and `List`
/// items are flattened.
///
/// # Errors
/// When a document is not valid YAML or lacks apiVersion/kind.
pub fn parse(source: &str, text: &str) -> Result<Vec<Manifest>> {
    let mut out = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(text) {
        let value = Value::deserialize(doc).map_err(|e| Error::Parse {
            source_name: source.to_string(),
            source: e,
        })?;
        if value.is_null() {
            continue;
        }
        let items = if value["kind"] == "List" {
            value["items"].as_array().cloned().unwrap_or_default()
        } else {
            vec![value]
        };
        for object in items {
            for (key, what) in [("apiVersion", "apiVersion"), ("kind", "kind")] {
                if object[key].as_str().is_none_or(str::is_empty) {
                    return Err(Error::Incomplete {
                        source_name: source.to_string(),
                        what,
                    });
                }
            }
            out.push(Manifest {
                source: source.to_string(),
                object,
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multi_document_yaml() {
        let text = "apiVersion: v1\nkind: Pod\nmetadata: {name: a}\n---\n---\napiVersion: v1\nkind: List\nitems:\n- {apiVersion: v1, kind: Service, metadata: {name: b}}\n";
        let got = parse("f.yaml", text).expect("parse");
        let names: Vec<_> = got
            .iter()
            .map(|m| m.object["metadata"]["name"].clone())
            .collect();
        assert_eq!(names, vec!["a", "b"]);
        assert!(matches!(parse("f", "a: [b"), Err(Error::Parse { .. })));
        assert!(matches!(
            parse("f", "kind: Pod"),
            Err(Error::Incomplete { .. })
        ));
    }

    #[test]
    fn directories_are_read_in_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            dir.path().join("b.yaml"),
            "apiVersion: v1\nkind: Pod\nmetadata: {name: b}\n",
        )
        .expect("write");
        std::fs::write(
            dir.path().join("a.json"),
            r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"a"}}"#,
        )
        .expect("write");
        std::fs::write(dir.path().join("notes.txt"), "x").expect("write");
        let got = read_all(&[dir.path().display().to_string()]).expect("read");
        let names: Vec<_> = got
            .iter()
            .map(|m| m.object["metadata"]["name"].clone())
            .collect();
        assert_eq!(names, vec!["a", "b"]);
        assert!(read_all(&["/nonexistent/x".into()]).is_err());
    }
}
