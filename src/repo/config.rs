//! The repository `config`: a GLib key file (INI), not JSON.

use std::collections::BTreeMap;

/// `config` exactly as `ostree init --mode=archive` writes it (38 bytes).
pub const INITIAL_CONFIG: &str = "[core]\nrepo_version=1\nmode=archive-z2\n";

/// A parsed key file: group → key → value.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyFile {
    groups: BTreeMap<String, BTreeMap<String, String>>,
}

impl KeyFile {
    /// Parses key-file text. Comments (`#`) and blank lines are skipped; a
    /// line that is neither a group, a key or a comment is an error.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut groups: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
        let mut current: Option<String> = None;
        for (n, line) in text.lines().enumerate() {
            let line = line.trim_start();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if let Some(name) = line.strip_prefix('[') {
                let name = name
                    .trim_end()
                    .strip_suffix(']')
                    .ok_or_else(|| format!("line {}: unclosed group", n + 1))?;
                groups.entry(name.to_string()).or_default();
                current = Some(name.to_string());
                continue;
            }
            let (key, value) = line
                .split_once('=')
                .ok_or_else(|| format!("line {}: expected key=value", n + 1))?;
            let group = current
                .as_ref()
                .ok_or_else(|| format!("line {}: key outside a group", n + 1))?;
            groups
                .entry(group.clone())
                .or_default()
                .insert(key.trim_end().to_string(), value.trim_start().to_string());
        }
        Ok(KeyFile { groups })
    }

    /// A value.
    pub fn get(&self, group: &str, key: &str) -> Option<&str> {
        self.groups.get(group)?.get(key).map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table() {
        let k = KeyFile::parse(INITIAL_CONFIG).expect("valid");
        assert_eq!(k.get("core", "mode"), Some("archive-z2"));
        assert_eq!(INITIAL_CONFIG.len(), 38);
        let k = KeyFile::parse("# c\n[core]\n mode = archive\n\n[archive]\nzlib-level=1\n")
            .expect("valid");
        assert_eq!(k.get("core", "mode"), Some("archive"));
        assert_eq!(k.get("archive", "zlib-level"), Some("1"));
        assert!(KeyFile::parse("mode=x\n").is_err());
        assert!(KeyFile::parse("[core\n").is_err());
        assert!(KeyFile::parse("[core]\njunk\n").is_err());
    }
}
