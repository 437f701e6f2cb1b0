//! `corral whoami`, `corral user`, `corral project` (with its members), service tokens and
//! `corral event`.

use anyhow::Context;

use corral_proto::api::{self, GlobalRole, ProjectRole};

use crate::client::{Client, api_path};
use crate::output::{ago, table};
use crate::{EventArgs, MemberCommand, ProjectCommand, UserCommand};

type Out<'a> = &'a mut (dyn std::io::Write + Send);

fn json(out: Out<'_>, value: &impl serde::Serialize) -> anyhow::Result<i32> {
    writeln!(out, "{}", serde_json::to_string_pretty(value)?)?;
    Ok(0)
}

fn memberships(projects: &[api::Membership]) -> String {
    let all: Vec<String> = projects.iter().map(|m| format!("{} ({})", m.project, m.role.as_str())).collect();
    if all.is_empty() { "-".to_owned() } else { all.join(", ") }
}

pub async fn whoami(client: &Client, json_out: bool, out: Out<'_>) -> anyhow::Result<i32> {
    let me: api::WhoAmI = client.get("/api/whoami").await?;
    if json_out {
        return json(out, &me);
    }
    match (&me.user, me.role, &me.service) {
        (Some(user), Some(role), _) => {
            writeln!(out, "user:     {user} ({})", if role == GlobalRole::Admin { "global admin" } else { "user" })?;
            writeln!(out, "projects: {}", memberships(&me.projects))?;
        }
        (_, _, Some(service)) => writeln!(out, "a service token: it calls the service {service} and nothing else")?,
        _ => writeln!(out, "an unknown kind of token")?,
    }
    writeln!(out, "coordinator: {} (project {})", client.url(), client.project)?;
    Ok(0)
}

/// What to do with a token shown once.
fn said_once(out: Out<'_>, user: &str, token: &str, url: &str) -> anyhow::Result<()> {
    writeln!(out, "{token}")?;
    eprintln!(
        "the token of {user}, shown this once (only its hash is kept): give it to {user}, who runs `corral config --url {url} --token <the token>`"
    );
    Ok(())
}

pub async fn user(client: &Client, command: UserCommand, out: Out<'_>) -> anyhow::Result<i32> {
    match command {
        UserCommand::Create { name, role } => {
            let role = GlobalRole::parse(&role).with_context(|| format!("--role {role:?}: use admin or user"))?;
            let made: api::UserToken = client.post("/api/users", &api::CreateUser { name, role }).await?;
            said_once(out, &made.user, &made.token, client.url())?;
        }
        UserCommand::List { json: j } => {
            let users: Vec<api::User> = client.get("/api/users").await?;
            if j {
                return json(out, &users);
            }
            let mut t = table(&["NAME", "ROLE", "PROJECTS", "CREATED"]);
            for u in &users {
                t.add_row(vec![
                    u.name.clone(),
                    u.role.as_str().to_owned(),
                    memberships(&u.projects),
                    ago(u.created_ms),
                ]);
            }
            writeln!(out, "{t}")?;
        }
        UserCommand::Delete { name } => {
            let _: String = client.delete(&api_path(&["api", "users", &name])?).await?;
            writeln!(out, "user {name} deleted: its token no longer works")?;
        }
        UserCommand::Token { name, rotate } => {
            if !rotate {
                anyhow::bail!(
                    "a user's token is kept only as a hash and cannot be shown again: `corral user token {name} --rotate` makes a new one (the old one stops working)"
                );
            }
            let made: api::UserToken = client.post(&api_path(&["api", "users", &name, "token"])?, &()).await?;
            said_once(out, &made.user, &made.token, client.url())?;
        }
    }
    Ok(0)
}

pub async fn project(client: &Client, command: ProjectCommand, out: Out<'_>) -> anyhow::Result<i32> {
    match command {
        ProjectCommand::Create { name } => {
            let p: api::Project = client.post("/api/projects", &api::CreateProject { name }).await?;
            writeln!(
                out,
                "project {} created{}",
                p.name,
                if p.role.is_some() { ", with you as its admin" } else { "" }
            )?;
            eprintln!("use it with `export CORRAL_PROJECT={}` or `corral config --project {}`", p.name, p.name);
        }
        ProjectCommand::List { json: j } => {
            let projects: Vec<api::Project> = client.get("/api/projects").await?;
            if j {
                return json(out, &projects);
            }
            let mut t = table(&["NAME", "YOUR ROLE", "MEMBERS", "CREATED"]);
            for p in &projects {
                let role = p.role.map_or("- (global admin)", ProjectRole::as_str);
                t.add_row(vec![p.name.clone(), role.to_owned(), p.members.to_string(), ago(p.created_ms)]);
            }
            writeln!(out, "{t}")?;
        }
        ProjectCommand::Delete { name, yes } => {
            if !yes
                && !crate::commands::confirm(&format!(
                    "Delete project {name} with its finished runs, logs, secrets and images?"
                ))?
            {
                writeln!(out, "nothing deleted")?;
                return Ok(1);
            }
            let _: String = client.delete(&api_path(&["api", "projects", &name])?).await?;
            writeln!(out, "project {name} deleted")?;
        }
        ProjectCommand::Member { command } => return member(client, command, out).await,
    }
    Ok(0)
}

