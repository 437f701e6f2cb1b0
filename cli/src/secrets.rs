//! `corral secret set|list|delete`.

use std::io::{IsTerminal, Read};

use anyhow::Context;

use corral_proto::api::{Secret, SetSecret};

use crate::SecretCommand;
use crate::client::Client;
use crate::output::{ago, table};

type Out<'a> = &'a mut (dyn std::io::Write + Send);

pub async fn secret(client: &Client, command: SecretCommand, out: Out<'_>) -> anyhow::Result<i32> {
    match command {
        SecretCommand::Set { name, value, from_file } => {
            let value = match (value, from_file) {
                (Some(v), _) => v,
                (None, Some(path)) => {
                    std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?
                }
                (None, None) => read_stdin()?,
            };
            let s: Secret = client.put(&client.project_api(&["secrets", &name])?, &SetSecret { value }).await?;
            writeln!(
                out,
                "secret {} set in project {}: use it as ${{{{ secrets.{} }}}}",
                s.name, client.project, s.name
            )?;
            Ok(0)
        }
        SecretCommand::List { json } => {
            let secrets: Vec<Secret> = client.get(&client.project_api(&["secrets"])?).await?;
            if json {
                writeln!(out, "{}", serde_json::to_string_pretty(&secrets)?)?;
                return Ok(0);
            }
            let mut t = table(&["NAME", "CREATED", "UPDATED"]);
            for s in &secrets {
                t.add_row(vec![s.name.clone(), ago(s.created_ms), ago(s.updated_ms)]);
            }
            writeln!(out, "{t}")?;
            Ok(0)
        }
        SecretCommand::Delete { name } => {
            let _: serde_json::Value = client.delete(&client.project_api(&["secrets", &name])?).await?;
            writeln!(out, "secret {name} deleted")?;
            Ok(0)
        }
    }
}

/// The value from standard input: one line at a terminal (asked for), all of it from a pipe, less
/// one trailing newline.
fn read_stdin() -> anyhow::Result<String> {
    let stdin = std::io::stdin();
    let mut value = String::new();
    if stdin.is_terminal() {
        eprint!("value: ");
        stdin.read_line(&mut value)?;
    } else {
        stdin.lock().take(64 * 1024 + 1).read_to_string(&mut value).context("reading the value from stdin")?;
    }
    if value.ends_with('\n') {
        value.pop();
        if value.ends_with('\r') {
            value.pop();
        }
    }
    Ok(value)
}
