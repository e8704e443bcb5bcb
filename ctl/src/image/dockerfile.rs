//! The Dockerfile parser: logical lines (continuations, comments), JSON and shell forms,
//! and `$VAR` / `${VAR}` / `${VAR:-default}` / `${VAR:+alt}` substitution.

use std::collections::BTreeMap;

/// A Dockerfile that could not be parsed; always names the line.
#[derive(Debug, thiserror::Error)]
#[error("Dockerfile line {line}: {message}")]
pub struct Error {
    /// 1-based line where the instruction starts.
    pub line: usize,
    pub message: String,
}

/// `Result` with this module's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The arguments of an instruction that has an exec (JSON) and a shell form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `["prog", "arg"]`.
    Exec(Vec<String>),
    /// `prog arg`, run as `/bin/sh -c "prog arg"`.
    Shell(String),
}

impl Command {
    /// The argv the command runs as.
    pub fn argv(&self) -> Vec<String> {
        match self {
            Command::Exec(args) => args.clone(),
            Command::Shell(line) => vec!["/bin/sh".into(), "-c".into(), line.clone()],
        }
    }
}

/// One Dockerfile instruction, variables not yet expanded (they depend on build state).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Instruction {
    From {
        image: String,
    },
    /// `COPY` (`add == false`) or `ADD`: sources relative to the context, a destination.
    Copy {
        add: bool,
        sources: Vec<String>,
        dest: String,
        chown: Option<String>,
    },
    Env(Vec<(String, String)>),
    Arg {
        name: String,
        default: Option<String>,
    },
    Label(Vec<(String, String)>),
    Workdir(String),
    User(String),
    Expose(Vec<String>),
    Entrypoint(Command),
    Cmd(Command),
    Run(Command),
}

/// An instruction with the line it started on and its source text (for history and
/// the build cache).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub line: usize,
    pub text: String,
    pub instruction: Instruction,
}

/// Parses a whole Dockerfile.
///
/// # Errors
/// An unknown instruction or malformed arguments, naming the line.
pub fn parse(source: &str) -> Result<Vec<Step>> {
    let mut steps = Vec::new();
    for (line, text) in logical_lines(source) {
        let err = |message: String| Error { line, message };
        let trimmed = text.trim();
        let (keyword, rest) = match trimmed.find(char::is_whitespace) {
            Some(at) => (&trimmed[..at], trimmed[at..].trim()),
            None => (trimmed, ""),
        };
        let keyword = keyword.to_ascii_uppercase();
        if rest.is_empty() {
            return Err(err(format!("{keyword} needs arguments")));
        }
        let instruction = match keyword.as_str() {
            "FROM" => {
                let words: Vec<&str> = rest.split_whitespace().collect();
                match words.as_slice() {
                    [image] => Instruction::From {
                        image: (*image).to_string(),
                    },
                    [image, as_kw, _] if as_kw.eq_ignore_ascii_case("as") => Instruction::From {
                        image: (*image).to_string(),
                    },
                    _ => return Err(err(format!("FROM takes one image, got {rest:?}"))),
                }
            }
            "COPY" | "ADD" => parse_copy(keyword == "ADD", rest).map_err(err)?,
            "ENV" => Instruction::Env(parse_pairs(rest, true).map_err(err)?),
            "LABEL" => Instruction::Label(parse_pairs(rest, false).map_err(err)?),
            "ARG" => {
                let (name, default) = match rest.split_once('=') {
                    Some((name, value)) => (name, Some(unquote(value).map_err(err)?)),
                    None => (rest, None),
                };
                if !valid_name(name) {
                    return Err(err(format!("invalid ARG name {name:?}")));
                }
                Instruction::Arg {
                    name: name.to_string(),
                    default,
                }
            }
            "WORKDIR" => Instruction::Workdir(rest.to_string()),
            "USER" => Instruction::User(rest.to_string()),
            "EXPOSE" => Instruction::Expose(rest.split_whitespace().map(String::from).collect()),
            "ENTRYPOINT" => Instruction::Entrypoint(parse_command(rest).map_err(err)?),
            "CMD" => Instruction::Cmd(parse_command(rest).map_err(err)?),
            "RUN" => Instruction::Run(parse_command(rest).map_err(err)?),
            other => return Err(err(format!("unknown instruction {other}"))),
        };
        steps.push(Step {
            line,
            text: trimmed.to_string(),
            instruction,
        });
    }
    match steps.first() {
        None => Err(Error {
            line: 1,
            message: "the Dockerfile has no instructions".into(),
        }),
        Some(_) => Ok(steps),
    }
}

