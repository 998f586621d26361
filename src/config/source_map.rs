//! The one parse of the config text: yaml-rust2's marked events build the
//! value tree ([`yaml::Node`], what serde reads) and, from the same events,
//! where each field is: field path -> (line, column).
//!
//! serde gives an error a field path but no position, and validation works
//! on types that have none; so every node's path is recorded with its
//! position, and any error with a path can be placed in the file. Paths are
//! spelled as `serde_path_to_error` spells them:
//! `services[0].versions[1].weight`.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

use super::yaml;

/// A 1-based line and column (columns count characters).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Position {
    pub line: usize,
    pub column: usize,
}

impl Position {
    /// The start of the file: where errors without a better place go.
    pub(crate) const START: Position = Position { line: 1, column: 1 };

    fn from_marker(marker: &Marker) -> Self {
        // yaml-rust2 counts lines from 1 but columns from 0.
        Position {
            line: marker.line().max(1),
            column: marker.col() + 1,
        }
    }
}

/// A YAML syntax error, placed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SyntaxError {
    pub position: Position,
    pub message: String,
}

/// A key written twice in one mapping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DuplicateKey {
    /// The path of the entry, as in `services[0].versions[0].weight`.
    pub path: String,
    pub key: String,
    /// The second occurrence.
    pub position: Position,
    pub first: Position,
}

/// Positions of the nodes of one YAML document, by field path.
#[derive(Debug, Default)]
pub(crate) struct SourceMap {
    /// The node at a path: a scalar, or the start of a mapping or sequence.
    values: HashMap<String, Position>,
    /// The key of the mapping entry at a path.
    keys: HashMap<String, Position>,
    /// Keys written twice in a mapping, in file order. Found here, where each
    /// one's position is known, rather than left to serde_yaml_ng, which
    /// reports only the first and places it at the mapping.
    pub duplicates: Vec<DuplicateKey>,
    /// Where a second document (`---`) starts, if the file has one.
    pub second_document: Option<Position>,
}

impl SourceMap {
    /// Parses `text` (its first document): the value tree (null for an empty
    /// document) and every node's position.
    pub(crate) fn parse(text: &str) -> Result<(SourceMap, yaml::Node), SyntaxError> {
        let mut builder = Builder {
            positions: true,
            ..Builder::default()
        };
        let mut parser = Parser::new_from_str(text);
        // `multi` so that a second document is seen and can be reported.
        match parser.load(&mut builder, true) {
            Ok(()) => Ok((builder.map, builder.tree.root.unwrap_or(yaml::Node::Null))),
            Err(error) => Err(SyntaxError {
                position: Position::from_marker(error.marker()),
                message: error.info().to_string(),
            }),
        }
    }

    /// The value tree alone, without positions: a file that turns out valid
    /// never needs them, and recording a path and a position for every node
    /// costs more than the parse itself. `Ok(None)` when the file holds
    /// something only the full parse reports (a duplicate key, a second
    /// document): the caller then parses again with [`SourceMap::parse`].
    pub(crate) fn tree(text: &str) -> Result<Option<yaml::Node>, SyntaxError> {
        let mut builder = Builder {
            positions: false,
            ..Builder::default()
        };
        let mut parser = Parser::new_from_str(text);
        match parser.load(&mut builder, true) {
            Ok(()) if builder.documents > 1 || builder.tree.duplicate => Ok(None),
            Ok(()) => Ok(Some(builder.tree.root.unwrap_or(yaml::Node::Null))),
            Err(error) => Err(SyntaxError {
                position: Position::from_marker(error.marker()),
                message: error.info().to_string(),
            }),
        }
    }

    #[cfg(test)]
    fn build(text: &str) -> Result<SourceMap, SyntaxError> {
        Self::parse(text).map(|(map, _)| map)
    }

    /// Where the value at `path` is; for a path that is not in the file (an
    /// omitted field, a default), where its nearest existing parent is.
    pub(crate) fn value(&self, path: &str) -> Position {
        let mut path = path;
        loop {
            if let Some(position) = self.values.get(path) {
                return *position;
            }
            if path.is_empty() {
                return Position::START;
            }
            path = parent(path);
        }
    }

    /// Where the key of the entry at `path` is, falling back as [`Self::value`].
    pub(crate) fn key(&self, path: &str) -> Position {
        match self.keys.get(path) {
            Some(position) => *position,
            None => self.value(path),
        }
    }
}

/// `a.b[2]` -> `a.b` -> `a` -> ``.
fn parent(path: &str) -> &str {
    match path.rfind(['.', '[']) {
        Some(i) => &path[..i],
        None => "",
    }
}

