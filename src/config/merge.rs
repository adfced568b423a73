//! Reading several configuration files and merging them into one tree.
//!
//! The two programs merge differently, and syn2mas must see what each program sees:
//!
//! * Synapse (`-c a.yaml -c b.yaml`, or a `conf.d` directory) does a Python `dict.update` per
//!   file: a later file replaces whole **top-level** keys. `database:` in `b.yaml` therefore
//!   replaces all of `a.yaml`'s `database`, it is not merged into it. See `merge_top_level`.
//! * MAS merges recursively: see `merge_deep`.

use super::error::ConfigError;
use super::tree::{Node, Value};
use std::path::{Path, PathBuf};

/// Reads and parses every file, in order. The index of each file in `paths` is recorded in
/// every node so that errors can name the file a value came from.
pub(crate) fn load_documents(paths: &[PathBuf]) -> Result<Vec<Node>, ConfigError> {
    paths
        .iter()
        .enumerate()
        .map(|(index, path)| load_document(path, index))
        .collect()
}

fn load_document(path: &Path, index: usize) -> Result<Node, ConfigError> {
    let read = |source| ConfigError::Read {
        path: path.to_owned(),
        source,
    };
    let bytes = super::read_file_capped(path).map_err(read)?;
    let text = String::from_utf8(bytes).map_err(|_| {
        read(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "stream did not contain valid UTF-8",
        ))
    })?;
    parse_document(path, &text, index)
}

/// Parses one file's text. An empty file (or one holding only comments) is an empty mapping;
/// anything else at the top level than a mapping is an error, as it is for both programs.
pub(crate) fn parse_document(path: &Path, text: &str, index: usize) -> Result<Node, ConfigError> {
    let mut value: serde_norway::Value =
        serde_norway::from_str(text).map_err(|e| yaml_error(path, &e))?;
    // `<<: *anchor` merge keys: PyYAML applies them, so a Synapse file may rely on them.
    value.apply_merge().map_err(|e| yaml_error(path, &e))?;
    let node = Node::from_yaml(value, index);
    match node.value {
        Value::Null => Ok(Node::new(Value::Map(Vec::new()), index)),
        Value::Map(_) => Ok(node),
        _ => Err(ConfigError::Invalid {
            path: path.to_owned(),
            key: "(top level)".to_owned(),
            message: "expected a mapping of configuration keys".to_owned(),
        }),
    }
}

/// A YAML error with its line and column when the parser knows them. serde_norway appends
/// " at line L column C" to its message; that part is dropped since the variant carries both.
fn yaml_error(path: &Path, error: &serde_norway::Error) -> ConfigError {
    let message = error.to_string();
    match error.location() {
        Some(loc) => {
            let suffix = format!(" at line {} column {}", loc.line(), loc.column());
            ConfigError::Syntax {
                path: path.to_owned(),
                line: loc.line(),
                column: loc.column(),
                message: message.replacen(&suffix, "", 1),
            }
        }
        None => ConfigError::Yaml {
            path: path.to_owned(),
            message,
        },
    }
}

/// Synapse's rule: each later document replaces whole top-level keys of the earlier ones.
pub(crate) fn merge_top_level(documents: Vec<Node>) -> Node {
    let mut merged: Vec<(String, Node)> = Vec::new();
    let mut file = 0;
    for document in documents {
        file = document.file;
        let Value::Map(entries) = document.value else {
            continue;
        };
        for (key, value) in entries {
            set(&mut merged, key, value);
        }
    }
    Node::new(Value::Map(merged), file)
}

/// MAS's rule, applied to `over` on top of `base`:
///
/// * mapping + mapping: merged key by key, recursively;
/// * anything else: the later value wins, **including sequences** (a later
///   `passwords.schemes` or `upstream_oauth2.providers` list replaces the earlier one) and
///   including a later `null`.
///
/// Sequences: `mas-cli` "admerges" its files with figment, which *appends* arrays. syn2mas
/// replaces them instead, on purpose: appending makes the same list written in two files (a base
/// file and an override that restates it) show every password scheme twice, which MAS rejects as
/// a duplicate version, and nobody splitting a config across files expects "add to the list"
/// for a key they restate. The cost: an operator who *does* split `upstream_oauth2.providers`
/// across files will see only the last file's providers here, so checks would report the earlier
/// ones as missing (an error, never a silent data loss).
pub(crate) fn merge_deep(base: Node, over: Node) -> Node {
    match (base.value, over.value) {
        (Value::Map(mut merged), Value::Map(entries)) => {
            for (key, value) in entries {
                match take(&mut merged, &key) {
                    Some((index, old)) => merged.insert(index, (key, merge_deep(old, value))),
                    None => merged.push((key, value)),
                }
            }
            Node::new(Value::Map(merged), over.file)
        }
        (_, value) => Node::new(value, over.file),
    }
}

