//! YAML text → a small tree whose every node remembers where it starts, so that every later error can
//! name a line and a column.
//!
//! Built from `yaml-rust2`'s event parser. Scalars are resolved the way dstack's loader (PyYAML, YAML
//! 1.1) resolves the ones that matter in configurations: `yes`/`no`/`on`/`off` are booleans as well as
//! `true`/`false`. Each scalar also keeps its text as written, so that `python: 3.10` stays `3.10` and
//! `PORT: 8080` in `env` stays `8080`. Anchors, aliases and merge keys (`<<: *base`) work; an alias
//! expansion that would blow the tree up past a bound is refused, as is nesting deeper than a bound, so
//! that hostile input costs bounded time and memory.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

use super::fields::Issue;

/// Where a node starts: 1-based line and column.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Mark {
    pub line: usize,
    pub column: usize,
}

impl From<Marker> for Mark {
    fn from(m: Marker) -> Self {
        // yaml-rust2 counts lines from 1 and columns from 0.
        Self { line: m.line().max(1), column: m.col() + 1 }
    }
}

#[derive(Clone, Debug)]
pub(crate) enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    Map(Vec<(Node, Node)>),
}

#[derive(Clone, Debug)]
pub(crate) struct Node {
    pub value: Value,
    pub mark: Mark,
    /// A scalar's text as written (without quotes); empty for sequences and mappings.
    pub text: String,
}

impl Node {
    /// What kind of value this is, for messages: "a list", "a number", ...
    pub fn kind(&self) -> &'static str {
        match self.value {
            Value::Null => "empty",
            Value::Bool(_) => "a boolean",
            Value::Int(_) | Value::Float(_) => "a number",
            Value::Str(_) => "a string",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
        }
    }

    pub fn is_null(&self) -> bool {
        matches!(self.value, Value::Null)
    }
}

/// The node a field path (`resources.gpu.count`, `env[2]`, `probes[0].url`) names in `doc`, or the
/// deepest of its parents the document has (a field left to its default is not in the file). An
/// index into a mapping (`env[2]` of `env: {A: 1, ...}`) is its entry's key.
pub(crate) fn locate<'a>(doc: &'a Node, path: &str) -> &'a Node {
    let mut node = doc;
    for part in path.split('.') {
        let (key, indices) = part.split_at(part.find('[').unwrap_or(part.len()));
        if !key.is_empty() {
            let Value::Map(entries) = &node.value else { return node };
            let Some((_, value)) = entries.iter().find(|(k, _)| k.text == key) else { return node };
            node = value;
        }
        for index in indices.split('[').skip(1) {
            let Some(i) = index.strip_suffix(']').and_then(|i| i.parse::<usize>().ok()) else { return node };
            let next = match &node.value {
                Value::Seq(items) => items.get(i),
                Value::Map(entries) => entries.get(i).map(|(k, _)| k),
                _ => None,
            };
            let Some(next) = next else { return node };
            node = next;
        }
    }
    node
}

/// Nesting deeper than this is refused (no configuration needs more than a handful of levels).
const MAX_DEPTH: usize = 64;
/// Nodes in the whole tree, aliases expanded.
const MAX_NODES: usize = 100_000;

/// Parses `text` into the tree of its single document. An empty document is `Null`.
pub(crate) fn load(text: &str) -> Result<Node, Issue> {
    let mut parser = Parser::new_from_str(text);
    let mut builder = Builder::default();
    loop {
        let (event, marker) = parser
            .next_token()
            .map_err(|e| Issue::invalid(Mark::from(*e.marker()), "yaml", format!("invalid YAML: {}", e.info())))?;
        if builder.event(event, Mark::from(marker))? {
            break;
        }
    }
    match builder.docs.len() {
        0 => Ok(Node { value: Value::Null, mark: Mark { line: 1, column: 1 }, text: String::new() }),
        1 => Ok(builder.docs.swap_remove(0)),
        _ => Err(Issue::invalid(
            builder.second_doc.unwrap_or_default(),
            "yaml",
            "the file holds more than one YAML document; put one configuration in each file",
        )),
    }
}

enum Frame {
    Seq { mark: Mark, anchor: usize, items: Vec<Node> },
    Map { mark: Mark, anchor: usize, entries: Vec<(Node, Node)>, key: Option<Node> },
}

#[derive(Default)]
struct Builder {
    stack: Vec<Frame>,
    docs: Vec<Node>,
    second_doc: Option<Mark>,
    anchors: HashMap<usize, (Node, usize)>,
    nodes: usize,
}

