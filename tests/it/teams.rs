//! Teams sharing a cluster: users and their tokens, projects with members in roles, one rule per
//! route (checked for every route against every kind of caller), services that let in their
//! project's members and their own tokens, the audit trail, and a database from before users.

use std::time::Duration;

use corral_cli::client::Client;
use corral_cli::{MemberCommand, ProjectCommand, SecretCommand, UserCommand};
use corral_coordinator::api::access::{Method, Rule};
use corral_proto::api::{self, ProjectRole};

use crate::harness::*;

/// What a CLI command printed, or its error.
macro_rules! said {
    ($f:path, $client:expr, $command:expr) => {{
        let mut out = Vec::new();
        $f($client, $command, &mut out).await.map(|_| String::from_utf8_lossy(&out).into_owned())
    }};
}

async fn make_user(admin: &Client, name: &str) -> anyhow::Result<String> {
    let made: api::UserToken =
        admin.post("/api/users", &api::CreateUser { name: name.into(), role: Default::default() }).await?;
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
GET /api/projects/{project}/runs/{name}/metrics project:user
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
POST /api/nodes/{name}/gpus/{index}/enable admin
GET /metrics admin
POST /api/tokens admin
GET /api/tokens admin
POST /api/tokens/{id}/revoke admin
GET /api/backends user
GET /api/offers user
POST /api/projects/{project}/images project:user
GET /api/projects/{project}/images project:user
DELETE /api/projects/{project}/images project:user
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
    let web = write_config(
        dir.path(),
        "web",
        &format!("type: service\nname: web\nimage: {IMAGE}\nport: 80\ncommands: [\"true\"]\n"),
    );
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
            .replace("{index}", "0")
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
            let what =
                format!("{} {} as {who:?} ({:?}): {status} {body}", route.method.as_str(), route.path, route.rule);
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
    // A method a route does not have is answered as such, not let through.
    let patch = http.patch(format!("{}/api/users", coord.url())).bearer_auth(&coord.admin_token).send().await?;
    assert_eq!(patch.status().as_u16(), 405);
    assert!(patch.text().await?.contains("PATCH is not allowed on /api/users: use POST or GET"));
    coord.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_team_shares_a_cluster_with_roles_and_service_tokens() -> anyhow::Result<()> {
    let c = OneNode::start().await?;
    let url = c.coord.url();
    let admin = &c.client;
    let alice_token =
        said!(corral_cli::teams::user, admin, UserCommand::Create { name: "alice".into(), role: "user".into() })?;
    let alice = Client::new(&url, alice_token.trim(), "research");
    let bob_token =
        said!(corral_cli::teams::user, admin, UserCommand::Create { name: "bob".into(), role: "user".into() })?;
    let bob = Client::new(&url, bob_token.trim(), "research");
    let carol_token = make_user(admin, "carol").await?;

    // alice makes a project and is its admin; she adds bob as a user.
    let out = said!(corral_cli::teams::project, &alice, ProjectCommand::Create { name: "research".into() })?;
    assert_eq!(out, "project research created, with you as its admin\n");
    let add = MemberCommand::Add { project: "research".into(), user: "bob".into(), role: "user".into() };
    assert_eq!(
        said!(corral_cli::teams::project, &alice, ProjectCommand::Member { command: add })?,
        "bob is a user of project research\n"
    );
    let me = said!(corral_cli::teams::whoami, &bob, false)?;
    assert!(me.starts_with("user:     bob (user)\nprojects: research (user)\n"), "{me}");

    // bob runs a service in research; his runs are not main's, where he is no member.
    let text = format!(
        "type: service\nname: web\nimage: {IMAGE}\nport: 8000\ncommands:\n  - mkdir -p /www\n  - echo hello from research > /www/index.html\n  - httpd -f -p 8000 -h /www\n"
    );
    let (code, out) = apply(&bob, &write_config(c.dir.path(), "web", &text), true).await?;
    assert_eq!(code, 0, "{out}");
    let in_main = Client::new(&url, bob_token.trim(), "main");
    let e = corral_cli::commands::ps(&in_main, false, false, None, &mut Vec::new())
        .await
        .expect_err("bob is no member of main");
    assert!(format!("{e:#}").contains("run.list: bob is not a member of project main"), "{e:#}");
    let mut ps = Vec::new();
    corral_cli::commands::ps(&bob, false, true, None, &mut ps).await?;
    let runs: Vec<api::Run> = serde_json::from_slice(&ps)?;
    assert_eq!(runs.iter().map(|r| (r.name.as_str(), r.project.as_str())).collect::<Vec<_>>(), [("web", "research")]);

    // `auth: true`: members of research and the service's own tokens get in; others do not.
    let service_url = format!("{url}/proxy/services/research/web/index.html");
    let http = reqwest::Client::new();
    let answer = |token: Option<String>| {
        let (http, service_url) = (http.clone(), service_url.clone());
        async move {
            let mut req = http.get(&service_url);
            if let Some(t) = token {
                req = req.bearer_auth(t);
            }
            let resp = req.send().await?;
            anyhow::Ok((resp.status().as_u16(), resp.text().await?))
        }
    };
    let up = wait_for("the service to answer bob", Duration::from_secs(30), || async {
        let (status, body) = answer(Some(bob.token().to_owned())).await?;
        Ok((status == 200).then_some(body))
    })
    .await?;
    assert_eq!(up, "hello from research\n");
    assert_eq!(answer(Some(c.coord.admin_token.clone())).await?.0, 200, "a global admin calls every service");
    assert_eq!(answer(None).await?.0, 401);
    let (status, body) = answer(Some(carol_token.clone())).await?;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("not a member of project research"), "{body}");

    let mut out = Vec::new();
    corral_cli::cluster::token(
        &bob,
        corral_cli::TokenCommand::Create { service: Some("web".into()), fleet: None, ttl: None, uses: None },
        &mut out,
    )
    .await?;
    let service_token = String::from_utf8(out)?.trim().to_owned();
    assert_eq!(answer(Some(service_token.clone())).await?, (200, "hello from research\n".to_owned()));
    // bob gets into his container (the trail records it) ...
    let code =
        corral_cli::exec::exec(&bob, "web", 0, &["true".to_owned()], None, &mut Vec::new(), &mut Vec::new()).await?;
    assert_eq!(code, 0);
    // ... and the service token can do nothing else.
    let as_service = Client::new(&url, &service_token, "research");
    let e = corral_cli::commands::ps(&as_service, false, false, None, &mut Vec::new())
        .await
        .expect_err("a service token lists nothing");
    assert!(format!("{e:#}").contains("only calls the service research/web"), "{e:#}");

    // A user of the project neither sees nor sets its secrets: that is a manager's.
    let set = SecretCommand::Set { name: "HF_TOKEN".into(), value: Some("x".into()), from_file: None };
    let e = corral_cli::secrets::secret(&bob, set, &mut Vec::new()).await.expect_err("bob is a user");
    assert!(format!("{e:#}").contains("secret.set in project research needs the manager role; bob is a user"), "{e:#}");

    // Removed from the project, bob's token no longer calls its service; a rotated token replaces the old.
    let remove = MemberCommand::Remove { project: "research".into(), user: "bob".into() };
    said!(corral_cli::teams::project, &alice, ProjectCommand::Member { command: remove })?;
    wait_for("bob to be refused", Duration::from_secs(5), || async {
        Ok((answer(Some(bob.token().to_owned())).await?.0 == 403).then_some(()))
    })
    .await?;
    // The service tokens he made left with him.
    wait_for("bob's service token to be refused", Duration::from_secs(5), || async {
        Ok((answer(Some(service_token.clone())).await?.0 == 401).then_some(()))
    })
    .await?;
    let rotated = said!(corral_cli::teams::user, &bob, UserCommand::Token { name: "bob".into(), rotate: true })?;
    let e = corral_cli::teams::whoami(&bob, false, &mut Vec::new()).await.expect_err("the old token is gone");
    assert!(format!("{e:#}").contains("invalid token"), "{e:#}");
    let bob = Client::new(&url, rotated.trim(), "research");
    assert!(said!(corral_cli::teams::whoami, &bob, false)?.contains("projects: -"));
    let e = corral_cli::teams::user(&bob, UserCommand::Token { name: "alice".into(), rotate: true }, &mut Vec::new())
        .await
        .expect_err("bob is not alice");
    assert!(format!("{e:#}").contains("user.token for another user needs a global admin"), "{e:#}");

    // The audit trail says who did what, in order, and never a secret's value.
    corral_cli::secrets::secret(
        &alice,
        SecretCommand::Set { name: "HF_TOKEN".into(), value: Some("hf_v4lue".into()), from_file: None },
        &mut Vec::new(),
    )
    .await?;
    let args = corral_cli::EventArgs {
        project: Some("research".into()),
        all: false,
        since: Some("1h".into()),
        limit: 100,
        object: None,
        json: true,
    };
    let events: Vec<api::Event> = serde_json::from_str(&said!(corral_cli::teams::events, &alice, args)?)?;
    let seen: Vec<(Option<&str>, &str, Option<&str>)> =
        events.iter().map(|e| (e.user.as_deref(), e.action.as_str(), e.object.as_deref())).collect();
    assert_eq!(
        seen,
        [
            (Some("alice"), "project.create", Some("research")),
            (Some("alice"), "member.set", Some("bob")),
            (Some("bob"), "run.apply", Some("web")),
            (Some("bob"), "service-token.create", Some("web")),
            (Some("bob"), "run.exec", Some("web")),
            (Some("alice"), "member.remove", Some("bob")),
            (Some("alice"), "secret.set", Some("HF_TOKEN")),
        ],
        "{events:#?}"
    );
    assert_eq!(events[1].detail.as_deref(), Some("role user (was not a member)"));
    assert!(!serde_json::to_string(&events)?.contains("hf_v4lue"));
    // Paged back: the 3 before the newest 3, oldest first.
    let newest: Vec<api::Event> = alice.get("/api/projects/research/events?limit=3").await?;
    let before: Vec<api::Event> =
        alice.get(&format!("/api/projects/research/events?limit=3&before={}", newest[0].id)).await?;
    let actions = |page: &[api::Event]| page.iter().map(|e| e.action.clone()).collect::<Vec<_>>();
    assert_eq!(actions(&newest), ["run.exec", "member.remove", "secret.set"]);
    assert_eq!(actions(&before), ["member.set", "run.apply", "service-token.create"]);
    let all = corral_cli::EventArgs { project: None, all: true, since: None, limit: 100, object: None, json: true };
    let e = corral_cli::teams::events(&alice, all, &mut Vec::new()).await.expect_err("alice is no global admin");
    assert!(format!("{e:#}").contains("needs a global admin"), "{e:#}");
    let all = corral_cli::EventArgs { project: None, all: true, since: None, limit: 100, object: None, json: true };
    let events: Vec<api::Event> = serde_json::from_str(&said!(corral_cli::teams::events, admin, all)?)?;
    let made: Vec<_> =
        events.iter().filter(|e| e.action == "user.create").filter_map(|e| e.object.as_deref()).collect();
    assert_eq!(made, ["alice", "bob", "carol"]);
    let enrolled = events.iter().find(|e| e.action == "node.enroll").expect("the node's enrollment is recorded");
    assert_eq!((enrolled.user.as_deref(), enrolled.object.as_deref()), (None, Some("node-a")));
    assert!(events.iter().any(|e| e.action == "user.token" && e.user.as_deref() == Some("bob")));
    Ok(())
}