/// Replaces `key` in place (keeping its position) or appends it.
fn set(entries: &mut Vec<(String, Node)>, key: String, value: Node) {
    match entries.iter_mut().find(|(k, _)| *k == key) {
        Some(slot) => slot.1 = value,
        None => entries.push((key, value)),
    }
}

/// Removes `key`, returning where it was and its value.
fn take(entries: &mut Vec<(String, Node)>, key: &str) -> Option<(usize, Node)> {
    let index = entries.iter().position(|(k, _)| k == key)?;
    Some((index, entries.remove(index).1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str, index: usize) -> Node {
        parse_document(Path::new("/x.yaml"), text, index).unwrap()
    }

    fn to_yaml(node: &Node) -> String {
        fn conv(node: &Node) -> serde_norway::Value {
            use serde_norway::Value as Y;
            match &node.value {
                Value::Null => Y::Null,
                Value::Bool(b) => Y::Bool(*b),
                Value::Int(i) => Y::Number((*i as i64).into()),
                Value::Float(f) => Y::Number((*f).into()),
                Value::Str(s) => Y::String(s.clone()),
                Value::Seq(items) => Y::Sequence(items.iter().map(conv).collect()),
                Value::Map(entries) => Y::Mapping(
                    entries
                        .iter()
                        .map(|(k, v)| (Y::String(k.clone()), conv(v)))
                        .collect(),
                ),
            }
        }
        serde_norway::to_string(&conv(node)).unwrap()
    }

    #[test]
    fn top_level_merge_replaces_whole_sections() {
        let a = parse(
            "server_name: a\ndatabase:\n  name: psycopg2\n  args: {host: h}\n",
            0,
        );
        let b = parse("database:\n  name: sqlite3\n", 1);
        let merged = merge_top_level(vec![a, b]);
        assert_eq!(
            to_yaml(&merged),
            "server_name: a\ndatabase:\n  name: sqlite3\n"
        );
    }

    #[test]
    fn deep_merge_merges_maps_and_replaces_lists_and_scalars() {
        let a = parse(
            "matrix: {homeserver: a, secret: s}\npasswords:\n  schemes: [{version: 1}, {version: 2}]\n",
            0,
        );
        let b = parse(
            "matrix: {homeserver: b}\npasswords:\n  schemes: [{version: 3}]\n",
            1,
        );
        let merged = merge_deep(a, b);
        assert_eq!(
            to_yaml(&merged),
            "matrix:\n  homeserver: b\n  secret: s\npasswords:\n  schemes:\n  - version: 3\n"
        );
    }

    #[test]
    fn deep_merge_keeps_the_origin_of_each_value() {
        let a = parse("matrix: {homeserver: a, secret: s}\n", 0);
        let b = parse("matrix: {homeserver: b}\n", 1);
        let Value::Map(top) = merge_deep(a, b).value else {
            panic!("not a map")
        };
        let Value::Map(matrix) = &top[0].1.value else {
            panic!("not a map")
        };
        assert_eq!(matrix[0].1.file, 1);
        assert_eq!(matrix[1].1.file, 0);
    }

    #[test]
    fn empty_file_is_an_empty_mapping_and_merge_keys_apply() {
        assert_eq!(to_yaml(&parse("# only a comment\n", 0)), "{}\n");
        let node = parse("base: &b {x: 1}\nother:\n  <<: *b\n  y: 2\n", 0);
        assert_eq!(to_yaml(&node), "base:\n  x: 1\nother:\n  y: 2\n  x: 1\n");
    }

    #[test]
    fn several_documents_in_one_file_are_an_error_naming_the_file() {
        let err = parse_document(Path::new("/x.yaml"), "a: 1\n---\nb: 2\n", 0).unwrap_err();
        assert_eq!(
            err.to_string(),
            "/x.yaml: YAML error: deserializing from YAML containing more than one document is not supported"
        );
    }

    #[test]
    fn non_mapping_document_is_rejected() {
        let err = parse_document(Path::new("/x.yaml"), "- a\n- b\n", 0).unwrap_err();
        assert_eq!(
            err.to_string(),
            "/x.yaml: `(top level)`: expected a mapping of configuration keys"
        );
    }
}