impl Builder {
    /// Takes one event; `true` once the stream has ended.
    fn event(&mut self, event: Event, mark: Mark) -> Result<bool, Issue> {
        match event {
            Event::StreamEnd => return Ok(true),
            Event::Nothing | Event::StreamStart | Event::DocumentEnd => {}
            Event::DocumentStart => {
                if !self.docs.is_empty() && self.second_doc.is_none() {
                    self.second_doc = Some(mark);
                }
            }
            Event::SequenceStart(anchor, _) => self.open(Frame::Seq { mark, anchor, items: Vec::new() }, mark)?,
            Event::MappingStart(anchor, _) => {
                self.open(Frame::Map { mark, anchor, entries: Vec::new(), key: None }, mark)?
            }
            Event::SequenceEnd | Event::MappingEnd => {
                let node = match self.stack.pop() {
                    Some(Frame::Seq { mark, anchor, items }) => {
                        self.remember(anchor, Node { value: Value::Seq(items), mark, text: String::new() })
                    }
                    Some(Frame::Map { mark, anchor, entries, .. }) => {
                        // A block mapping's start event is marked where the parser saw its first `:`;
                        // users expect the mapping to start at its first key.
                        let mark = entries.first().map_or(mark, |(k, _)| earliest(mark, k.mark));
                        let entries = merge_keys(entries);
                        self.remember(anchor, Node { value: Value::Map(entries), mark, text: String::new() })
                    }
                    // The parser balances start and end events; an unbalanced end has nothing to close.
                    None => return Ok(false),
                };
                self.push(node);
            }
            Event::Scalar(text, style, anchor, tag) => {
                self.count(1, mark)?;
                let value = if style != TScalarStyle::Plain || tag.is_some_and(|t| t.suffix == "str") {
                    Value::Str(text.clone())
                } else {
                    resolve_plain(&text)
                };
                let node = self.remember(anchor, Node { value, mark, text });
                self.push(node);
            }
            Event::Alias(anchor) => {
                let Some((node, size)) = self.anchors.get(&anchor).cloned() else {
                    return Err(Issue::invalid(mark, "yaml", "alias to an unknown anchor"));
                };
                self.count(size, mark)?;
                self.push(Node { mark, ..node });
            }
        }
        Ok(false)
    }

    fn open(&mut self, frame: Frame, mark: Mark) -> Result<(), Issue> {
        if self.stack.len() >= MAX_DEPTH {
            return Err(Issue::invalid(mark, "yaml", format!("nested more than {MAX_DEPTH} levels deep")));
        }
        self.count(1, mark)?;
        self.stack.push(frame);
        Ok(())
    }

    fn count(&mut self, n: usize, mark: Mark) -> Result<(), Issue> {
        self.nodes = self.nodes.saturating_add(n);
        if self.nodes > MAX_NODES {
            return Err(Issue::invalid(mark, "yaml", format!("more than {MAX_NODES} values (aliases expanded)")));
        }
        Ok(())
    }

    fn remember(&mut self, anchor: usize, node: Node) -> Node {
        if anchor > 0 {
            self.anchors.insert(anchor, (node.clone(), size(&node)));
        }
        node
    }

    fn push(&mut self, node: Node) {
        match self.stack.last_mut() {
            None => self.docs.push(node),
            Some(Frame::Seq { items, .. }) => items.push(node),
            Some(Frame::Map { entries, key, .. }) => match key.take() {
                None => *key = Some(node),
                Some(k) => entries.push((k, node)),
            },
        }
    }
}

fn earliest(a: Mark, b: Mark) -> Mark {
    if (b.line, b.column) < (a.line, a.column) { b } else { a }
}

fn size(node: &Node) -> usize {
    match &node.value {
        Value::Seq(items) => 1 + items.iter().map(size).sum::<usize>(),
        Value::Map(entries) => 1 + entries.iter().map(|(k, v)| size(k) + size(v)).sum::<usize>(),
        _ => 1,
    }
}