/// A database written by the release before users (`tests/fixtures/before-users`: a finished run
/// that printed a secret, a run waiting for a GPU, the secret, a join token with 3 uses) is
/// migrated at start: the admin token keeps working, its runs stay in `main`, and nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_from_before_users_starts_and_loses_nothing() -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    ensure_image();
    let fixture = repo_root().join("tests/fixtures/before-users");
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("coord");
    std::fs::create_dir_all(data.join("logs"))?;
    for name in ["admin-token", "secrets.key"] {
        std::fs::copy(fixture.join(name), data.join(name))?;
        std::fs::set_permissions(data.join(name), std::fs::Permissions::from_mode(0o600))?;
    }
    for entry in std::fs::read_dir(fixture.join("logs"))? {
        let entry = entry?;
        std::fs::copy(entry.path(), data.join("logs").join(entry.file_name()))?;
    }
    let db = rusqlite::Connection::open(data.join("corral.db"))?;
    db.execute_batch(&std::fs::read_to_string(fixture.join("corral.sql"))?)?;
    // An image pushed before images had projects (its blobs are not needed to list it).
    db.execute(
        "INSERT INTO images (name, config, layers, size, pushed_ms) VALUES ('team/base:1', ?1, '[]', 1234, 1)",
        ["ab".repeat(32)],
    )?;
    assert_eq!(
        db.pragma_query_value(None, "user_version", |r| r.get::<_, i64>(0))?,
        11,
        "the fixture is the release's schema"
    );
    drop(db);
    std::fs::set_permissions(data.join("corral.db"), std::fs::Permissions::from_mode(0o600))?;

    let coord = Coordinator::start(&data).await?;
    let admin_token = std::fs::read_to_string(fixture.join("admin-token"))?;
    assert_eq!(coord.admin_token, admin_token.trim(), "the data dir's admin token is kept");
    let admin = coord.client();
    let me: api::WhoAmI = admin.get("/api/whoami").await?;
    assert_eq!((me.user.as_deref(), me.role), (Some("admin"), Some(api::GlobalRole::Admin)));
    let users: Vec<api::User> = admin.get("/api/users").await?;
    assert_eq!(users.iter().map(|u| u.name.as_str()).collect::<Vec<_>>(), ["admin"]);
    // It is shared: every project's runs can use it, as before.
    let shared: Vec<api::ImageInfo> = admin.get("/api/projects/main/images").await?;
    assert_eq!(
        shared.iter().map(|i| (i.name.as_str(), i.project.as_deref())).collect::<Vec<_>>(),
        [("team/base:1", None)]
    );

    let mut ps = Vec::new();
    corral_cli::commands::ps(&admin, true, true, None, &mut ps).await?;
    let runs: Vec<api::Run> = serde_json::from_slice(&ps)?;
    let mut seen: Vec<(String, String, corral_proto::job::JobState)> =
        runs.iter().map(|r| (r.name.clone(), r.project.clone(), r.state.clone())).collect();
    seen.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        seen,
        [
            ("greet".to_owned(), "main".to_owned(), corral_proto::job::JobState::Done),
            ("waits-for-gpu".to_owned(), "main".to_owned(), corral_proto::job::JobState::Pending)
        ]
    );
    assert_eq!(logs(&admin, "greet").await?, "greeting is hello-from-the-release-before-users\nsecond line\n");
    let secrets: Vec<api::Secret> = admin.get("/api/projects/main/secrets").await?;
    assert_eq!(secrets.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(), ["GREETING"]);
    let joins: Vec<api::JoinTokenInfo> = admin.get("/api/tokens").await?;
    assert!(joins.iter().any(|t| t.id == "c11fb45fb886" && t.uses_left == Some(3)), "{joins:?}");

    // The secret, sealed by the release before, still opens: a new run prints it.
    let agent_dir = dir.path().join("agent");
    let _agent = Agent::start(&coord, &agent_dir, AgentOptions { name: "after".into(), ..Default::default() });
    wait_for("the new node", Duration::from_secs(30), || async {
        let nodes: Vec<api::Node> = admin.get("/api/nodes").await?;
        Ok(nodes
            .iter()
            .any(|n| n.name == "after" && n.status == api::NodeStatus::Ready && n.inventory.is_some())
            .then_some(()))
    })
    .await?;
    let text = format!(
        "type: task\nname: again\nimage: {IMAGE}\nenv:\n  - G=${{{{ secrets.GREETING }}}}\ncommands:\n  - echo \"$G\"\n"
    );
    let (code, out) = apply(&admin, &write_config(dir.path(), "again", &text), false).await?;
    assert_eq!(code, 0, "{out}");
    assert_eq!(logs(&admin, "again").await?, "hello-from-the-release-before-users\n");
    Ok(())
}

