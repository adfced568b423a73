//! A parsed YAML document in which every value remembers which file it came from, and a small
//! typed accessor ([`Field`]) that reads it key by key.
//!
//! Why not `#[derive(Deserialize)]`: the operator needs to be told *which file* and *which key*
//! is wrong, and both Synapse and MAS files are merged from several sources before they are
//! read. serde's errors know neither after a merge. Reading the merged tree by hand also lets the
//! Synapse side be exactly as lenient as Synapse (null sections, `only_for_reauth`, any map for
//! `user_consent`) without a pile of custom deserializers.

use super::error::ConfigError;
use std::path::PathBuf;

/// A YAML value. Mapping keys are strings: YAML scalar keys (numbers, booleans) are turned into
/// their text, because every key syn2mas looks up is a plain string.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value {
    Null,
    Bool(bool),
    Int(i128),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    Map(Vec<(String, Node)>),
}

/// A value plus the index (into the list of loaded files) of the file that set it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Node {
    pub value: Value,
    pub file: usize,
}

impl Node {
    pub fn new(value: Value, file: usize) -> Self {
        Self { value, file }
    }

    /// Converts a parsed YAML value, tagging every node with `file`. Tags (`!Foo x`) are dropped:
    /// neither Synapse (PyYAML safe_load) nor MAS gives them a meaning in these files.
    pub fn from_yaml(value: serde_norway::Value, file: usize) -> Self {
        use serde_norway::Value as Y;
        let value = match value {
            Y::Null => Value::Null,
            Y::Bool(b) => Value::Bool(b),
            Y::Number(n) => number(&n),
            Y::String(s) => Value::Str(s),
            Y::Sequence(items) => Value::Seq(
                items
                    .into_iter()
                    .map(|v| Self::from_yaml(v, file))
                    .collect(),
            ),
            Y::Mapping(map) => Value::Map(
                map.into_iter()
                    .filter_map(|(k, v)| Some((key_text(k)?, Self::from_yaml(v, file))))
                    .collect(),
            ),
            Y::Tagged(tagged) => return Self::from_yaml(tagged.value, file),
        };
        Self { value, file }
    }
}

fn number(n: &serde_norway::Number) -> Value {
    if let Some(i) = n.as_i64() {
        Value::Int(i.into())
    } else if let Some(u) = n.as_u64() {
        Value::Int(u.into())
    } else {
        Value::Float(n.as_f64().unwrap_or(f64::NAN))
    }
}

/// The text of a scalar mapping key; `None` for sequence/mapping keys, which no key path can
/// name and which are therefore ignored like any other unknown key.
fn key_text(key: serde_norway::Value) -> Option<String> {
    use serde_norway::Value as Y;
    match key {
        Y::String(s) => Some(s),
        Y::Bool(b) => Some(b.to_string()),
        Y::Number(n) => Some(n.to_string()),
        Y::Null => Some("null".to_owned()),
        Y::Tagged(t) => key_text(t.value),
        Y::Sequence(_) | Y::Mapping(_) => None,
    }
}

/// How a value is named in "expected X, found Y" messages. Never the value itself: it may be a
/// secret.
fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Int(_) => "an integer",
        Value::Float(_) => "a floating-point number",
        Value::Str(_) => "a string",
        Value::Seq(_) => "a sequence",
        Value::Map(_) => "a mapping",
    }
}

/// PyYAML (YAML 1.1, what Synapse uses) reads these words as booleans; serde_norway (YAML 1.2)
/// leaves them as strings. Accepting them on the Synapse side reads the file as Synapse does.
fn yaml11_bool(text: &str) -> Option<bool> {
    match text {
        "yes" | "Yes" | "YES" | "on" | "On" | "ON" | "true" | "True" | "TRUE" => Some(true),
        "no" | "No" | "NO" | "off" | "Off" | "OFF" | "false" | "False" | "FALSE" => Some(false),
        _ => None,
    }
}

/// One key path in a merged document. The node is `None` when the key is absent *or* null:
/// Synapse and MAS both treat `section:` with nothing under it as "not configured" (MAS #5421 is
/// the bug upstream syn2mas had by not doing so).
#[derive(Debug, Clone)]
pub(crate) struct Field<'a> {
    files: &'a [PathBuf],
    node: Option<&'a Node>,
    key: String,
    /// The file of this node or, when absent, of the nearest ancestor that exists (the place
    /// where a missing key would have to be added).
    file: usize,
}

impl<'a> Field<'a> {
    pub fn root(files: &'a [PathBuf], node: &'a Node) -> Self {
        Self {
            files,
            file: node.file,
            node: present(node),
            key: String::new(),
        }
    }

