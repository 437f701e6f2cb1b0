//! Small dstack value syntaxes shared by every configuration type: names, durations, environment
//! variables, ports, Python versions.

use super::fields::{Issue, Object, Res, at, bounded, describe, list, string};
use super::yaml::{Node, Value};
use super::{EnvVar, PortMapping};

/// dstack's resource names: a lowercase letter, then lowercase letters, digits and hyphens; 2 to 41
/// characters (`^[a-z][a-z0-9-]{1,40}$`).
pub(crate) fn resource_name(node: &Node, path: &str) -> Res<String> {
    let name = string(node, path)?;
    if is_valid_name(&name) {
        return Ok(name);
    }
    Err(Issue::invalid(
        node.mark,
        path,
        format!(
            "\"{name}\" is not a valid name: use 2 to 41 lowercase letters, digits and hyphens, starting with a letter"
        ),
    ))
}

/// Whether `name` is a valid run, fleet or project name (the rule above).
pub fn is_valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_lowercase());
    let rest_ok = chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    first_ok && rest_ok && (2..=41).contains(&name.len())
}

/// A duration as dstack writes it, before the field decides what "off" and "default" mean.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Duration {
    /// `off`, `false`.
    Off,
    /// `true`: the field's default.
    Default,
    Secs(u64),
}

/// `90` (seconds), `"90"`, `30s`, `30m`, `2h`, `1d`, `1w`, `off`/`false`, `true`.
pub(crate) fn duration(node: &Node, path: &str) -> Res<Duration> {
    let bad = || {
        Issue::invalid(
            node.mark,
            path,
            format!("cannot read {} as a duration (use e.g. 90s, 30m, 2h, 1d, 1w, or off)", describe(node)),
        )
    };
    match &node.value {
        Value::Bool(false) => Ok(Duration::Off),
        Value::Bool(true) => Ok(Duration::Default),
        Value::Int(i) if *i >= 0 => Ok(Duration::Secs(*i as u64)),
        Value::Int(_) => Err(Issue::invalid(node.mark, path, "a duration cannot be negative")),
        Value::Str(s) if s == "off" => Ok(Duration::Off),
        Value::Str(s) => parse_duration(s).map(Duration::Secs).ok_or_else(bad),
        _ => Err(bad()),
    }
}

/// `"2h"` → 7200. Accepts dstack's `<digits> *<unit>` with units s, m, h, d, w, and plain digits.
pub fn parse_duration(text: &str) -> Option<u64> {
    let text = text.trim();
    if let Ok(secs) = text.parse::<u64>() {
        return Some(secs);
    }
    let unit = text.chars().last()?;
    let multiplier = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        'd' => 24 * 3600,
        'w' => 7 * 24 * 3600,
        _ => return None,
    };
    let amount = text[..text.len() - 1].trim_end();
    if amount.is_empty() || !amount.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    amount.parse::<u64>().ok()?.checked_mul(multiplier)
}

/// A duration field where `off`/`false` and absence both mean "no limit" (`max_duration`,
/// `inactivity_duration`).
pub(crate) fn off_duration(node: &Node, path: &str) -> Res<Option<u64>> {
    Ok(match duration(node, path)? {
        Duration::Off | Duration::Default => None,
        Duration::Secs(s) => Some(s),
    })
}

/// A duration that must be a number of seconds (`off` is not allowed): probe intervals, retry periods.
pub(crate) fn secs(node: &Node, path: &str) -> Res<u64> {
    match duration(node, path)? {
        Duration::Secs(s) => Ok(s),
        _ => Err(Issue::invalid(
            node.mark,
            path,
            format!("expected a duration such as 30s or 1h, found {}", describe(node)),
        )),
    }
}

/// `env` as a list (`- A=1`, `- HF_TOKEN`) or a mapping (`A: 1`, `HF_TOKEN:`). A name without a value
/// is taken from the environment of `corral apply`.
pub(crate) fn env(node: &Node, path: &str) -> Res<Vec<EnvVar>> {
    let mut vars: Vec<EnvVar> = Vec::new();
    let mut add = |var: EnvVar, node: &Node, path: String| -> Res<()> {
        if !valid_env_name(&var.name) {
            return Err(Issue::invalid(
                node.mark,
                path,
                format!(
                    "\"{}\" is not a valid variable name (letters, digits and _, not starting with a digit)",
                    var.name
                ),
            ));
        }
        if vars.iter().any(|v| v.name == var.name) {
            return Err(Issue::invalid(node.mark, path, format!("`{}` is set twice", var.name)));
        }
        vars.push(var);
        Ok(())
    };
    match &node.value {
        Value::Seq(items) => {
            for (i, item) in items.iter().enumerate() {
                let p = at(path, i);
                let Value::Str(s) = &item.value else {
                    return Err(Issue::invalid(
                        item.mark,
                        p,
                        format!("expected `NAME=value` or `NAME`, found {}", item.kind()),
                    ));
                };
                let var = match s.split_once('=') {
                    Some((name, value)) => EnvVar { name: name.to_owned(), value: Some(value.to_owned()) },
                    None => EnvVar { name: s.clone(), value: None },
                };
                add(var, item, p)?;
            }
        }
        Value::Map(entries) => {
            for (key, value) in entries {
                let p = super::fields::join(path, &key.text);
                let value = match &value.value {
                    Value::Null => None,
                    Value::Str(s) => Some(s.clone()),
                    Value::Int(_) | Value::Float(_) | Value::Bool(_) => Some(value.text.clone()),
                    _ => {
                        return Err(Issue::invalid(value.mark, p, format!("expected a value, found {}", value.kind())));
                    }
                };
                add(EnvVar { name: key.text.clone(), value }, key, p)?;
            }
        }
        _ => {
            return Err(Issue::invalid(
                node.mark,
                path,
                format!("expected a list (`- NAME=value`) or a mapping (`NAME: value`), found {}", node.kind()),
            ));
        }
    }
    Ok(vars)
}

