//! String formats shared by every kind (DNS names, label parts, ports, keys, IPs), each
//! returning Kubernetes' explanations of what is wrong (empty when the value is valid).

use std::net::IpAddr;

/// The longest DNS-1123 (and DNS-1035) label.
pub const DNS1123_LABEL_MAX_LENGTH: usize = 63;
/// The longest DNS-1123 subdomain.
pub const DNS1123_SUBDOMAIN_MAX_LENGTH: usize = 253;
/// The longest name part of a qualified name, and the longest label value.
pub const QUALIFIED_NAME_MAX_LENGTH: usize = 63;

const DNS1123_LABEL_FMT: &str = "[a-z0-9]([-a-z0-9]*[a-z0-9])?";
const DNS1123_LABEL_ERR: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character";
const DNS1123_SUBDOMAIN_FMT: &str =
    "[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*";
const DNS1123_SUBDOMAIN_ERR: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character";
const DNS1035_LABEL_FMT: &str = "[a-z]([-a-z0-9]*[a-z0-9])?";
const DNS1035_LABEL_ERR: &str = "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character";
const QUALIFIED_NAME_FMT: &str = "([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]";
const QUALIFIED_NAME_ERR: &str = "must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character";
const LABEL_VALUE_FMT: &str = "(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?";
const LABEL_VALUE_ERR: &str = "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character";
const CONFIG_MAP_KEY_FMT: &str = "[-._a-zA-Z0-9]+";
const CONFIG_MAP_KEY_ERR: &str =
    "a valid config key must consist of alphanumeric characters, '-', '_' or '.'";
const PERCENT_FMT: &str = "[0-9]+%";
const PERCENT_ERR: &str =
    "a valid percent string must be a numeric string followed by an ending '%'";

/// `must be no more than N characters`.
pub fn max_len_error(length: usize) -> String {
    format!("must be no more than {length} characters")
}

/// `must be non-empty`.
pub fn empty_error() -> &'static str {
    "must be non-empty"
}

/// `must be between LO and HI, inclusive`.
pub fn inclusive_range_error(lo: i64, hi: i64) -> String {
    format!("must be between {lo} and {hi}, inclusive")
}

/// Kubernetes' explanation of a failed pattern, with examples.
pub fn regex_error(msg: &str, fmt: &str, examples: &[&str]) -> String {
    if examples.is_empty() {
        return format!("{msg} (regex used for validation is '{fmt}')");
    }
    let mut s = format!("{msg} (e.g. ");
    for (i, example) in examples.iter().enumerate() {
        if i > 0 {
            s.push_str(" or ");
        }
        s.push('\'');
        s.push_str(example);
        s.push_str("', ");
    }
    s.push_str("regex used for validation is '");
    s.push_str(fmt);
    s.push_str("')");
    s
}

fn lower_alnum(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit()
}

/// `[a-z0-9]([-a-z0-9]*[a-z0-9])?`
fn matches_dns1123_label(s: &str) -> bool {
    let (Some(first), Some(last)) = (s.chars().next(), s.chars().last()) else {
        return false;
    };
    lower_alnum(first) && lower_alnum(last) && s.chars().all(|c| lower_alnum(c) || c == '-')
}

fn matches_dns1123_subdomain(s: &str) -> bool {
    s.split('.').all(matches_dns1123_label)
}