async fn member(client: &Client, command: MemberCommand, out: Out<'_>) -> anyhow::Result<i32> {
    match command {
        MemberCommand::Add { project, user, role } => {
            let role =
                ProjectRole::parse(&role).with_context(|| format!("--role {role:?}: use user, manager or admin"))?;
            let m: api::Member = client
                .put(&api_path(&["api", "projects", &project, "members", &user])?, &api::SetMember { role })
                .await?;
            writeln!(out, "{} is a {} of project {project}", m.user, m.role.as_str())?;
        }
        MemberCommand::Remove { project, user } => {
            let _: String = client.delete(&api_path(&["api", "projects", &project, "members", &user])?).await?;
            writeln!(out, "{user} is no longer a member of project {project}")?;
        }
        MemberCommand::List { project, json: j } => {
            let members: Vec<api::Member> = client.get(&api_path(&["api", "projects", &project, "members"])?).await?;
            if j {
                return json(out, &members);
            }
            let mut t = table(&["USER", "ROLE"]);
            for m in &members {
                t.add_row(vec![m.user.clone(), m.role.as_str().to_owned()]);
            }
            writeln!(out, "{t}")?;
        }
    }
    Ok(0)
}

/// `corral token create --service RUN`.
pub async fn create_service_token(client: &Client, run: &str, out: Out<'_>) -> anyhow::Result<i32> {
    let t: api::ServiceToken =
        client.post(&client.project_path("service-tokens"), &api::CreateServiceToken { run: run.to_owned() }).await?;
    writeln!(out, "{}", t.token.as_deref().unwrap_or_default())?;
    eprintln!(
        "token {} calls the service {}/{run} and nothing else (shown this once): send `Authorization: Bearer <the token>`",
        t.id, client.project
    );
    Ok(0)
}

pub async fn list_service_tokens(client: &Client, json_out: bool, out: Out<'_>) -> anyhow::Result<i32> {
    let tokens: Vec<api::ServiceToken> = client.get(&client.project_path("service-tokens")).await?;
    if json_out {
        return json(out, &tokens);
    }
    let mut t = table(&["ID", "SERVICE", "CREATED"]);
    for s in &tokens {
        t.add_row(vec![s.id.clone(), s.run.clone(), ago(s.created_ms)]);
    }
    writeln!(out, "{t}")?;
    Ok(0)
}

pub async fn revoke_service_token(client: &Client, id: &str, out: Out<'_>) -> anyhow::Result<i32> {
    let gone: String = client.delete(&client.project_api(&["service-tokens", id])?).await?;
    writeln!(out, "service token {gone} revoked")?;
    Ok(0)
}

/// `corral event`: the audit trail, oldest first.
pub async fn events(client: &Client, args: EventArgs, out: Out<'_>) -> anyhow::Result<i32> {
    let since_ms = match &args.since {
        Some(d) => {
            let secs = corral_proto::config::parse_duration(d)
                .with_context(|| format!("--since {d:?}: use e.g. 30m, 1h, 7d"))?;
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis() as i64;
            now - (secs as i64).saturating_mul(1000)
        }
        None => 0,
    };
    let mut query = format!("?since_ms={since_ms}&limit={}", args.limit.min(10_000));
    if let Some(object) = &args.object {
        query.push_str(&format!("&object={}", crate::client::query_value(object)));
    }
    let path = if args.all {
        format!("/api/events{query}")
    } else {
        let mut c = client.clone();
        if let Some(p) = &args.project {
            c.project = p.clone();
        }
        format!("{}{query}", c.project_path("events"))
    };
    let events: Vec<api::Event> = client.get(&path).await?;
    if args.json {
        return json(out, &events);
    }
    let mut t = table(&["WHEN", "USER", "PROJECT", "ACTION", "OBJECT", "DETAIL"]);
    for e in &events {
        let dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".to_owned());
        t.add_row(vec![ago(e.ms), dash(&e.user), dash(&e.project), e.action.clone(), dash(&e.object), dash(&e.detail)]);
    }
    writeln!(out, "{t}")?;
    Ok(0)
}
