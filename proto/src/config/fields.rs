//! Reading typed values out of the YAML tree: mappings with a fixed set of fields (unknown ones refused
//! with a "did you mean"), scalars, lists, and the errors that say where and what.

use std::collections::HashSet;

use super::ConfigError;
use super::yaml::{Mark, Node, Value};

/// One problem found in a configuration; becomes a [`ConfigError`] once the file name is added.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Issue {
    pub mark: Mark,
    pub field: String,
    pub message: String,
    pub unsupported: bool,
}

impl Issue {
    pub fn invalid(mark: Mark, field: impl Into<String>, message: impl Into<String>) -> Self {
        Self { mark, field: field.into(), message: message.into(), unsupported: false }
    }

    /// A field or value that dstack accepts and Corral deliberately refuses.
    pub fn unsupported(mark: Mark, field: impl Into<String>, message: impl Into<String>) -> Self {
        Self { mark, field: field.into(), message: message.into(), unsupported: true }
    }

    pub fn into_error(self, file: &str) -> ConfigError {
        ConfigError {
            file: file.to_owned(),
            line: self.mark.line,
            column: self.mark.column,
            field: self.field,
            message: self.message,
            unsupported: self.unsupported,
        }
    }
}

pub(crate) type Res<T> = Result<T, Issue>;

/// `resources` + `gpu` → `resources.gpu`.
pub(crate) fn join(path: &str, key: &str) -> String {
    if path.is_empty() { key.to_owned() } else { format!("{path}.{key}") }
}

/// `env` + 2 → `env[2]`.
pub(crate) fn at(path: &str, index: usize) -> String {
    format!("{path}[{index}]")
}

/// A YAML mapping read as an object with a fixed set of fields.
pub(crate) struct Object<'a> {
    path: String,
    mark: Mark,
    entries: Vec<(&'a str, Mark, &'a Node)>,
}

impl<'a> Object<'a> {
    /// Reads `node` as a mapping whose keys must all be in `known`; `what` names the object in messages
    /// ("task", "gpu").
    pub fn new(node: &'a Node, path: &str, what: &str, known: &[&str]) -> Res<Self> {
        let Value::Map(map) = &node.value else {
            return Err(Issue::invalid(
                node.mark,
                field_name(path),
                format!("expected a mapping, found {}", node.kind()),
            ));
        };
        let mut entries = Vec::with_capacity(map.len());
        let mut seen = HashSet::new();
        for (key, value) in map {
            let name = match &key.value {
                Value::Str(s) => s.as_str(),
                _ => key.text.as_str(),
            };
            let field = join(path, name);
            if matches!(key.value, Value::Seq(_) | Value::Map(_) | Value::Null) {
                return Err(Issue::invalid(
                    key.mark,
                    field_name(path),
                    format!("field names must be plain words, found {}", key.kind()),
                ));
            }
            if !known.contains(&name) {
                let message = match suggest(name, known) {
                    Some(s) => format!("unknown field, did you mean `{s}`?"),
                    None if known.len() <= 12 => {
                        format!("unknown field; a {what} has: {}", known.join(", "))
                    }
                    None => format!("unknown field; a {what} has no such field"),
                };
                return Err(Issue::invalid(key.mark, field, message));
            }
            if !seen.insert(name) {
                return Err(Issue::invalid(key.mark, field, "set twice in the same mapping"));
            }
            entries.push((name, key.mark, value));
        }
        Ok(Self { path: path.to_owned(), mark: node.mark, entries })
    }

    pub fn mark(&self) -> Mark {
        self.mark
    }

    /// The path of one of this object's fields.
    pub fn path(&self, key: &str) -> String {
        join(&self.path, key)
    }

