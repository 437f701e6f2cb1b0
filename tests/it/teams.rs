//! Teams sharing a cluster: users and their tokens, projects with members in roles, one rule per
//! route (checked for every route against every kind of caller), services that let in their
//! project's members and their own tokens, the audit trail, and a database from before users.

use std::time::Duration;

use corral_cli::client::Client;
use corral_cli::{MemberCommand, ProjectCommand, SecretCommand, UserCommand};
use corral_coordinator::http::access::{Method, Rule};
use corral_proto::api::{self, ProjectRole};

use crate::harness::*;

async fn said(f: impl std::future::Future<Output = anyhow::Result<i32>>, out: Vec<u8>) -> anyhow::Result<String> {
    f.await?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

async fn make_user(admin: &Client, name: &str) -> anyhow::Result<String> {
    let made: api::UserToken = admin.post("/api/users", &api::CreateUser { name: name.into(), role: Default::default() }).await?;
    Ok(made.token)
}

async fn add_member(client: &Client, project: &str, user: &str, role: ProjectRole) -> anyhow::Result<()> {
    let path = format!("/api/projects/{project}/members/{user}");
    let _: api::Member = client.put(&path, &api::SetMember { role }).await?;
    Ok(())
}

fn rule_text(rule: Rule) -> String {
    match rule {
        Rule::Open => "open".into(),
        Rule::Token => "token".into(),
        Rule::User => "user".into(),
        Rule::Admin => "admin".into(),
        Rule::SelfOrAdmin => "self-or-admin".into(),
        Rule::Project(role) => format!("project:{}", role.as_str()),
    }
}

/// Every route and its rule. A route added, or a rule changed, fails this test until it is
/// written here too: a change of who may do what is a reviewed change.
const RULES: &str = "
GET /api/whoami token
POST /api/users admin
GET /api/users admin
DELETE /api/users/{user} admin
POST /api/users/{user}/token self-or-admin
POST /api/projects user
GET /api/projects user
DELETE /api/projects/{project} project:admin
GET /api/projects/{project}/members project:user
PUT /api/projects/{project}/members/{user} project:manager
DELETE /api/projects/{project}/members/{user} project:manager
POST /api/projects/{project}/service-tokens project:user
GET /api/projects/{project}/service-tokens project:user
DELETE /api/projects/{project}/service-tokens/{id} project:user
GET /api/projects/{project}/events project:user
GET /api/events admin
POST /api/projects/{project}/runs project:user
GET /api/projects/{project}/runs project:user
GET /api/projects/{project}/runs/{name} project:user
POST /api/projects/{project}/runs/{name}/stop project:user
GET /api/projects/{project}/runs/{name}/logs project:user
GET /api/projects/{project}/runs/{name}/tunnel project:user
GET /api/projects/{project}/runs/{name}/exec project:user
GET /api/projects/{project}/runs/{name}/ssh project:user
POST /api/projects/{project}/schedules project:user
GET /api/projects/{project}/schedules project:user
DELETE /api/projects/{project}/schedules/{name} project:user
POST /api/projects/{project}/fleets project:manager
GET /api/projects/{project}/fleets project:user
GET /api/projects/{project}/fleets/{name} project:user
DELETE /api/projects/{project}/fleets/{name} project:manager
GET /api/projects/{project}/secrets project:manager
PUT /api/projects/{project}/secrets/{name} project:manager
DELETE /api/projects/{project}/secrets/{name} project:manager
POST /api/projects/{project}/volumes project:manager
GET /api/projects/{project}/volumes project:user
GET /api/projects/{project}/volumes/{name} project:user
DELETE /api/projects/{project}/volumes/{name} project:manager
GET /api/nodes user
DELETE /api/nodes/{name} admin
POST /api/nodes/cordon admin
POST /api/nodes/{name}/cordon admin
POST /api/nodes/{name}/uncordon admin
POST /api/nodes/{name}/drain admin
POST /api/tokens admin
GET /api/tokens admin
POST /api/tokens/{id}/revoke admin
GET /api/backends user
GET /api/offers user
POST /api/images admin
GET /api/images user
DELETE /api/images admin
POST /api/uploads/check user
PUT /api/uploads/{sha256} user
GET /api/health open
GET /api/time open
GET /api/join/check open
GET /api/join/node open
GET /ca.pem open
GET /install.sh open
GET /uninstall.sh open
GET /download/{file} open
ANY /proxy/services/{project}/{name} open
ANY /proxy/services/{project}/{name}/ open
ANY /proxy/services/{project}/{name}/{*rest} open
ANY /proxy/models/{project}/{*rest} open
";

/// The callers of the matrix: who they are in project `alpha`.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Who {
    NoToken,
    WrongToken,
    NonMember,
    User,
    Manager,
    ProjectAdmin,
    OtherProjectAdmin,
    GlobalAdmin,
    ServiceToken,
}