fn matches_qualified_name_part(s: &str) -> bool {
    let (Some(first), Some(last)) = (s.chars().next(), s.chars().last()) else {
        return false;
    };
    first.is_ascii_alphanumeric()
        && last.is_ascii_alphanumeric()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// A DNS (RFC 1123) label, e.g. a namespace or container name.
pub fn is_dns1123_label(value: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if value.len() > DNS1123_LABEL_MAX_LENGTH {
        errs.push(max_len_error(DNS1123_LABEL_MAX_LENGTH));
    }
    if !matches_dns1123_label(value) {
        if matches_dns1123_subdomain(value) {
            errs.push("must not contain dots".to_string());
        } else {
            errs.push(regex_error(
                DNS1123_LABEL_ERR,
                DNS1123_LABEL_FMT,
                &["my-name", "123-abc"],
            ));
        }
    }
    errs
}

/// A DNS (RFC 1123) subdomain, e.g. most object names.
pub fn is_dns1123_subdomain(value: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if value.len() > DNS1123_SUBDOMAIN_MAX_LENGTH {
        errs.push(max_len_error(DNS1123_SUBDOMAIN_MAX_LENGTH));
    }
    if !matches_dns1123_subdomain(value) {
        errs.push(regex_error(
            DNS1123_SUBDOMAIN_ERR,
            DNS1123_SUBDOMAIN_FMT,
            &["example.com"],
        ));
    }
    errs
}

/// A DNS (RFC 1035) label: starts with a letter, e.g. a service name.
pub fn is_dns1035_label(value: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if value.len() > DNS1123_LABEL_MAX_LENGTH {
        errs.push(max_len_error(DNS1123_LABEL_MAX_LENGTH));
    }
    if !(matches_dns1123_label(value) && value.starts_with(|c: char| c.is_ascii_lowercase())) {
        errs.push(regex_error(
            DNS1035_LABEL_ERR,
            DNS1035_LABEL_FMT,
            &["my-name", "abc-123"],
        ));
    }
    errs
}

/// A qualified name (`[prefix/]name`), as label keys, annotation keys and finalizers are.
pub fn is_qualified_name(value: &str) -> Vec<String> {
    let mut errs = Vec::new();
    let parts: Vec<&str> = value.split('/').collect();
    let name = match parts.as_slice() {
        [name] => *name,
        [prefix, name] => {
            if prefix.is_empty() {
                errs.push(format!("prefix part {}", empty_error()));
            } else {
                errs.extend(
                    is_dns1123_subdomain(prefix)
                        .into_iter()
                        .map(|m| format!("prefix part {m}")),
                );
            }
            *name
        }
        _ => {
            errs.push(format!(
                "a qualified name {} with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')",
                regex_error(QUALIFIED_NAME_ERR, QUALIFIED_NAME_FMT, &["MyName", "my.name", "123-abc"])
            ));
            return errs;
        }
    };
    if name.is_empty() {
        errs.push(format!("name part {}", empty_error()));
    } else if name.len() > QUALIFIED_NAME_MAX_LENGTH {
        errs.push(format!(
            "name part {}",
            max_len_error(QUALIFIED_NAME_MAX_LENGTH)
        ));
    }
    if !matches_qualified_name_part(name) {
        errs.push(format!(
            "name part {}",
            regex_error(
                QUALIFIED_NAME_ERR,
                QUALIFIED_NAME_FMT,
                &["MyName", "my.name", "123-abc"]
            )
        ));
    }
    errs
}

/// A label value: empty, or a qualified name part of at most 63 characters.
pub fn is_label_value(value: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if value.len() > QUALIFIED_NAME_MAX_LENGTH {
        errs.push(max_len_error(QUALIFIED_NAME_MAX_LENGTH));
    }
    if !value.is_empty() && !matches_qualified_name_part(value) {
        errs.push(regex_error(
            LABEL_VALUE_ERR,
            LABEL_VALUE_FMT,
            &["MyValue", "my_value", "12345"],
        ));
    }
    errs
}

/// A port number, 1 to 65535.
pub fn is_valid_port_num(port: i64) -> Vec<String> {
    if (1..=65535).contains(&port) {
        Vec::new()
    } else {
        vec![inclusive_range_error(1, 65535)]
    }
}

/// A port name (IANA_SVC_NAME): at most 15 of `[-a-z0-9]`, at least one letter, no
/// leading, trailing or double hyphen.
pub fn is_valid_port_name(port: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if port.len() > 15 {
        errs.push(max_len_error(15));
    }
    if port.is_empty() || !port.chars().all(|c| lower_alnum(c) || c == '-') {
        errs.push(
            "must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)".to_string(),
        );
    }
    if !port.chars().any(|c| c.is_ascii_lowercase()) {
        errs.push("must contain at least one letter (a-z)".to_string());
    }
    if port.contains("--") {
        errs.push("must not contain consecutive hyphens".to_string());
    }
    if port.starts_with('-') || port.ends_with('-') {
        errs.push("must not begin or end with a hyphen".to_string());
    }
    errs
}

fn chdir_prefix(value: &str) -> Option<String> {
    match value {
        "." => Some("must not be '.'".into()),
        ".." => Some("must not be '..'".into()),
        v if v.starts_with("..") => Some("must not start with '..'".into()),
        _ => None,
    }
}

/// A key of a ConfigMap or Secret: `[-._a-zA-Z0-9]+`, not `.` or `..`.
pub fn is_config_map_key(value: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if value.len() > DNS1123_SUBDOMAIN_MAX_LENGTH {
        errs.push(max_len_error(DNS1123_SUBDOMAIN_MAX_LENGTH));
    }
    if value.is_empty()
        || !value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
    {
        errs.push(regex_error(
            CONFIG_MAP_KEY_ERR,
            CONFIG_MAP_KEY_FMT,
            &["key.name", "KEY_NAME", "key-name"],
        ));
    }
    errs.extend(chdir_prefix(value));
    errs
}

/// An environment variable name under Kubernetes' relaxed rule (on by default since
/// 1.32): printable ASCII other than `=`.
pub fn is_relaxed_env_var_name(value: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if value.is_empty() {
        errs.push(format!("environment variable name {}", empty_error()));
    }
    if value.chars().any(|c| !(' '..='~').contains(&c) || c == '=') {
        errs.push("a valid environment variable name must consist only of printable ASCII characters other than '='".to_string());
    }
    errs
}

/// A percentage such as `25%`.
pub fn is_valid_percent(value: &str) -> Vec<String> {
    let digits = value.strip_suffix('%').unwrap_or("");
    if !digits.is_empty() && digits.chars().all(|c| c.is_ascii_digit()) {
        Vec::new()
    } else {
        vec![regex_error(PERCENT_ERR, PERCENT_FMT, &["1%", "93%"])]
    }
}

/// An IPv4 or IPv6 address.
pub fn is_valid_ip(value: &str) -> Vec<String> {
    match value.parse::<IpAddr>() {
        Ok(_) => Vec::new(),
        Err(_) => vec!["must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)".to_string()],
    }
}

/// A CIDR such as `10.244.1.0/24`.
pub fn is_valid_cidr(value: &str) -> Vec<String> {
    let valid = value.split_once('/').is_some_and(|(ip, bits)| {
        let max = match ip.parse::<IpAddr>() {
            Ok(IpAddr::V4(_)) => 32,
            Ok(IpAddr::V6(_)) => 128,
            Err(_) => return false,
        };
        !bits.is_empty()
            && bits.chars().all(|c| c.is_ascii_digit())
            && bits.parse::<u32>().is_ok_and(|b| b <= max)
    });
    if valid {
        Vec::new()
    } else {
        vec!["must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)".to_string()]
    }
}

/// A generateName prefix may end in `-`: check it as if the dash were a letter.
fn mask_trailing_dash(name: &str) -> String {
    match name.strip_suffix('-') {
        Some(rest) if !rest.is_empty() => format!("{rest}a"),
        _ => name.to_string(),
    }
}

/// Name rule: a DNS-1123 subdomain (most kinds).
pub fn name_is_dns1123_subdomain(name: &str, prefix: bool) -> Vec<String> {
    let name = if prefix {
        mask_trailing_dash(name)
    } else {
        name.to_string()
    };
    is_dns1123_subdomain(&name)
}

/// Name rule: a DNS-1123 label (namespaces).
pub fn name_is_dns1123_label(name: &str, prefix: bool) -> Vec<String> {
    let name = if prefix {
        mask_trailing_dash(name)
    } else {
        name.to_string()
    };
    is_dns1123_label(&name)
}

/// Name rule: a DNS-1035 label (services).
pub fn name_is_dns1035_label(name: &str, prefix: bool) -> Vec<String> {
    let name = if prefix {
        mask_trailing_dash(name)
    } else {
        name.to_string()
    };
    is_dns1035_label(&name)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LABEL_ERR: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";
    const SUBDOMAIN_ERR: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
    const NAME_PART_ERR: &str = "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')";

    /// A table row: name, checker, input, expected messages.
    type Case<'a> = (&'a str, fn(&str) -> Vec<String>, &'a str, Vec<String>);

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn dns_names() {
        let long_label = "a".repeat(64);
        let cases: Vec<Case> = vec![
            ("label ok", is_dns1123_label, "my-name", vec![]),
            ("label digits first", is_dns1123_label, "123-abc", vec![]),
            (
                "label upper",
                is_dns1123_label,
                "Web",
                strings(&[LABEL_ERR]),
            ),
            ("label empty", is_dns1123_label, "", strings(&[LABEL_ERR])),
            (
                "label trailing dash",
                is_dns1123_label,
                "web-",
                strings(&[LABEL_ERR]),
            ),
            (
                "label dots",
                is_dns1123_label,
                "a.b",
                strings(&["must not contain dots"]),
            ),
            (
                "label too long",
                is_dns1123_label,
                &long_label,
                strings(&["must be no more than 63 characters"]),
            ),
            ("subdomain ok", is_dns1123_subdomain, "example.com", vec![]),
            (
                "subdomain empty part",
                is_dns1123_subdomain,
                "a..b",
                strings(&[SUBDOMAIN_ERR]),
            ),
            (
                "subdomain underscore",
                is_dns1123_subdomain,
                "a_b",
                strings(&[SUBDOMAIN_ERR]),
            ),
            ("1035 ok", is_dns1035_label, "web-1", vec![]),
        ];
        for (name, f, input, want) in cases {
            assert_eq!(f(input), want, "{name}");
        }
    }

    #[test]
    fn qualified_names_and_label_values() {
        let long = "a".repeat(64);
        let long_prefixed = format!("example.com/{long}");
        let cases: Vec<Case> = vec![
            ("plain", is_qualified_name, "app", vec![]),
            ("prefixed", is_qualified_name, "app.kubernetes.io/name", vec![]),
            ("empty prefix", is_qualified_name, "/name", strings(&["prefix part must be non-empty"])),
            ("bad prefix", is_qualified_name, "Example.com/name", vec![format!("prefix part {SUBDOMAIN_ERR}")]),
            ("empty name", is_qualified_name, "example.com/", strings(&["name part must be non-empty", NAME_PART_ERR])),
            ("long name", is_qualified_name, &long_prefixed, strings(&["name part must be no more than 63 characters"])),
            ("bad name", is_qualified_name, "-app", strings(&[NAME_PART_ERR])),
            (
                "two slashes",
                is_qualified_name,
                "a/b/c",
                strings(&["a qualified name must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]') with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')"]),
            ),
            ("value ok", is_label_value, "v1.2_x", vec![]),
            ("value empty", is_label_value, "", vec![]),
            (
                "value bad",
                is_label_value,
                "a b",
                strings(&["a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')"]),
            ),
            ("value long", is_label_value, &long, strings(&["must be no more than 63 characters"])),
        ];
        for (name, f, input, want) in cases {
            assert_eq!(f(input), want, "{name}");
        }
    }

    #[test]
    fn ports_keys_env_percent_addresses() {
        let cases: Vec<Case> = vec![
            ("port name ok", is_valid_port_name, "http-alt", vec![]),
            ("port name long", is_valid_port_name, "abcdefghijklmnop", strings(&["must be no more than 15 characters"])),
            (
                "port name digits only",
                is_valid_port_name,
                "8080",
                strings(&["must contain at least one letter (a-z)"]),
            ),
            (
                "port name upper",
                is_valid_port_name,
                "HTTP",
                strings(&[
                    "must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)",
                    "must contain at least one letter (a-z)",
                ]),
            ),
            (
                "port name hyphens",
                is_valid_port_name,
                "-a--b",
                strings(&["must not contain consecutive hyphens", "must not begin or end with a hyphen"]),
            ),
            ("config key ok", is_config_map_key, "app.properties", vec![]),
            (
                "config key slash",
                is_config_map_key,
                "a/b",
                strings(&["a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')"]),
            ),
            ("config key dotdot", is_config_map_key, "..a", strings(&["must not start with '..'"])),
            ("env ok", is_relaxed_env_var_name, "1-my var", vec![]),
            (
                "env equals",
                is_relaxed_env_var_name,
                "A=B",
                strings(&["a valid environment variable name must consist only of printable ASCII characters other than '='"]),
            ),
            ("env empty", is_relaxed_env_var_name, "", strings(&["environment variable name must be non-empty"])),
            ("percent ok", is_valid_percent, "25%", vec![]),
            (
                "percent bad",
                is_valid_percent,
                "25",
                strings(&["a valid percent string must be a numeric string followed by an ending '%' (e.g. '1%',  or '93%', regex used for validation is '[0-9]+%')"]),
            ),
            ("ip ok", is_valid_ip, "10.0.0.1", vec![]),
            ("ipv6 ok", is_valid_ip, "2001:db8::1", vec![]),
            ("ip bad", is_valid_ip, "10.0.0", strings(&["must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)"])),
            ("cidr ok", is_valid_cidr, "10.244.1.0/24", vec![]),
            ("cidr bits", is_valid_cidr, "10.244.1.0/33", strings(&["must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)"])),
            ("cidr no bits", is_valid_cidr, "10.244.1.0", strings(&["must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)"])),
        ];
        for (name, f, input, want) in cases {
            assert_eq!(f(input), want, "{name}");
        }
        let nums = [
            (0, false),
            (1, true),
            (65535, true),
            (65536, false),
            (-1, false),
        ];
        for (port, ok) in nums {
            assert_eq!(is_valid_port_num(port).is_empty(), ok, "port {port}");
        }
    }

    #[test]
    fn generate_name_prefixes_may_end_in_a_dash() {
        let cases = [
            ("web-", true, true),
            ("web-", false, false),
            ("-", true, false),
        ];
        for (name, prefix, ok) in cases {
            assert_eq!(
                name_is_dns1123_subdomain(name, prefix).is_empty(),
                ok,
                "{name} {prefix}"
            );
        }
    }
}
