//! The typed-TOML reading layer: spanned tables with typed getters whose errors carry the
//! file, the line and the key path. It knows nothing of the schema (`read.rs` does).

use super::ConfigError;
use crate::rules::Template;
use std::ops::Range;
use toml::Spanned;
use toml::de::{DeTable, DeValue};

/// `s` as a TOML basic string (quoted), so any token can be pasted into the embedded config.
pub(super) fn toml_basic_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The text being parsed, for turning byte spans into errors.
pub(super) struct Doc<'t> {
    pub(super) text: &'t str,
    pub(super) origin: &'t str,
}

impl Doc<'_> {
    /// 1-based line of a byte offset.
    pub(super) fn line_of(&self, offset: usize) -> usize {
        let end = offset.min(self.text.len());
        self.text.as_bytes()[..end]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1
    }

    pub(super) fn error(
        &self,
        span: Option<&Range<usize>>,
        key: Option<String>,
        message: impl Into<String>,
    ) -> ConfigError {
        ConfigError {
            file: self.origin.to_string(),
            line: span.map(|s| self.line_of(s.start)),
            key,
            message: message.into(),
        }
    }

    /// Only the parser's message is used: its `Display` quotes the offending line, which may
    /// hold a secret.
    pub(super) fn syntax_error(&self, e: &toml::de::Error) -> ConfigError {
        let message = format!("invalid TOML: {}", e.message());
        self.error(e.span().as_ref(), None, message)
    }
}

pub(super) type Value<'a> = Spanned<DeValue<'a>>;
/// The tables of an array of tables, and where the array is.
pub(super) type Tables<'a> = (Vec<Table<'a>>, Range<usize>);

/// A table being read, with its key path and location, so every error can say where it is.
pub(super) struct Table<'a> {
    pub(super) doc: &'a Doc<'a>,
    pub(super) table: &'a DeTable<'a>,
    /// Dotted key path of this table; empty for the document root.
    pub(super) path: String,
    /// Where the table starts (its header, or the inline table); `None` for the root.
    pub(super) span: Option<Range<usize>>,
}

impl<'a> Table<'a> {
    pub(super) fn key_path(&self, key: &str) -> String {
        let key = quote_key(key);
        if self.path.is_empty() {
            key
        } else {
            format!("{}.{key}", self.path)
        }
    }

    pub(super) fn line(&self) -> usize {
        self.span.as_ref().map_or(1, |s| self.doc.line_of(s.start))
    }

    /// An error about the value (or key) of `key` at `span`.
    pub(super) fn err_at(
        &self,
        key: &str,
        span: &Range<usize>,
        message: impl Into<String>,
    ) -> ConfigError {
        self.doc
            .error(Some(span), Some(self.key_path(key)), message)
    }

    /// An error about `key` located at this table (e.g. the key is missing).
    pub(super) fn err_here(&self, key: &str, message: impl Into<String>) -> ConfigError {
        self.doc
            .error(self.span.as_ref(), Some(self.key_path(key)), message)
    }

    pub(super) fn missing(&self, key: &str) -> ConfigError {
        self.err_here(key, "missing required key")
    }

    /// Refuses keys outside `allowed`, so a typo is an error rather than a silently ignored
    /// setting. Reports the first unknown key in file order.
    pub(super) fn check_keys(&self, allowed: &[&str]) -> Result<(), ConfigError> {
        let unknown = self
            .table
            .iter()
            .map(|(k, _)| k)
            .filter(|k| !allowed.contains(&k.get_ref().as_ref()))
            .min_by_key(|k| k.span().start);
        match unknown {
            Some(k) => Err(self.err_at(
                k.get_ref(),
                &k.span(),
                format!("unknown key (allowed here: {})", allowed.join(", ")),
            )),
            None => Ok(()),
        }
    }

    pub(super) fn get(&self, key: &str) -> Option<&'a Value<'a>> {
        self.table.get(key)
    }

    pub(super) fn type_error(&self, key: &str, value: &Value<'_>, expected: &str) -> ConfigError {
        let found = value.get_ref().type_str();
        self.err_at(
            key,
            &value.span(),
            format!("expected {expected}, found {found}"),
        )
    }

