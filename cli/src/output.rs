//! Tables and colour on a terminal, plain columns in a pipe.

use std::io::IsTerminal;

use comfy_table::{Table, presets};

use corral_proto::job::JobState;

pub fn is_tty() -> bool {
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none()
}

pub fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    if is_tty() {
        t.load_preset(presets::UTF8_HORIZONTAL_ONLY);
    } else {
        t.load_preset(presets::NOTHING);
    }
    t.set_header(header.to_vec());
    t
}

/// A job state, coloured on a terminal.
pub fn state(s: &JobState) -> String {
    if !is_tty() {
        return s.to_string();
    }
    let code = match s {
        JobState::Running => "32",
        JobState::Done => "2",
        JobState::Failed | JobState::Aborted => "31",
        JobState::Pending | JobState::Submitted | JobState::Provisioning | JobState::Pulling => "33",
        JobState::Terminating | JobState::Stopped => "35",
    };
    format!("\x1b[{code}m{s}\x1b[0m")
}

/// "3m ago" from a unix-millisecond time.
pub fn ago(ms: i64) -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
    let s = ((now - ms) / 1000).max(0);
    match s {
        0..=59 => format!("{s}s ago"),
        60..=3599 => format!("{}m ago", s / 60),
        3600..=86399 => format!("{}h ago", s / 3600),
        _ => format!("{}d ago", s / 86400),
    }
}