    #[cfg(test)]
    pub fn key(&self) -> &str {
        &self.key
    }

    pub fn is_present(&self) -> bool {
        self.node.is_some()
    }

    /// A child key; absent if this field is absent. Errors if this field is not a mapping.
    pub fn get(&self, name: &str) -> Result<Field<'a>, ConfigError> {
        let key = if self.key.is_empty() {
            name.to_owned()
        } else {
            format!("{}.{name}", self.key)
        };
        let child = match self.map()? {
            Some(entries) => entries
                .iter()
                .rev()
                .find(|(k, _)| k == name)
                .map(|(_, n)| n),
            None => None,
        };
        Ok(Field {
            files: self.files,
            file: child.map_or(self.file, |n| n.file),
            node: child.and_then(present),
            key,
        })
    }

    /// The items of a sequence (empty if absent), each keyed `key[i]`.
    pub fn items(&self) -> Result<Vec<Field<'a>>, ConfigError> {
        let Some(node) = self.node else {
            return Ok(Vec::new());
        };
        let Value::Seq(items) = &node.value else {
            return Err(self.type_error("a sequence"));
        };
        Ok(items
            .iter()
            .enumerate()
            .map(|(i, n)| Field {
                files: self.files,
                file: n.file,
                node: present(n),
                key: format!("{}[{i}]", self.key),
            })
            .collect())
    }

    /// The entries of a mapping (empty if absent), each keyed `key.name`.
    pub fn entries(&self) -> Result<Vec<(String, Field<'a>)>, ConfigError> {
        let Some(entries) = self.map()? else {
            return Ok(Vec::new());
        };
        entries
            .iter()
            .map(|(name, _)| Ok((name.clone(), self.get(name)?)))
            .collect()
    }

    /// Whether this is a non-empty mapping: Python's truthiness of a config section, which is
    /// how Synapse decides that e.g. `cas_config` is configured at all.
    pub fn is_nonempty_map(&self) -> Result<bool, ConfigError> {
        Ok(self.map()?.is_some_and(|entries| !entries.is_empty()))
    }

    /// Python truthiness of any value (absent and null are false).
    pub fn is_truthy(&self) -> bool {
        match self.node.map(|n| &n.value) {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(Value::Int(i)) => *i != 0,
            Some(Value::Float(f)) => *f != 0.0,
            Some(Value::Str(s)) => !s.is_empty(),
            Some(Value::Seq(items)) => !items.is_empty(),
            Some(Value::Map(entries)) => !entries.is_empty(),
        }
    }

    fn map(&self) -> Result<Option<&'a Vec<(String, Node)>>, ConfigError> {
        match self.node.map(|n| &n.value) {
            None => Ok(None),
            Some(Value::Map(entries)) => Ok(Some(entries)),
            Some(_) => Err(self.type_error("a mapping")),
        }
    }

    /// A string, strictly.
    pub fn string(&self) -> Result<Option<String>, ConfigError> {
        match self.node.map(|n| &n.value) {
            None => Ok(None),
            Some(Value::Str(s)) => Ok(Some(s.clone())),
            Some(_) => Err(self.type_error("a string")),
        }
    }

    /// A string, also accepting an integer (turned into its decimal text). For values that
    /// Synapse passes through `str()` (psycopg2 connection arguments) or that YAML may read as a
    /// number by accident (a numeric password or server name).
    pub fn string_or_int(&self) -> Result<Option<String>, ConfigError> {
        match self.node.map(|n| &n.value) {
            None => Ok(None),
            Some(Value::Str(s)) => Ok(Some(s.clone())),
            Some(Value::Int(i)) => Ok(Some(i.to_string())),
            Some(_) => Err(self.type_error("a string")),
        }
    }

    /// A boolean, strictly (YAML 1.2: `true`/`false`), as MAS reads its file.
    pub fn bool(&self) -> Result<Option<bool>, ConfigError> {
        match self.node.map(|n| &n.value) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(_) => Err(self.type_error("a boolean")),
        }
    }

    /// A boolean as PyYAML reads one (also `yes`/`no`/`on`/`off`), as Synapse reads its file.
    pub fn bool_yaml11(&self) -> Result<Option<bool>, ConfigError> {
        match self.node.map(|n| &n.value) {
            Some(Value::Str(s)) => yaml11_bool(s)
                .map(Some)
                .ok_or_else(|| self.type_error("a boolean")),
            _ => self.bool(),
        }
    }

    /// A non-negative integer that fits `T`. A string of digits is accepted too: libpq takes
    /// every connection argument as text, and figment (MAS) coerces such strings.
    pub fn uint<T: TryFrom<i128>>(&self) -> Result<Option<T>, ConfigError> {
        let value = match self.node.map(|n| &n.value) {
            None => return Ok(None),
            Some(Value::Int(i)) => *i,
            Some(Value::Str(s)) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => {
                s.parse::<i128>().map_err(|_| self.range_error::<T>())?
            }
            Some(_) => return Err(self.type_error("an integer")),
        };
        T::try_from(value)
            .map(Some)
            .map_err(|_| self.range_error::<T>())
    }

    fn range_error<T>(&self) -> ConfigError {
        let bits = std::mem::size_of::<T>() * 8;
        let max = (1u128 << bits) - 1;
        self.invalid(format!("expected an integer from 0 to {max}"))
    }

    /// "expected X, found Y", naming only the kind of value found (it may be a secret).
    pub fn type_error(&self, expected: &str) -> ConfigError {
        let found = self.node.map_or("nothing", |n| kind(&n.value));
        self.invalid(format!("expected {expected}, found {found}"))
    }

    /// An error about this key, located in the file that set it (or would have to set it).
    pub fn invalid(&self, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            path: self.path(),
            key: if self.key.is_empty() {
                "(top level)".to_owned()
            } else {
                self.key.clone()
            },
            message: message.into(),
        }
    }

    /// The file this field comes from.
    pub fn path(&self) -> PathBuf {
        self.files.get(self.file).cloned().unwrap_or_default()
    }
}