    /// The value of `key`; `None` when absent or null (null means "the default", as in dstack).
    pub fn get(&self, key: &str) -> Option<&'a Node> {
        self.entries.iter().find(|(k, _, v)| *k == key && !v.is_null()).map(|(_, _, v)| *v)
    }

    /// Where `key` is written, or where the object starts when it is absent.
    pub fn key_mark(&self, key: &str) -> Mark {
        self.entries.iter().find(|(k, _, _)| *k == key).map_or(self.mark, |(_, m, _)| *m)
    }

    pub fn has(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// Applies `read` to the field's value and path when the field is set.
    pub fn map<T>(&self, key: &str, read: impl FnOnce(&'a Node, &str) -> Res<T>) -> Res<Option<T>> {
        match self.get(key) {
            Some(node) => read(node, &self.path(key)).map(Some),
            None => Ok(None),
        }
    }

    /// Like [`Object::map`], for a field that must be present.
    pub fn require<T>(&self, key: &str, read: impl FnOnce(&'a Node, &str) -> Res<T>) -> Res<T> {
        match self.get(key) {
            Some(node) => read(node, &self.path(key)),
            None => Err(Issue::invalid(self.mark, self.path(key), "missing required field")),
        }
    }

    pub fn string(&self, key: &str) -> Res<Option<String>> {
        self.map(key, string)
    }

    pub fn boolean(&self, key: &str) -> Res<Option<bool>> {
        self.map(key, boolean)
    }

    pub fn strings(&self, key: &str) -> Res<Vec<String>> {
        Ok(self.map(key, strings)?.unwrap_or_default())
    }

    /// Refuses the field, when set, as a feature Corral does not have.
    pub fn refuse(&self, key: &str, why: &str) -> Res<()> {
        match self.get(key) {
            Some(node) => Err(Issue::unsupported(node.mark, self.path(key), why)),
            None => Ok(()),
        }
    }
}

/// The name used for a whole-document error.
fn field_name(path: &str) -> String {
    if path.is_empty() { "configuration".to_owned() } else { path.to_owned() }
}

/// A string; numbers are taken as written (`name: 2024` is "2024").
pub(crate) fn string(node: &Node, path: &str) -> Res<String> {
    match &node.value {
        Value::Str(s) => Ok(s.clone()),
        Value::Int(_) | Value::Float(_) => Ok(node.text.clone()),
        _ => Err(Issue::invalid(node.mark, path, format!("expected a string, found {}", node.kind()))),
    }
}

pub(crate) fn boolean(node: &Node, path: &str) -> Res<bool> {
    match &node.value {
        Value::Bool(b) => Ok(*b),
        Value::Str(s) if s.eq_ignore_ascii_case("true") => Ok(true),
        Value::Str(s) if s.eq_ignore_ascii_case("false") => Ok(false),
        _ => Err(Issue::invalid(node.mark, path, format!("expected true or false, found {}", node.kind()))),
    }
}

/// A whole number (`8`, `"8"`, `8.0`).
pub(crate) fn integer(node: &Node, path: &str) -> Res<i64> {
    let parsed = match &node.value {
        Value::Int(i) => Some(*i),
        Value::Str(s) => s.trim().parse::<i64>().ok(),
        Value::Float(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => Some(*f as i64),
        _ => None,
    };
    parsed.ok_or_else(|| Issue::invalid(node.mark, path, format!("expected a whole number, found {}", describe(node))))
}

/// A whole number within `min..=max`, converted to the target type.
pub(crate) fn bounded<T: TryFrom<i64>>(node: &Node, path: &str, min: i64, max: i64) -> Res<T> {
    let v = integer(node, path)?;
    if v < min || v > max {
        return Err(Issue::invalid(node.mark, path, super::limits::out_of_range(min, max, v)));
    }
    T::try_from(v).map_err(|_| Issue::invalid(node.mark, path, format!("{v} is out of range")))
}

/// Any number (`30`, `0.5`, `"0.5"`).
pub(crate) fn number(node: &Node, path: &str) -> Res<f64> {
    let parsed = match &node.value {
        Value::Int(i) => Some(*i as f64),
        Value::Float(f) => Some(*f),
        Value::Str(s) => s.trim().parse::<f64>().ok(),
        _ => None,
    };
    match parsed {
        Some(f) if f.is_finite() => Ok(f),
        _ => Err(Issue::invalid(node.mark, path, format!("expected a number, found {}", describe(node)))),
    }
}

pub(crate) fn list<'a>(node: &'a Node, path: &str) -> Res<&'a [Node]> {
    match &node.value {
        Value::Seq(items) => Ok(items),
        _ => Err(Issue::invalid(node.mark, path, format!("expected a list, found {}", node.kind()))),
    }
}

pub(crate) fn strings(node: &Node, path: &str) -> Res<Vec<String>> {
    let Value::Seq(items) = &node.value else {
        let hint = if matches!(node.value, Value::Str(_)) { " (put each item on its own `- ` line)" } else { "" };
        return Err(Issue::invalid(
            node.mark,
            path,
            format!("expected a list of strings, found {}{hint}", node.kind()),
        ));
    };
    items
        .iter()
        .enumerate()
        .map(|(i, item)| match &item.value {
            Value::Str(s) => Ok(s.clone()),
            Value::Int(_) | Value::Float(_) => Ok(item.text.clone()),
            _ => Err(Issue::invalid(item.mark, at(path, i), format!("expected a string, found {}", item.kind()))),
        })
        .collect()
}

/// A string that must be one of `choices` (compared case-sensitively, as dstack does).
pub(crate) fn choice<'c>(node: &Node, path: &str, choices: &[&'c str]) -> Res<&'c str> {
    let s = string(node, path)?;
    if let Some(c) = choices.iter().find(|c| **c == s) {
        return Ok(c);
    }
    let hint = match suggest(&s, choices) {
        Some(c) => format!("; did you mean `{c}`?"),
        None => String::new(),
    };
    Err(Issue::invalid(
        node.mark,
        path,
        format!("unknown value \"{s}\", expected one of: {}{hint}", choices.join(", ")),
    ))
}

/// A scalar shown as written, anything else by its kind.
pub(crate) fn describe(node: &Node) -> String {
    match &node.value {
        Value::Str(_) => format!("\"{}\"", node.text),
        Value::Int(_) | Value::Float(_) | Value::Bool(_) => format!("`{}`", node.text),
        _ => node.kind().to_owned(),
    }
}

/// The known word closest to `word`, when it is close enough to be a likely typo.
pub(crate) fn suggest<'k>(word: &str, known: &[&'k str]) -> Option<&'k str> {
    let norm = |s: &str| s.to_ascii_lowercase().replace('-', "_");
    let w = norm(word);
    known
        .iter()
        .map(|k| (edit_distance(&w, &norm(k)), *k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 4) && *d < w.len().max(1))
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

/// Levenshtein distance, with a swap of two neighbours counted as one edit.
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[i - 1][j] + 1).min(d[i][j - 1] + 1).min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[a.len()][b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions() {
        let known = ["commands", "image", "env", "resources", "max_duration"];
        assert_eq!(suggest("comands", &known), Some("commands"));
        assert_eq!(suggest("imgae", &known), Some("image"));
        assert_eq!(suggest("max-duration", &known), Some("max_duration"));
        assert_eq!(suggest("resource", &known), Some("resources"));
        assert_eq!(suggest("zzz", &known), None);
        assert_eq!(suggest("ev", &known), Some("env"));
    }

    #[test]
    fn distances() {
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("ab", "ba"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
    }
}
