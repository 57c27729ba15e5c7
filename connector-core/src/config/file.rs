//! A `connector.yaml` read as far as it goes: the config with every refused
//! entry left out, all the problems of the file at once, and the parsed text,
//! so that checks made later (plugins, CA file) point at the line to fix too.

use std::path::Path;

use super::{Config, ConfigError, DeviceConfig};
use crate::problem::{parse_path, path_to_string, Problem, Problems, Seg};
use crate::yaml::{self, Finding, Kind, Node};

/// A config file after reading: what could be read, and what could not.
///
/// ```no_run
/// # use connector_core::config::ConfigFile;
/// let file = ConfigFile::read("connector.yaml")?;
/// for problem in file.problems() {
///     eprintln!("{problem}"); // connector.yaml:12:5: devices[3].id: ...
/// }
/// # Ok::<(), connector_core::config::ConfigError>(())
/// ```
#[derive(Debug)]
pub struct ConfigFile {
    /// The name problems start with; `None` without a file.
    source: Option<String>,
    config: Config,
    problems: Vec<Problem>,
    /// `None` without a file, or after a syntax error.
    tree: Option<Node>,
    /// For each of `config.devices`, its index in the file's `devices` list,
    /// which differs once a device was refused as a whole.
    entries: Vec<usize>,
    /// The text under `platform.password`, kept out of every message.
    secrets: Vec<String>,
    syntax_error: bool,
}

impl From<Config> for ConfigFile {
    /// A config made without a file: its problems have no source or line.
    fn from(config: Config) -> Self {
        ConfigFile {
            source: None,
            entries: (0..config.devices.len()).collect(),
            config,
            problems: Vec::new(),
            tree: None,
            secrets: Vec::new(),
            syntax_error: false,
        }
    }
}

impl ConfigFile {
    /// Reads the file at `path` and resolves the relative paths in it
    /// against the file's directory. Only an unreadable file is an error;
    /// what is wrong inside is in [`ConfigFile::problems`].
    pub fn read(path: impl AsRef<Path>) -> Result<ConfigFile, ConfigError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut file = ConfigFile::parse(&text, &path.display().to_string());
        file.config.resolve_paths(path.parent().unwrap_or(Path::new("")));
        Ok(file)
    }

    /// Reads config text; `source_name` (usually the file name) starts each
    /// problem. Relative paths stay as written.
    pub fn parse(text: &str, source_name: &str) -> ConfigFile {
        let mut file = ConfigFile::from(Config::default());
        file.source = Some(source_name.to_owned());
        let mut tree = match yaml::parse(text) {
            Ok(tree) => tree,
            Err(finding) => {
                file.syntax_error = true;
                file.problems.push(file.place(finding));
                return file;
            }
        };
        if let Some(password) = tree.get(&[Seg::key("platform"), Seg::key("password")]) {
            password.texts(&mut file.secrets);
            file.secrets.retain(|secret| !secret.is_empty());
        }

        let mut findings = Vec::new();
        yaml::drop_repeated_keys(&mut tree, &mut Vec::new(), &mut findings);
        // The devices are read one at a time: one bad device must not hide
        // the problems of the next, and a long list is read once.
        let devices = match tree.get(&[Seg::key("devices")]) {
            Some(Node { kind: Kind::Seq(_), .. }) => tree.take("devices"),
            _ => None,
        };
        let mut config: Config = yaml::read(&tree, &[], &mut findings).unwrap_or_default();
        file.entries.clear();
        if let Some(devices) = devices {
            if let Kind::Seq(items) = &devices.value.kind {
                config.devices.reserve(items.len());
                for item in items {
                    let path = [Seg::key("devices"), Seg::Index(item.index)];
                    let Some(mut device) = yaml::read::<DeviceConfig>(&item.node, &path, &mut findings) else {
                        continue;
                    };
                    device.line = Some(item.node.at.line as usize);
                    if device.name.is_empty() {
                        device.name.clone_from(&device.id);
                    }
                    config.devices.push(device);
                    file.entries.push(item.index);
                }
            }
            tree.put(devices);
        }

        for issue in config.issues(Some(&file.entries)) {
            findings.push(Finding {
                at: Some(tree.nearest(&issue.path)),
                path: issue.path,
                message: issue.message,
            });
        }
        if !config.platform.password.is_empty() {
            file.secrets.push(config.platform.password.expose().to_owned());
        }
        file.config = config;
        file.problems = findings.into_iter().map(|finding| file.place(finding)).collect();
        // In file order, so a user fixes them top to bottom.
        file.problems.sort_by_key(|p| (p.line.is_none(), p.line, p.column));
        file.tree = Some(tree);
        file
    }

    /// What could be read: every entry that has a problem is left out (a
    /// value then has its default).
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// For overrides applied after reading (environment, flags).
    pub fn config_mut(&mut self) -> &mut Config {
        &mut self.config
    }

    /// Every problem found in the file, in file order.
    pub fn problems(&self) -> &[Problem] {
        &self.problems
    }

    /// The config, whatever its problems; see [`ConfigFile::into_result`].
    pub fn into_config(self) -> Config {
        self.config
    }

    /// The config if the file has no problem, else all of them.
    pub fn into_result(self) -> Result<Config, ConfigError> {
        match self.problems.len() {
            0 => Ok(self.config),
            _ if self.syntax_error => Err(ConfigError::Syntax(self.problems[0].clone())),
            _ => Err(ConfigError::Invalid(Problems(self.problems))),
        }
    }

    /// A problem with the value at `key` (written like `platform.ca_file`),
    /// placed where it stands in the file, or at the nearest entry holding
    /// it, for checks made after reading.
    pub fn problem(&self, key: &str, message: impl Into<String>) -> Problem {
        self.place(Finding {
            at: None,
            path: parse_path(key),
            message: message.into(),
        })
    }

    /// A problem with `field` (empty for the entry as a whole) of
    /// `config().devices[index]`, placed where that field stands in the file.
    pub fn device_problem(&self, index: usize, field: &str, message: impl Into<String>) -> Problem {
        let mut path = vec![
            Seg::key("devices"),
            Seg::Index(self.entries.get(index).copied().unwrap_or(index)),
        ];
        path.extend(parse_path(field));
        self.place(Finding {
            at: None,
            path,
            message: message.into(),
        })
    }

    /// Gives a finding its file and, where it has none yet, its position.
    fn place(&self, finding: Finding) -> Problem {
        let at = finding
            .at
            .or_else(|| self.tree.as_ref().map(|tree| tree.nearest(&finding.path)));
        Problem {
            source: self.source.clone(),
            line: at.map(|at| at.line as usize),
            column: at.map(|at| at.column as usize),
            key: yaml::redact(&path_to_string(&finding.path), &self.secrets),
            message: yaml::redact(&finding.message, &self.secrets),
        }
    }
}