    pub(super) fn str(&self, key: &str) -> Result<Option<(&'a str, Range<usize>)>, ConfigError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => match v.get_ref() {
                DeValue::String(s) => Ok(Some((s.as_ref(), v.span()))),
                _ => Err(self.type_error(key, v, "a string")),
            },
        }
    }

    pub(super) fn required_str(&self, key: &str) -> Result<(&'a str, Range<usize>), ConfigError> {
        self.str(key)?.ok_or_else(|| self.missing(key))
    }

    /// An optional string that, when present, must not be empty.
    pub(super) fn non_empty_str(
        &self,
        key: &str,
    ) -> Result<Option<(&'a str, Range<usize>)>, ConfigError> {
        match self.str(key)? {
            Some(("", span)) => Err(self.err_at(key, &span, "must not be empty")),
            other => Ok(other),
        }
    }

    pub(super) fn bool(&self, key: &str) -> Result<Option<(bool, Range<usize>)>, ConfigError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => match v.get_ref() {
                DeValue::Boolean(b) => Ok(Some((*b, v.span()))),
                _ => Err(self.type_error(key, v, "a boolean (true or false)")),
            },
        }
    }

    /// An integer in `min..=max`, or `default` when absent.
    pub(super) fn uint(
        &self,
        key: &str,
        default: u64,
        min: u64,
        max: u64,
    ) -> Result<u64, ConfigError> {
        let Some(v) = self.get(key) else {
            return Ok(default);
        };
        let DeValue::Integer(i) = v.get_ref() else {
            return Err(self.type_error(key, v, "an integer"));
        };
        match u64::from_str_radix(i.as_str(), i.radix()) {
            Ok(n) if (min..=max).contains(&n) => Ok(n),
            _ if max == u64::MAX => {
                Err(self.err_at(key, &v.span(), format!("must be at least {min}")))
            }
            _ => Err(self.err_at(key, &v.span(), format!("must be between {min} and {max}"))),
        }
    }

    pub(super) fn usize(
        &self,
        key: &str,
        default: u64,
        min: u64,
        max: u64,
    ) -> Result<usize, ConfigError> {
        let n = self.uint(key, default, min, max)?;
        usize::try_from(n).map_err(|_| self.err_here(key, "too large for this platform"))
    }

    pub(super) fn sub_table(&self, key: &str) -> Result<Option<Table<'a>>, ConfigError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => match v.get_ref() {
                DeValue::Table(t) => Ok(Some(Table {
                    doc: self.doc,
                    table: t,
                    path: self.key_path(key),
                    span: Some(v.span()),
                })),
                _ => Err(self.type_error(key, v, "a table")),
            },
        }
    }

    /// `[[key]]` tables (or an array of inline tables), each with path `key[i]`; `None` when
    /// absent, plus the array's location.
    pub(super) fn tables(&self, key: &str) -> Result<Option<Tables<'a>>, ConfigError> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        let DeValue::Array(items) = v.get_ref() else {
            let header = table_header(&self.key_path(key));
            return Err(self.type_error(key, v, &format!("an array of tables ([[{header}]])")));
        };
        let mut tables = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let path = format!("{}[{i}]", self.key_path(key));
            match item.get_ref() {
                DeValue::Table(t) => tables.push(Table {
                    doc: self.doc,
                    table: t,
                    path,
                    span: Some(item.span()),
                }),
                other => {
                    let found = other.type_str();
                    let message = format!("expected a table, found {found}");
                    return Err(self.doc.error(Some(&item.span()), Some(path), message));
                }
            }
        }
        Ok(Some((tables, v.span())))
    }

    pub(super) fn template(&self, key: &str) -> Result<Option<Template>, ConfigError> {
        match self.str(key)? {
            None => Ok(None),
            Some((s, span)) => Template::parse(s)
                .map(Some)
                .map_err(|e| self.err_at(key, &span, format!("invalid template: {}", e.0))),
        }
    }

    pub(super) fn required_template(&self, key: &str) -> Result<Template, ConfigError> {
        let t = self.template(key)?.ok_or_else(|| self.missing(key))?;
        if t.is_empty() {
            let span = self.get(key).map(|v| v.span()).unwrap_or_default();
            return Err(self.err_at(key, &span, "must not be empty"));
        }
        Ok(t)
    }

    pub(super) fn optional_template(&self, key: &str) -> Result<Template, ConfigError> {
        Ok(self.template(key)?.unwrap_or_default())
    }
}

/// The `[[header]]` that defines the tables at `path`: the path without its `[N]` indexes.
pub(super) fn table_header(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut in_index = false;
    for c in path.chars() {
        match c {
            '[' => in_index = true,
            ']' => in_index = false,
            c if !in_index => out.push(c),
            _ => {}
        }
    }
    out
}

/// A key as written in a dotted path: bare when it can be, quoted otherwise.
pub(super) fn quote_key(key: &str) -> String {
    let bare = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if bare {
        key.to_string()
    } else {
        format!("{key:?}")
    }
}
