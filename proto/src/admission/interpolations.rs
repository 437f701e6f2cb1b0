//! Every `${{ … }}` of a configuration must be one Corral expands where it stands, as dstack does:
//! `secrets.NAME` in `env` values and `registry_auth`; `env.NAME` (the run's variable) in
//! `registry_auth` and probes' header values, URLs and bodies; `groups[i].nodes[j].IP_ADDRESS` and
//! `run.args` in commands; `dstack.node_rank` (and its alias `dstack.job_num`) in volume names. Anything else is refused at apply, naming the
//! field and what to write instead: none reaches a container as written. `$${{` is an escape.

use serde_json::Value;

use super::Refused;
use crate::config::{Configuration, has_unclosed_interpolation, interpolations};

/// `Err` names the first interpolation that would not be expanded, and where it is.
pub fn check(cfg: &Configuration) -> Result<(), Refused> {
    let value =
        serde_json::to_value(cfg).map_err(|e| Refused::new("type", format!("cannot read the configuration: {e}")))?;
    // The fields are under `spec`, next to `type`.
    walk(value.get("spec").unwrap_or(&value), &mut String::new())
}

fn walk(v: &Value, path: &mut String) -> Result<(), Refused> {
    let len = path.len();
    let result = match v {
        Value::Object(fields) => fields.iter().try_for_each(|(k, v)| {
            if !path.is_empty() {
                path.push('.');
            }
            path.push_str(k);
            let r = walk(v, path);
            path.truncate(len);
            r
        }),
        Value::Array(items) => items.iter().enumerate().try_for_each(|(i, v)| {
            path.push_str(&format!("[{i}]"));
            let r = walk(v, path);
            path.truncate(len);
            r
        }),
        Value::String(s) if has_unclosed_interpolation(s) => {
            Err(Refused::new(shown(path), "a `${{` is not closed by `}}` (write $${{ for a literal ${{)"))
        }
        Value::String(s) => interpolations(s).into_iter().try_for_each(|(_, inner)| {
            allowed(path, inner).map_err(|why| Refused::new(shown(path), format!("${{{{ {inner} }}}}: {why}")))
        }),
        _ => Ok(()),
    };
    path.truncate(len);
    result
}

/// The field as the user wrote it: `env[0]`, not the parsed `env[0].value`.
fn shown(path: &str) -> &str {
    path.strip_suffix(".value").filter(|p| p.ends_with(']') && p.contains("env[")).unwrap_or(path)
}

/// The last field name in `path` (`commands` for `groups[1].commands[0]`).
fn field(path: &str) -> &str {
    let last = path.rsplit('.').next().unwrap_or(path);
    last.split('[').next().unwrap_or(last)
}