/// Applies YAML merge keys: `<<: *base` (or a list of them) adds the entries of the merged mappings
/// that the mapping does not set itself.
fn merge_keys(entries: Vec<(Node, Node)>) -> Vec<(Node, Node)> {
    if !entries.iter().any(|(k, _)| is_merge_key(k)) {
        return entries;
    }
    let (merges, mut own): (Vec<_>, Vec<_>) = entries.into_iter().partition(|(k, _)| is_merge_key(k));
    for (_, value) in merges {
        let sources = match value.value {
            Value::Map(m) => vec![m],
            Value::Seq(items) => items
                .into_iter()
                .filter_map(|n| match n.value {
                    Value::Map(m) => Some(m),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        };
        for source in sources {
            for (k, v) in source {
                if !own.iter().any(|(o, _)| o.text == k.text) {
                    own.push((k, v));
                }
            }
        }
    }
    own
}

fn is_merge_key(key: &Node) -> bool {
    matches!(key.value, Value::Str(_)) && key.text == "<<"
}

/// Resolves an unquoted scalar: null, boolean (YAML 1.1 spellings too, as dstack's loader does),
/// integer, float, or string.
fn resolve_plain(text: &str) -> Value {
    match text {
        "" | "~" | "null" | "Null" | "NULL" => return Value::Null,
        "true" | "True" | "TRUE" | "yes" | "Yes" | "YES" | "on" | "On" | "ON" => {
            return Value::Bool(true);
        }
        "false" | "False" | "FALSE" | "no" | "No" | "NO" | "off" | "Off" | "OFF" => {
            return Value::Bool(false);
        }
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" => {
            return Value::Float(f64::INFINITY);
        }
        "-.inf" | "-.Inf" | "-.INF" => return Value::Float(f64::NEG_INFINITY),
        ".nan" | ".NaN" | ".NAN" => return Value::Float(f64::NAN),
        _ => {}
    }
    let digits = text.strip_prefix('+').unwrap_or(text);
    if let Ok(i) = digits.parse::<i64>() {
        return Value::Int(i);
    }
    let radix = |prefix: &str, radix: u32| text.strip_prefix(prefix).and_then(|d| i64::from_str_radix(d, radix).ok());
    if let Some(i) = radix("0x", 16).or_else(|| radix("0o", 8)) {
        return Value::Int(i);
    }
    let numeric = text.bytes().all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'+' | b'-'));
    match text.parse::<f64>() {
        Ok(f) if numeric && text.bytes().any(|b| b.is_ascii_digit()) => Value::Float(f),
        _ => Value::Str(text.to_owned()),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn map(node: &Node) -> &[(Node, Node)] {
        match &node.value {
            Value::Map(m) => m,
            other => panic!("not a map: {other:?}"),
        }
    }

    #[test]
    fn marks_are_one_based() {
        let doc = load("type: task\ncommands:\n  - echo hi\n").unwrap();
        let entries = map(&doc);
        assert_eq!(entries[0].0.mark, Mark { line: 1, column: 1 });
        assert_eq!(entries[1].0.mark, Mark { line: 2, column: 1 });
        let Value::Seq(items) = &entries[1].1.value else { panic!() };
        assert_eq!(items[0].mark, Mark { line: 3, column: 5 });
        assert_eq!(items[0].text, "echo hi");
    }

    #[test]
    fn scalars_resolve_like_dstack_loader() {
        assert!(matches!(resolve_plain("off"), Value::Bool(false)));
        assert!(matches!(resolve_plain("8000"), Value::Int(8000)));
        assert!(matches!(resolve_plain("3.10"), Value::Float(_)));
        assert!(matches!(resolve_plain("80GB"), Value::Str(_)));
        assert!(matches!(resolve_plain("inf"), Value::Str(_)));
        assert!(matches!(resolve_plain("1..2"), Value::Str(_)));
        let doc = load("a: '8000'\nb: 3.10\n").unwrap();
        let entries = map(&doc);
        assert!(matches!(entries[0].1.value, Value::Str(_)));
        assert_eq!(entries[1].1.text, "3.10");
    }

    #[test]
    fn syntax_errors_have_positions() {
        let err = load("type: task\ncommands: [a, b\n").unwrap_err();
        assert_eq!(err.field, "yaml");
        assert!(err.mark.line >= 2, "{err:?}");
    }

    #[test]
    fn aliases_and_merge_keys() {
        let doc = load("base: &b {x: 1, y: 2}\nother:\n  <<: *b\n  y: 3\n").unwrap();
        let other = map(&map(&doc)[1].1);
        let keys: Vec<&str> = other.iter().map(|(k, _)| k.text.as_str()).collect();
        assert_eq!(keys, ["y", "x"]);
        assert_eq!(other[0].1.text, "3");
    }

    #[test]
    fn alias_bombs_and_deep_nesting_are_bounded() {
        let mut bomb = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..10 {
            let p = i - 1;
            bomb.push_str(&format!("a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"));
        }
        assert!(load(&bomb).unwrap_err().message.contains("more than"));
        let deep = "[".repeat(200) + &"]".repeat(200);
        assert!(load(&deep).is_err());
    }

    #[test]
    fn field_paths_lead_to_their_nodes() {
        let doc = load("type: task\nenv:\n  A: 1\n  B: 2\nports: [1, 2]\nresources:\n  gpu: A100:2\n").unwrap();
        assert_eq!(locate(&doc, "env[1]").mark, Mark { line: 4, column: 3 });
        assert_eq!(locate(&doc, "ports[1]").mark, Mark { line: 5, column: 12 });
        assert_eq!(locate(&doc, "resources.gpu.count").mark, Mark { line: 7, column: 8 });
        assert_eq!(locate(&doc, "ports[9]").mark, Mark { line: 5, column: 8 });
        assert_eq!(locate(&doc, "max_duration").mark, doc.mark);
    }

    #[test]
    fn several_documents_are_refused() {
        let err = load("type: task\n---\ntype: service\n").unwrap_err();
        assert_eq!(err.mark.line, 2);
    }
}