/// A fleet belongs to a project: its nodes take that project's runs, and another project's runs
/// wait saying why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_project_s_fleet_runs_only_that_project_s_runs() -> anyhow::Result<()> {
    ensure_image();
    let dir = tempfile::tempdir()?;
    let coord = Coordinator::start(&dir.path().join("coord")).await?;
    let admin = coord.client();
    let _: api::Project = admin.post("/api/projects", &api::CreateProject { name: "vision".into() }).await?;
    let vision = Client::new(&coord.url(), &coord.admin_token, "vision");
    let fleet = write_config(dir.path(), "rack", "type: fleet\nname: rack\n");
    apply(&vision, &fleet, true).await?;
    let _agent = Agent::start(
        &coord,
        &dir.path().join("agent"),
        AgentOptions { name: "rack-1".into(), fleet: Some("rack".into()), ..Default::default() },
    );
    nodes_ready(&admin, 1).await?;

    let task = |name: &str| format!("type: task\nname: {name}\nimage: {IMAGE}\ncommands: [\"echo ran\"]\n");
    apply(&admin, &write_config(dir.path(), "elsewhere", &task("elsewhere")), true).await?;
    let waiting =
        wait_state(&admin, "elsewhere", |r| r.jobs[0].status_message.is_some(), Duration::from_secs(10)).await?;
    assert_eq!(waiting.state, corral_proto::job::JobState::Pending);
    assert_eq!(
        waiting.jobs[0].status_message.as_deref(),
        Some("no nodes for project main: 1 node(s) are in other projects' fleets (see `corral node list`)")
    );
    // A fleet's name is the cluster's: another project cannot claim vision's nodes by naming a fleet so.
    let e = corral_cli::commands::apply(&admin, &fleet, true, true, None, &mut Vec::new()).await.expect_err("taken");
    assert!(format!("{e:#}").contains("fleet \"rack\" is project vision's"), "{e:#}");
    let (code, out) = apply(&vision, &write_config(dir.path(), "own", &task("own")), false).await?;
    assert_eq!(code, 0, "{out}");
    assert_eq!(logs(&vision, "own").await?, "ran\n");
    assert_eq!(run(&vision, "own").await?.jobs[0].node_name.as_deref(), Some("rack-1"));
    Ok(())
}