fn allowed(path: &str, inner: &str) -> Result<(), String> {
    let in_env_value = path.ends_with(".value") && field(path.trim_end_matches(".value")) == "env";
    let in_registry_auth = path.contains("registry_auth.");
    let in_commands = field(path) == "commands";
    // A header is `[name, value]`: only its value is expanded.
    let in_probe = path.contains("probes[")
        && ((path.contains(".headers[") && path.ends_with("[1]")) || path.ends_with(".url") || path.ends_with(".body"));
    let in_volume_name = path.starts_with("volumes[") && (path.contains(".names[") || path.ends_with(".name"));
    let ns = inner.split(['.', '[']).next().unwrap_or_default();
    let ok = match ns {
        "secrets" => in_env_value || in_registry_auth,
        "env" => in_registry_auth || in_probe,
        "groups" => in_commands,
        "run" => inner == "run.args" && in_commands,
        "dstack" => matches!(inner, "dstack.node_rank" | "dstack.job_num") && in_volume_name,
        _ => false,
    };
    if ok {
        return Ok(());
    }
    Err(match ns {
        "secrets" => {
            let name = inner.strip_prefix("secrets.").unwrap_or(inner).trim();
            format!(
                "a secret is expanded only in env and registry_auth: put it in env (`env: [{name}=${{{{ secrets.{name} }}}}]`) and use ${name}"
            )
        }
        "env" => "the run's variables are expanded only in registry_auth and probes' headers, URLs and bodies: elsewhere use the variable itself ($NAME in commands; `env: [NAME]` takes it from the shell of `corral apply`)".to_owned(),
        "dstack" | "run" => "not expanded here: Corral expands ${{ dstack.node_rank }} in volume names and ${{ run.args }} in commands; in commands use the variables ($DSTACK_NODE_RANK, $DSTACK_RUN_NAME, $DSTACK_PROJECT)".to_owned(),
        _ => "not an interpolation Corral knows: it expands ${{ secrets.NAME }}, ${{ env.NAME }}, ${{ groups[i].nodes[j].IP_ADDRESS }}, ${{ run.args }} and ${{ dstack.node_rank }} (write $${{ for a literal ${{)".to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checked(text: &str) -> Result<(), Refused> {
        check(&crate::config::parse(text, "t.dstack.yml").expect("parses"))
    }

    #[test]
    fn each_interpolation_is_expanded_where_it_stands_or_refused_by_field() {
        let ok = "type: task\nimage: i\nenv:\n  - T=${{ secrets.HF }}\nregistry_auth:\n  username: ${{ env.U }}\n  password: ${{ secrets.P }}\ncommands: ['run ${{ run.args }}', 'echo $${{ literal }}']\nvolumes:\n  - name: d-${{ dstack.node_rank }}\n    path: /d\n";
        assert_eq!(checked(ok), Ok(()));
        let e =
            checked("type: task\nimage: i\ncommands: ['echo ${{ secrets.HF }}']\n").expect_err("refused").to_string();
        assert!(e.starts_with("commands[0]: ${{ secrets.HF }}: a secret is expanded only in env"), "{e}");
        let e = checked("type: task\nimage: i\nenv:\n  - N=${{ run.name }}\ncommands: [x]\n")
            .expect_err("refused")
            .to_string();
        assert!(e.starts_with("env[0]: ${{ run.name }}: not expanded here"), "{e}");
        let e = checked("type: task\nimage: i\nenv:\n  - N=${{ env.HOME }}\ncommands: [x]\n")
            .expect_err("refused")
            .to_string();
        assert!(
            e.starts_with("env[0]: ${{ env.HOME }}: the run's variables are expanded only in registry_auth"),
            "{e}"
        );
        let e = checked("type: task\nimage: i\nworking_dir: /w/${{ what.ever }}\ncommands: [x]\n")
            .expect_err("refused")
            .to_string();
        assert!(e.starts_with("working_dir: ${{ what.ever }}: not an interpolation Corral knows"), "{e}");
        let e = checked("type: task\nimage: i\ncommands: ['echo ${{ secrets.X']\n").expect_err("refused").to_string();
        assert!(e.starts_with("commands[0]: a `${{` is not closed by `}}`"), "{e}");
        let probe = "type: service\nimage: i\nport: 80\ncommands: [x]\nenv: [KEY=k]\nprobes:\n  - type: http\n    url: /h\n    headers:\n      - name: X-Key\n        value: ${{ env.KEY }}\n";
        assert_eq!(checked(probe), Ok(()));
        let probe = probe
            .replace("url: /h", "url: /h?k=${{ env.KEY }}\n    method: post\n    body: '{\"k\": \"${{ env.KEY }}\"}'");
        assert_eq!(checked(&probe), Ok(()));
        let e = checked(&probe.replace("${{ env.KEY }}\"", "${{ secrets.KEY }}\"")).expect_err("refused").to_string();
        assert!(e.contains(".body: ${{ secrets.KEY }}: a secret is expanded only in env"), "{e}");
        let volume = "type: task\nimage: i\nnodes: 2\ncommands: [x]\nvolumes:\n  - name: d-${{ dstack.job_num }}\n    path: /d\n";
        assert_eq!(checked(volume), Ok(()));
    }
}