fn present(node: &Node) -> Option<&Node> {
    (node.value != Value::Null).then_some(node)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(yaml: &str) -> Node {
        Node::from_yaml(serde_norway::from_str(yaml).unwrap(), 0)
    }

    fn files() -> Vec<PathBuf> {
        vec![PathBuf::from("/etc/x.yaml")]
    }

    #[test]
    fn null_section_reads_as_absent() {
        let node = doc("cas_config:\n");
        let files = files();
        let root = Field::root(&files, &node);
        let cas = root.get("cas_config").unwrap();
        assert!(!cas.is_present());
        assert_eq!(cas.get("enabled").unwrap().bool().unwrap(), None);
        assert_eq!(cas.get("enabled").unwrap().key(), "cas_config.enabled");
    }

    #[test]
    fn wrong_type_names_key_and_kind_but_not_value() {
        let node = doc("a:\n  b: \"hunter2\"\n");
        let files = files();
        let err = Field::root(&files, &node)
            .get("a")
            .unwrap()
            .get("b")
            .unwrap()
            .bool()
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "/etc/x.yaml: `a.b`: expected a boolean, found a string"
        );
    }

    #[test]
    fn child_of_a_scalar_is_a_type_error() {
        let node = doc("a: 3\n");
        let files = files();
        let err = Field::root(&files, &node)
            .get("a")
            .unwrap()
            .get("b")
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "/etc/x.yaml: `a`: expected a mapping, found an integer"
        );
    }

    #[test]
    fn yaml11_booleans_and_digit_strings() {
        let node = doc("a: yes\nb: Off\nc: \"5432\"\nd: 70000\ne: maybe\n");
        let files = files();
        let root = Field::root(&files, &node);
        assert_eq!(root.get("a").unwrap().bool_yaml11().unwrap(), Some(true));
        assert_eq!(root.get("b").unwrap().bool_yaml11().unwrap(), Some(false));
        assert!(root.get("a").unwrap().bool().is_err());
        assert_eq!(root.get("c").unwrap().uint::<u16>().unwrap(), Some(5432));
        assert_eq!(
            root.get("d")
                .unwrap()
                .uint::<u16>()
                .unwrap_err()
                .to_string(),
            "/etc/x.yaml: `d`: expected an integer from 0 to 65535"
        );
        assert_eq!(
            root.get("e")
                .unwrap()
                .bool_yaml11()
                .unwrap_err()
                .to_string(),
            "/etc/x.yaml: `e`: expected a boolean, found a string"
        );
    }

    #[test]
    fn items_are_keyed_by_index_and_truthiness_follows_python() {
        let node = doc("l:\n  - x: 1\n  - {}\nm: {}\ns: \"\"\n");
        let files = files();
        let root = Field::root(&files, &node);
        let items = root.get("l").unwrap().items().unwrap();
        assert_eq!(items[1].key(), "l[1]");
        assert!(items[0].is_nonempty_map().unwrap());
        assert!(!items[1].is_nonempty_map().unwrap());
        assert!(!root.get("m").unwrap().is_truthy());
        assert!(!root.get("s").unwrap().is_truthy());
        assert!(root.get("l").unwrap().is_truthy());
    }
}