/// Joins a mapping key onto a path.
fn child_key(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

/// What the builder is inside of.
#[derive(Debug)]
enum Frame {
    Mapping {
        path: String,
        /// The key just read and where it is; `None` when a key comes next.
        key: Option<(String, Position)>,
        /// Until the first key is read: a block mapping's start event is
        /// marked after its first key, so the first key places it better.
        seen_key: bool,
        /// The keys read so far and where, to find duplicates.
        seen: HashMap<String, Position>,
    },
    Sequence {
        path: String,
        next: usize,
    },
    /// A mapping or sequence used as a mapping key: nothing inside it has a
    /// path. Counts nesting so its end is found.
    ComplexKey {
        depth: usize,
        start: Position,
    },
}

#[derive(Debug, Default)]
struct Builder {
    /// Whether paths and positions are recorded (see `SourceMap::tree`).
    positions: bool,
    map: SourceMap,
    stack: Vec<Frame>,
    documents: usize,
    tree: TreeBuilder,
}

/// Builds the value tree from the events, beside the positions.
#[derive(Debug, Default)]
struct TreeBuilder {
    open: Vec<Open>,
    /// Anchored nodes, by yaml-rust2's anchor id, for aliases to copy.
    anchors: HashMap<usize, yaml::Node>,
    root: Option<yaml::Node>,
    /// A mapping wrote a key twice.
    duplicate: bool,
}

/// A sequence or mapping whose end has not been read yet.
#[derive(Debug)]
struct Open {
    anchor: usize,
    node: OpenNode,
}

#[derive(Debug)]
enum OpenNode {
    Sequence(Vec<yaml::Node>),
    Mapping {
        entries: Vec<(yaml::Node, yaml::Node)>,
        key: Option<yaml::Node>,
    },
}

impl TreeBuilder {
    fn open(&mut self, anchor: usize, node: OpenNode) {
        self.open.push(Open { anchor, node });
    }

    fn close(&mut self) {
        if let Some(Open { anchor, node }) = self.open.pop() {
            let node = match node {
                OpenNode::Sequence(items) => yaml::Node::Sequence(items),
                OpenNode::Mapping { entries, .. } => {
                    self.duplicate |= has_duplicate(&entries);
                    yaml::Node::Mapping(yaml::merge_keys(entries))
                }
            };
            self.complete(anchor, node);
        }
    }

    fn alias(&mut self, anchor: usize) {
        // The parser refuses an alias to an unknown anchor, so null is never
        // actually taken here.
        let node = self
            .anchors
            .get(&anchor)
            .cloned()
            .unwrap_or(yaml::Node::Null);
        self.complete(0, node);
    }

    /// Puts a finished node in its parent (or at the root).
    fn complete(&mut self, anchor: usize, node: yaml::Node) {
        if anchor != 0 {
            self.anchors.insert(anchor, node.clone());
        }
        match self.open.last_mut() {
            None => {
                self.root.get_or_insert(node);
            }
            Some(Open {
                node: OpenNode::Sequence(items),
                ..
            }) => items.push(node),
            Some(Open {
                node: OpenNode::Mapping { entries, key },
                ..
            }) => match key.take() {
                None => *key = Some(node),
                Some(key) => entries.push((key, node)),
            },
        }
    }
}

/// Whether a text key appears twice among a mapping's entries (the full
/// parse finds and places each; this only tells that there is one).
fn has_duplicate(entries: &[(yaml::Node, yaml::Node)]) -> bool {
    fn text(entry: &(yaml::Node, yaml::Node)) -> Option<&str> {
        match &entry.0 {
            yaml::Node::Text(text) => Some(text.as_str()),
            _ => None,
        }
    }
    if entries.len() <= 16 {
        return entries.iter().enumerate().any(|(i, entry)| {
            text(entry).is_some_and(|key| entries[..i].iter().any(|e| text(e) == Some(key)))
        });
    }
    let mut seen = std::collections::HashSet::with_capacity(entries.len());
    entries.iter().filter_map(text).any(|key| !seen.insert(key))
}

/// The key placeholder for a key that is not a scalar, as
/// `serde_path_to_error` writes one.
const COMPLEX_KEY: &str = "?";

/// The start of a node, as far as positions are concerned.
#[derive(Clone, Copy)]
enum Node<'a> {
    Scalar(&'a str, TScalarStyle),
    Alias,
    Sequence,
    Mapping,
}

impl Node<'_> {
    fn opens(self) -> bool {
        matches!(self, Node::Sequence | Node::Mapping)
    }
}

