// TEMPORARY stand-in until the config module lands; not committed.
pub mod model;
pub use model::*;

#[derive(Debug)]
pub struct ConfigError {
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub path: String,
    pub reason: String,
}
impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}: {}",
            self.file, self.line, self.column, self.path, self.reason
        )
    }
}
#[derive(Debug)]
pub struct ConfigErrors(pub Vec<ConfigError>);
impl std::fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for e in &self.0 {
            writeln!(f, "{e}")?;
        }
        Ok(())
    }
}
impl std::error::Error for ConfigErrors {}
pub fn load_file(path: &std::path::Path) -> Result<Config, ConfigErrors> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            file: path.display().to_string(),
            line: 1,
            column: 1,
            path: "(file)".into(),
            reason: e.to_string(),
        }])
    })?;
    parse_str(&text, &path.display().to_string())
}
pub fn parse_str(_text: &str, file: &str) -> Result<Config, ConfigErrors> {
    Err(ConfigErrors(vec![ConfigError {
        file: file.into(),
        line: 1,
        column: 1,
        path: "(file)".into(),
        reason: "stub".into(),
    }]))
}
