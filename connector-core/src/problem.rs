//! What is wrong with a configuration and where: [`Problem`] (file, line,
//! column, key path, message) and the key paths that name a place in it.

use std::fmt;

/// One thing wrong with a configuration, with where it is.
///
/// Displays as `source:line:column: key: message`, leaving out what is not
/// known, e.g. `connector.yaml:3:3: platform: unknown field ...` or
/// `environment: CONNECTOR_HTTPS: ...`. Never holds the password.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// The file name given to the loader, `environment`, or a command-line
    /// flag; `None` for a config checked by `Config::validate`, which has no
    /// file at hand.
    pub source: Option<String>,
    /// 1-based line.
    pub line: Option<usize>,
    /// 1-based column.
    pub column: Option<usize>,
    /// Key path (`platform.backoff.max_ms`, `devices[2].id`) or environment
    /// variable; empty for a YAML syntax error.
    pub key: String,
    /// What is wrong, and what would be right.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.source, self.line) {
            (Some(source), Some(line)) => {
                write!(f, "{source}:{line}:")?;
                if let Some(column) = self.column {
                    write!(f, "{column}:")?;
                }
                f.write_str(" ")?;
            }
            (Some(source), None) => write!(f, "{source}: ")?,
            (None, Some(line)) => write!(f, "line {line}: ")?,
            (None, None) => {}
        }
        if !self.key.is_empty() {
            write!(f, "{}: ", self.key)?;
        }
        f.write_str(&self.message)
    }
}

/// Several problems, displayed one per line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problems(pub Vec<Problem>);

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, problem) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{problem}")?;
        }
        Ok(())
    }
}

/// One step of a key path: a mapping key or a sequence index.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Seg {
    Key(String),
    Index(usize),
}

impl Seg {
    pub(crate) fn key(name: &str) -> Seg {
        Seg::Key(name.to_owned())
    }
}

/// Writes a path the way users read it: `platform.backoff`, `devices[2].id`.
pub(crate) fn path_to_string(path: &[Seg]) -> String {
    let mut out = String::new();
    for seg in path {
        match seg {
            Seg::Key(name) if out.is_empty() => out.push_str(name),
            Seg::Key(name) => {
                out.push('.');
                out.push_str(name);
            }
            Seg::Index(index) => out.push_str(&format!("[{index}]")),
        }
    }
    out
}

/// Reads a path written by [`path_to_string`] back into steps. Keys holding
/// `.` or `[` split wrongly; that only costs a less precise position.
pub(crate) fn parse_path(text: &str) -> Vec<Seg> {
    let mut path = Vec::new();
    for part in text.split('.') {
        let (name, mut indexes) = match part.find('[') {
            Some(at) => part.split_at(at),
            None => (part, ""),
        };
        if !name.is_empty() {
            path.push(Seg::key(name));
        }
        while let Some(rest) = indexes.strip_prefix('[') {
            let Some(end) = rest.find(']') else { break };
            match rest[..end].parse() {
                Ok(index) => path.push(Seg::Index(index)),
                Err(_) => break,
            }
            indexes = &rest[end + 1..];
        }
    }
    path
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_reads_back_as_it_was_written() {
        for text in [
            "platform",
            "platform.backoff.max_ms",
            "devices[12].settings.x",
            "devices",
        ] {
            assert_eq!(path_to_string(&parse_path(text)), text);
        }
        assert_eq!(
            parse_path("devices[2].id"),
            vec![Seg::key("devices"), Seg::Index(2), Seg::key("id")]
        );
    }

    #[test]
    fn problems_print_only_the_parts_they_know() {
        let mut problem = Problem {
            source: Some("c.yaml".into()),
            line: Some(3),
            column: Some(5),
            key: "platform".into(),
            message: "bad".into(),
        };
        assert_eq!(problem.to_string(), "c.yaml:3:5: platform: bad");
        problem.column = None;
        assert_eq!(problem.to_string(), "c.yaml:3: platform: bad");
        problem.line = None;
        assert_eq!(problem.to_string(), "c.yaml: platform: bad");
        problem.source = None;
        problem.line = Some(4);
        assert_eq!(problem.to_string(), "line 4: platform: bad");
        problem.key.clear();
        problem.line = None;
        assert_eq!(problem.to_string(), "bad");
    }
}