impl Builder {
    fn node(&mut self, position: Position, node: Node<'_>) {
        let mut key_position = None;
        let path = match self.stack.last_mut() {
            None => String::new(),
            Some(Frame::ComplexKey { depth, .. }) => {
                if node.opens() {
                    *depth += 1;
                }
                return;
            }
            Some(Frame::Mapping {
                path,
                key,
                seen_key,
                seen,
            }) => match key.take() {
                None => {
                    // This node is a key.
                    if !*seen_key {
                        *seen_key = true;
                        if let Some(start) = self.map.values.get_mut(path.as_str()) {
                            *start = (*start).min(position);
                        }
                    }
                    match node {
                        Node::Scalar(text, _) => {
                            let entry = child_key(path, text);
                            if let Some(first) = seen.get(text) {
                                self.map.duplicates.push(DuplicateKey {
                                    path: entry.clone(),
                                    key: text.to_string(),
                                    position,
                                    first: *first,
                                });
                            } else {
                                seen.insert(text.to_string(), position);
                            }
                            self.map.keys.entry(entry).or_insert(position);
                            *key = Some((text.to_string(), position));
                        }
                        Node::Alias => {
                            self.map
                                .keys
                                .entry(child_key(path, COMPLEX_KEY))
                                .or_insert(position);
                            *key = Some((COMPLEX_KEY.to_string(), position));
                        }
                        Node::Sequence | Node::Mapping => {
                            self.map
                                .keys
                                .entry(child_key(path, COMPLEX_KEY))
                                .or_insert(position);
                            self.stack.push(Frame::ComplexKey {
                                depth: 1,
                                start: position,
                            });
                        }
                    }
                    return;
                }
                Some((text, at)) => {
                    key_position = Some(at);
                    child_key(path, &text)
                }
            },
            Some(Frame::Sequence { path, next }) => {
                let item = format!("{path}[{next}]");
                *next += 1;
                item
            }
        };
        // An empty value (`tls:` with nothing after it) is marked where the
        // next token starts, often the next line; its key is where it is.
        let position = match (node, key_position) {
            (Node::Scalar("", TScalarStyle::Plain), Some(at)) => at,
            _ => position,
        };
        self.map.values.entry(path.clone()).or_insert(position);
        match node {
            Node::Sequence => self.stack.push(Frame::Sequence { path, next: 0 }),
            Node::Mapping => self.stack.push(Frame::Mapping {
                path,
                key: None,
                seen_key: false,
                seen: HashMap::new(),
            }),
            Node::Scalar(..) | Node::Alias => {}
        }
    }

    fn close(&mut self) {
        match self.stack.last_mut() {
            Some(Frame::ComplexKey { depth, .. }) if *depth > 1 => *depth -= 1,
            Some(Frame::ComplexKey { start, .. }) => {
                let start = *start;
                self.stack.pop();
                // The complex key is complete; its value comes next.
                if let Some(Frame::Mapping { key, .. }) = self.stack.last_mut() {
                    *key = Some((COMPLEX_KEY.to_string(), start));
                }
            }
            Some(_) => {
                self.stack.pop();
            }
            None => {}
        }
    }
}