fn valid_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// One entry of `ports`: `8000`, `"8080:8000"`, `"*:8000"`, or `{local_port:, container_port:}`. A bare
/// port is forwarded to the same local port, as in dstack.
pub(crate) fn port_mapping(node: &Node, path: &str) -> Res<PortMapping> {
    match &node.value {
        Value::Int(_) => {
            let p = port(node, path)?;
            Ok(PortMapping { local: Some(p), container: p })
        }
        Value::Str(s) => parse_port_mapping(s).ok_or_else(|| {
            Issue::invalid(
                node.mark,
                path,
                format!("cannot read \"{s}\" as a port (use 8000, \"8080:8000\" or \"*:8000\")"),
            )
        }),
        Value::Map(_) => {
            let o = Object::new(node, path, "port mapping", &["local_port", "container_port"])?;
            Ok(PortMapping { local: o.map("local_port", port)?, container: o.require("container_port", port)? })
        }
        _ => Err(Issue::invalid(
            node.mark,
            path,
            format!("expected a port number or \"local:container\", found {}", node.kind()),
        )),
    }
}

/// `"8000"`, `"8080:8000"`, `"*:8000"`.
pub fn parse_port_mapping(text: &str) -> Option<PortMapping> {
    let parse = |s: &str| s.parse::<u16>().ok().filter(|p| *p > 0);
    match text.split_once(':') {
        None => parse(text).map(|p| PortMapping { local: Some(p), container: p }),
        Some(("*", container)) => Some(PortMapping { local: None, container: parse(container)? }),
        Some((local, container)) => Some(PortMapping { local: Some(parse(local)?), container: parse(container)? }),
    }
}

pub(crate) fn port(node: &Node, path: &str) -> Res<u16> {
    bounded(node, path, 1, 65535)
}

pub(crate) fn ports(node: &Node, path: &str) -> Res<Vec<PortMapping>> {
    list(node, path)?.iter().enumerate().map(|(i, item)| port_mapping(item, &at(path, i))).collect()
}

pub const PYTHON_VERSIONS: [&str; 7] = ["3.9", "3.10", "3.11", "3.12", "3.13", "3.14", "3.15"];

/// `python: 3.12` (a number in YAML), `"3.12"`. `3.1` is read as 3.10, as dstack does, since YAML
/// turns an unquoted `3.10` into 3.1 for most loaders.
pub(crate) fn python_version(node: &Node, path: &str) -> Res<String> {
    let text = string(node, path)?;
    let text = if text == "3.1" { "3.10".to_owned() } else { text };
    match PYTHON_VERSIONS.iter().find(|v| **v == text) {
        Some(v) => Ok((*v).to_owned()),
        None => Err(Issue::invalid(
            node.mark,
            path,
            format!("unsupported Python version \"{text}\", expected one of: {}", PYTHON_VERSIONS.join(", ")),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("2h"), Some(7200));
        assert_eq!(parse_duration("30m"), Some(1800));
        assert_eq!(parse_duration("1d"), Some(86400));
        assert_eq!(parse_duration("1w"), Some(604800));
        assert_eq!(parse_duration("90s"), Some(90));
        assert_eq!(parse_duration("90"), Some(90));
        assert_eq!(parse_duration("5 m"), Some(300));
        assert_eq!(parse_duration("2hours"), None);
        assert_eq!(parse_duration("h"), None);
        assert_eq!(parse_duration("1.5h"), None);
        assert_eq!(parse_duration("99999999999999999999w"), None);
    }

    #[test]
    fn port_mappings() {
        assert_eq!(parse_port_mapping("8080:8000"), Some(PortMapping { local: Some(8080), container: 8000 }));
        assert_eq!(parse_port_mapping("*:8000"), Some(PortMapping { local: None, container: 8000 }));
        assert_eq!(parse_port_mapping("8000"), Some(PortMapping { local: Some(8000), container: 8000 }));
        assert_eq!(parse_port_mapping("0"), None);
        assert_eq!(parse_port_mapping("70000"), None);
        assert_eq!(parse_port_mapping("a:b"), None);
    }

    #[test]
    fn env_names() {
        assert!(valid_env_name("HF_TOKEN"));
        assert!(valid_env_name("_x1"));
        assert!(!valid_env_name("1X"));
        assert!(!valid_env_name("A-B"));
        assert!(!valid_env_name(""));
    }
}