/// Joins continuation lines (trailing `\`), drops comments and blank lines; yields the
/// 1-based line each logical line starts on.
fn logical_lines(source: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut current: Option<(usize, String)> = None;
    for (index, raw) in source.lines().enumerate() {
        let trimmed = raw.trim_start();
        if trimmed.starts_with('#') {
            // Comments (and parser directives, which we ignore) — also inside continuations.
            continue;
        }
        if current.is_none() && trimmed.trim().is_empty() {
            continue;
        }
        let (start, mut text) = current.take().unwrap_or((index + 1, String::new()));
        let body = raw.trim_end();
        if let Some(head) = body.strip_suffix('\\') {
            text.push_str(head);
            text.push(' ');
            current = Some((start, text));
        } else {
            text.push_str(body);
            out.push((start, text));
        }
    }
    if let Some((start, text)) = current {
        if !text.trim().is_empty() {
            out.push((start, text));
        }
    }
    out
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '-')
        && !name.starts_with(|c: char| c.is_ascii_digit())
}

fn parse_command(rest: &str) -> Result<Command, String> {
    if rest.starts_with('[') {
        if let Ok(args) = serde_json::from_str::<Vec<String>>(rest) {
            return Ok(Command::Exec(args));
        }
        // Docker falls back to the shell form when the JSON does not parse.
    }
    Ok(Command::Shell(rest.to_string()))
}

fn parse_copy(add: bool, rest: &str) -> Result<Instruction, String> {
    let mut words = split_words(rest)?;
    let mut chown = None;
    while words.first().is_some_and(|w| w.starts_with("--")) {
        let flag = words.remove(0);
        if let Some(value) = flag.strip_prefix("--chown=") {
            chown = Some(value.to_string());
        } else if flag != "--link" {
            return Err(format!("unsupported flag {flag}"));
        }
    }
    let rest_after_flags = words.join(" ");
    let mut paths = if rest_after_flags.starts_with('[') {
        serde_json::from_str::<Vec<String>>(&rest_after_flags)
            .map_err(|e| format!("invalid JSON array: {e}"))?
    } else {
        words
    };
    if paths.len() < 2 {
        return Err("needs at least one source and a destination".into());
    }
    let dest = paths.pop().expect("at least two paths");
    Ok(Instruction::Copy {
        add,
        sources: paths,
        dest,
        chown,
    })
}

/// Splits on whitespace, honouring double and single quotes.
fn split_words(text: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' | '\'' => {
                in_word = true;
                let mut closed = false;
                for d in chars.by_ref() {
                    if d == c {
                        closed = true;
                        break;
                    }
                    word.push(d);
                }
                if !closed {
                    return Err(format!("unterminated quote in {text:?}"));
                }
            }
            '\\' => {
                in_word = true;
                if let Some(d) = chars.next() {
                    word.push(d);
                }
            }
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    Ok(words)
}

fn unquote(value: &str) -> Result<String, String> {
    let words = split_words(value)?;
    Ok(words.join(" "))
}

/// `KEY=VALUE ...` pairs, or (for ENV, legacy form) `KEY VALUE with spaces`.
fn parse_pairs(rest: &str, legacy: bool) -> Result<Vec<(String, String)>, String> {
    let first = rest.split_whitespace().next().unwrap_or_default();
    if legacy && !first.contains('=') {
        let value = rest[first.len()..].trim();
        if !valid_name(first) || value.is_empty() {
            return Err(format!("expected KEY VALUE or KEY=VALUE, got {rest:?}"));
        }
        return Ok(vec![(first.to_string(), value.to_string())]);
    }
    let mut pairs = Vec::new();
    for word in split_words(rest)? {
        let (key, value) = word
            .split_once('=')
            .ok_or_else(|| format!("expected KEY=VALUE, got {word:?}"))?;
        if key.is_empty() {
            return Err(format!("empty key in {word:?}"));
        }
        pairs.push((key.to_string(), value.to_string()));
    }
    Ok(pairs)
}