/// Whether `who` passes `rule` for a route of project `alpha`: the matrix's own statement of the
/// model, not the coordinator's code.
fn passes(rule: Rule, who: Who) -> bool {
    use Who::*;
    let member_at_least = |role: ProjectRole| match who {
        User => role == ProjectRole::User,
        Manager => role <= ProjectRole::Manager,
        ProjectAdmin | GlobalAdmin => true,
        _ => false,
    };
    match rule {
        Rule::Open => true,
        Rule::Token => !matches!(who, NoToken | WrongToken),
        Rule::User => matches!(who, NonMember | User | Manager | ProjectAdmin | OtherProjectAdmin | GlobalAdmin),
        Rule::Admin | Rule::SelfOrAdmin => who == GlobalAdmin,
        Rule::Project(role) => member_at_least(role),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_refuses_whom_its_rule_refuses() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let coord = Coordinator::start(&dir.path().join("coord")).await?;
    let admin = coord.client();
    let table = coord.route_table();

    let mut actual: Vec<String> =
        table.iter().map(|r| format!("{} {} {}", r.method.as_str(), r.path, rule_text(r.rule))).collect();
    let mut expected: Vec<String> = RULES.lines().filter(|l| !l.is_empty()).map(str::to_owned).collect();
    actual.sort();
    expected.sort();
    assert_eq!(actual, expected, "the routes and their rules changed: write them in RULES");

    let mut tokens = std::collections::HashMap::new();
    for (project, owner) in [("alpha", "pat"), ("beta", "oscar")] {
        let token = make_user(&admin, owner).await?;
        let client = Client::new(&coord.url(), &token, project);
        let made: api::Project = client.post("/api/projects", &api::CreateProject { name: project.into() }).await?;
        assert_eq!(made.role, Some(ProjectRole::Admin), "who makes a project is its admin");
        tokens.insert(owner, token);
    }
    for (name, role) in [("carol", Some(ProjectRole::User)), ("mia", Some(ProjectRole::Manager)), ("dave", None)] {
        tokens.insert(name, make_user(&admin, name).await?);
        if let Some(role) = role {
            add_member(&admin, "alpha", name, role).await?;
        }
    }
    // A service of alpha (pending: there is no node) and a token for it.
    let alpha = Client::new(&coord.url(), &coord.admin_token, "alpha");
    let web = write_config(dir.path(), "web", &format!("type: service\nname: web\nimage: {IMAGE}\nport: 80\ncommands: [\"true\"]\n"));
    apply(&alpha, &web, true).await?;
    let service: api::ServiceToken =
        alpha.post("/api/projects/alpha/service-tokens", &api::CreateServiceToken { run: "web".into() }).await?;

    let token_of = |who: Who| -> Option<String> {
        match who {
            Who::NoToken => None,
            Who::WrongToken => Some("crl_0000000000000000000000000000000000000000".into()),
            Who::NonMember => Some(tokens["dave"].clone()),
            Who::User => Some(tokens["carol"].clone()),
            Who::Manager => Some(tokens["mia"].clone()),
            Who::ProjectAdmin => Some(tokens["pat"].clone()),
            Who::OtherProjectAdmin => Some(tokens["oscar"].clone()),
            Who::GlobalAdmin => Some(coord.admin_token.clone()),
            Who::ServiceToken => service.token.clone(),
        }
    };
    let everyone = [
        Who::NoToken,
        Who::WrongToken,
        Who::NonMember,
        Who::User,
        Who::Manager,
        Who::ProjectAdmin,
        Who::OtherProjectAdmin,
        Who::GlobalAdmin,
        Who::ServiceToken,
    ];
    let http = reqwest::Client::new();
    // Deleting the project goes last (it is refused anyway: alpha has an active run).
    let mut routes: Vec<_> = table.iter().filter(|r| r.rule != Rule::Open).collect();
    routes.sort_by_key(|r| r.path == "/api/projects/{project}");
    let mut checked = 0;
    for route in routes {
        let path = route
            .path
            .replace("{project}", "alpha")
            .replace("{name}", "no-such-thing")
            .replace("{user}", "nobody")
            .replace("{id}", "abcd1234")
            .replace("{sha256}", &"0".repeat(64));
        let url = format!("{}{path}", coord.url());
        for who in everyone {
            let mut req = match route.method {
                Method::Get | Method::Any => http.get(&url),
                Method::Post => http.post(&url).json(&serde_json::json!({})),
                Method::Put => http.put(&url).json(&serde_json::json!({})),
                Method::Delete => http.delete(&url),
            };
            if let Some(t) = token_of(who) {
                req = req.bearer_auth(t);
            }
            let resp = req.send().await?;
            let status = resp.status().as_u16();
            let body = resp.text().await?;
            let what = format!("{} {} as {who:?} ({:?}): {status} {body}", route.method.as_str(), route.path, route.rule);
            match who {
                Who::NoToken | Who::WrongToken => assert_eq!(status, 401, "{what}"),
                _ if passes(route.rule, who) => assert!(status != 401 && status != 403, "{what}"),
                _ => {
                    assert_eq!(status, 403, "{what}");
                    // The refusal names the action and the right that is missing.
                    assert!(body.contains(route.action), "{what}");
                }
            }
            checked += 1;
        }
    }
    assert!(checked > 400, "only {checked} requests");
    coord.stop().await;
    Ok(())
}
