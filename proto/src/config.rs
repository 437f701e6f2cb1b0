//! The configuration language: dstack-compatible `.dstack.yml` text → typed specs.
//! (Placeholder interface; the parser lands next.)

use serde::{Deserialize, Serialize};

use crate::resources::ResourcesSpec;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Configuration {
    Task(TaskConfig),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvVar {
    pub name: String,
    /// `None`: dstack's `- HF_TOKEN` form, the value is taken from the environment of `corral apply`.
    pub value: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortMapping {
    pub local: Option<u16>,
    pub container: u16,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskConfig {
    pub name: Option<String>,
    pub image: Option<String>,
    pub commands: Vec<String>,
    pub env: Vec<EnvVar>,
    pub working_dir: Option<String>,
    pub ports: Vec<PortMapping>,
    pub max_duration_secs: Option<u64>,
    pub stop_duration_secs: Option<u64>,
    pub resources: ResourcesSpec,
    pub nodes: u32,
    pub priority: Option<u8>,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}:{column}: {field}: {message}")]
pub struct ConfigError {
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub field: String,
    pub message: String,
    pub unsupported: bool,
}

pub fn parse(_text: &str, file: &str) -> Result<Configuration, ConfigError> {
    Err(ConfigError { file: file.into(), line: 1, column: 1, field: "type".into(), message: "parser not yet built".into(), unsupported: false })
}