/// Expands `$VAR`, `${VAR}`, `${VAR:-default}` and `${VAR:+alt}` from `vars`; `\$` is a
/// literal dollar. Unknown variables expand to nothing, as in Docker.
///
/// # Errors
/// An unterminated `${`.
pub fn expand(text: &str, vars: &BTreeMap<String, String>) -> Result<String, String> {
    let mut out = String::new();
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        match chars[i] {
            '\\' if chars.get(i + 1) == Some(&'$') => {
                out.push('$');
                i += 2;
            }
            '$' if chars.get(i + 1) == Some(&'{') => {
                let end = chars[i + 2..]
                    .iter()
                    .position(|&c| c == '}')
                    .ok_or_else(|| format!("unterminated ${{ in {text:?}"))?;
                let inner: String = chars[i + 2..i + 2 + end].iter().collect();
                let value = if let Some((name, default)) = inner.split_once(":-") {
                    match vars.get(name).filter(|v| !v.is_empty()) {
                        Some(v) => v.clone(),
                        None => default.to_string(),
                    }
                } else if let Some((name, alt)) = inner.split_once(":+") {
                    match vars.get(name).filter(|v| !v.is_empty()) {
                        Some(_) => alt.to_string(),
                        None => String::new(),
                    }
                } else {
                    vars.get(&inner).cloned().unwrap_or_default()
                };
                out.push_str(&value);
                i += end + 3;
            }
            '$' if chars
                .get(i + 1)
                .is_some_and(|c| c.is_ascii_alphabetic() || *c == '_') =>
            {
                let len = chars[i + 1..]
                    .iter()
                    .take_while(|c| c.is_ascii_alphanumeric() || **c == '_')
                    .count();
                let name: String = chars[i + 1..i + 1 + len].iter().collect();
                out.push_str(vars.get(&name).map(String::as_str).unwrap_or_default());
                i += len + 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_forms_continuations_and_comments() {
        let source = "# syntax comment\nARG VERSION=1.0.0\nFROM scratch\n\nCOPY --chown=0:0 busybox \\\n  /bin/busybox\nENV PATH=/bin A=\"x y\"\nENV LEGACY some value\nLABEL org.version=$VERSION\nEXPOSE 80 53/udp\nCMD [\"httpd\", \"-f\"]\nENTRYPOINT echo hi\nWORKDIR /www\nUSER 1000:1000\n";
        let steps = parse(source).expect("parses");
        let instructions: Vec<_> = steps.iter().map(|s| s.instruction.clone()).collect();
        assert_eq!(
            instructions,
            vec![
                Instruction::Arg {
                    name: "VERSION".into(),
                    default: Some("1.0.0".into())
                },
                Instruction::From {
                    image: "scratch".into()
                },
                Instruction::Copy {
                    add: false,
                    sources: vec!["busybox".into()],
                    dest: "/bin/busybox".into(),
                    chown: Some("0:0".into())
                },
                Instruction::Env(vec![
                    ("PATH".into(), "/bin".into()),
                    ("A".into(), "x y".into())
                ]),
                Instruction::Env(vec![("LEGACY".into(), "some value".into())]),
                Instruction::Label(vec![("org.version".into(), "$VERSION".into())]),
                Instruction::Expose(vec!["80".into(), "53/udp".into()]),
                Instruction::Cmd(Command::Exec(vec!["httpd".into(), "-f".into()])),
                Instruction::Entrypoint(Command::Shell("echo hi".into())),
                Instruction::Workdir("/www".into()),
                Instruction::User("1000:1000".into()),
            ]
        );
        let lines: Vec<usize> = steps.iter().map(|s| s.line).collect();
        assert_eq!(lines, vec![2, 3, 5, 7, 8, 9, 10, 11, 12, 13, 14]);
    }

    #[test]
    fn errors_name_the_line() {
        let cases = [
            (
                "unknown",
                "FROM scratch\nFROBNICATE x\n",
                2,
                "unknown instruction",
            ),
            ("no args", "FROM scratch\n\nCOPY\n", 3, "needs arguments"),
            (
                "one path",
                "FROM scratch\nCOPY a\n",
                2,
                "source and a destination",
            ),
            ("bad env", "FROM scratch\nENV =x\n", 2, "empty key"),
            ("empty", "# nothing\n", 1, "no instructions"),
        ];
        for (name, source, line, message) in cases {
            let err = parse(source).expect_err(name);
            assert_eq!(err.line, line, "{name}");
            assert!(err.to_string().contains(message), "{name}: {err}");
            assert!(
                err.to_string().contains(&format!("line {line}")),
                "{name}: {err}"
            );
        }
    }

    #[test]
    fn expands_variables() {
        let vars: BTreeMap<String, String> =
            [("A".to_string(), "1".to_string())].into_iter().collect();
        let cases = [
            ("$A/x", "1/x"),
            ("${A}y", "1y"),
            ("${B:-dflt}", "dflt"),
            ("${A:+alt}", "alt"),
            ("${B:+alt}", ""),
            ("\\$A", "$A"),
            ("$B.", "."),
            ("cost $5", "cost $5"),
        ];
        for (input, want) in cases {
            assert_eq!(expand(input, &vars).expect(input), want, "{input}");
        }
    }
}