impl Builder {
    /// The tree alone (see `SourceMap::tree`).
    fn tree_event(&mut self, event: Event) {
        match event {
            Event::DocumentStart => self.documents += 1,
            _ if self.documents > 1 => {}
            Event::Scalar(text, style, anchor, tag) => {
                let node = yaml::Node::scalar(text, style, tag.as_ref());
                self.tree.complete(anchor, node);
            }
            Event::Alias(anchor) => self.tree.alias(anchor),
            Event::SequenceStart(anchor, _) => {
                self.tree.open(anchor, OpenNode::Sequence(Vec::new()));
            }
            Event::MappingStart(anchor, _) => self.tree.open(
                anchor,
                OpenNode::Mapping {
                    entries: Vec::new(),
                    key: None,
                },
            ),
            Event::SequenceEnd | Event::MappingEnd => self.tree.close(),
            Event::Nothing | Event::StreamStart | Event::StreamEnd | Event::DocumentEnd => {}
        }
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, event: Event, marker: Marker) {
        if !self.positions {
            self.tree_event(event);
            return;
        }
        let position = Position::from_marker(&marker);
        if self.map.second_document.is_some() {
            // Only the first document is mapped; the second is an error.
            return;
        }
        match event {
            Event::DocumentStart => {
                self.documents += 1;
                if self.documents > 1 {
                    self.map.second_document = Some(position);
                }
            }
            Event::Scalar(text, style, anchor, tag) => {
                self.node(position, Node::Scalar(&text, style));
                let node = yaml::Node::scalar(text, style, tag.as_ref());
                self.tree.complete(anchor, node);
            }
            Event::Alias(anchor) => {
                self.node(position, Node::Alias);
                self.tree.alias(anchor);
            }
            Event::SequenceStart(anchor, _) => {
                self.node(position, Node::Sequence);
                self.tree.open(anchor, OpenNode::Sequence(Vec::new()));
            }
            Event::MappingStart(anchor, _) => {
                self.node(position, Node::Mapping);
                self.tree.open(
                    anchor,
                    OpenNode::Mapping {
                        entries: Vec::new(),
                        key: None,
                    },
                );
            }
            Event::SequenceEnd | Event::MappingEnd => {
                self.close();
                self.tree.close();
            }
            Event::Nothing | Event::StreamStart | Event::StreamEnd | Event::DocumentEnd => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(line: usize, column: usize) -> Position {
        Position { line, column }
    }

    const TEXT: &str = "\
# comment
listeners:
  - name: public
    address: \"127.0.0.1:8080\"
    tls: { cert: a, key: b }
services:
- name: é
  versions: [ {name: a}, b ]
  empty:
  nested:
    k: v
";

    #[test]
    fn values_are_placed_at_their_first_character() {
        let map = SourceMap::build(TEXT).expect("valid yaml");
        assert_eq!(map.value("listeners[0].name"), at(3, 11));
        assert_eq!(map.value("listeners[0].address"), at(4, 14));
        assert_eq!(map.value("listeners[0].tls"), at(5, 10));
        assert_eq!(map.value("listeners[0].tls.key"), at(5, 26));
        assert_eq!(map.value("services[0].versions[0].name"), at(8, 22));
        assert_eq!(map.value("services[0].versions[1]"), at(8, 26));
        assert_eq!(map.value("services[0].nested.k"), at(11, 8));
    }

    #[test]
    fn block_mappings_start_at_their_first_key() {
        let map = SourceMap::build(TEXT).expect("valid yaml");
        assert_eq!(map.value(""), at(2, 1));
        assert_eq!(map.value("listeners[0]"), at(3, 5));
        assert_eq!(map.value("services[0]"), at(7, 3));
        assert_eq!(map.value("services[0].nested"), at(11, 5));
        assert_eq!(map.value("services[0].versions[0]"), at(8, 15));
    }

    #[test]
    fn empty_values_are_placed_at_their_key() {
        let map = SourceMap::build(TEXT).expect("valid yaml");
        assert_eq!(map.value("services[0].empty"), at(9, 3));
    }

    #[test]
    fn keys_and_fallback_to_parents() {
        let map = SourceMap::build(TEXT).expect("valid yaml");
        assert_eq!(map.key("listeners[0].address"), at(4, 5));
        assert_eq!(map.key("services[0].nested"), at(10, 3));
        // Not in the file: the nearest parent that is.
        assert_eq!(map.value("listeners[0].tls.cert.x"), at(5, 18));
        assert_eq!(map.value("services[0].guard.window"), at(7, 3));
        assert_eq!(map.key("services[0].guard"), at(7, 3));
        assert_eq!(map.value("admin.address"), at(2, 1));
    }

    #[test]
    fn parent_paths() {
        assert_eq!(parent("a.b[2]"), "a.b");
        assert_eq!(parent("a.b"), "a");
        assert_eq!(parent("a[0]"), "a");
        assert_eq!(parent("a"), "");
    }

    #[test]
    fn duplicates_and_second_documents_are_found() {
        let map = SourceMap::build("a: 1\nb:\n  c: 1\n  c: 2\na: 3\n").expect("valid yaml");
        assert_eq!(
            map.duplicates,
            vec![
                DuplicateKey {
                    path: "b.c".into(),
                    key: "c".into(),
                    position: at(4, 3),
                    first: at(3, 3),
                },
                DuplicateKey {
                    path: "a".into(),
                    key: "a".into(),
                    position: at(5, 1),
                    first: at(1, 1),
                },
            ]
        );
        let map = SourceMap::build("a: 1\n---\nb: 2\n").expect("valid yaml");
        assert_eq!(map.second_document, Some(at(2, 1)));
        let map = SourceMap::build("---\na: 1\n...\n").expect("valid yaml");
        assert_eq!(map.second_document, None);
    }

    #[test]
    fn complex_keys_do_not_disturb_paths() {
        let map = SourceMap::build("? [x, y]\n: 1\nz: 2\n").expect("valid yaml");
        assert_eq!(map.value("z"), at(3, 4));
        assert_eq!(map.value("?"), at(2, 3));
        assert_eq!(map.key("?"), at(1, 3));
        let map = SourceMap::build("? [x, y]\n:\n").expect("valid yaml");
        assert_eq!(map.value("?"), at(1, 3));
    }

    #[test]
    fn syntax_errors_are_placed() {
        let error = SourceMap::build("a:\n  - b\n c: d\n").expect_err("invalid yaml");
        assert_eq!(error.position.line, 3);
        assert!(!error.message.is_empty());
    }
}
