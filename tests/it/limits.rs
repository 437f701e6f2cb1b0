//! What the API takes from a user, checked where it arrives: a run name is one path segment and a
//! valid name, a configuration is within the limits whoever sends it, and a body past the limit is
//! refused with words, not a broken pipe.

use corral_proto::api;
use corral_proto::config::{self, Configuration};

use crate::harness::*;

/// `corral stop '../../../nodes/node-a/cordon?x=' -y` once cordoned the node: the name is now one
/// encoded segment, and the coordinator refuses it as a name before any route or lookup sees it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_name_cannot_reach_another_route() -> anyhow::Result<()> {
    let c = OneNode::start().await?;
    let mut out = Vec::new();
    let e = corral_cli::commands::stop(&c.client, "../../../nodes/node-a/cordon?x=", true, false, &mut out)
        .await
        .expect_err("refused");
    assert!(e.to_string().starts_with("not a valid run name: \"../../../nodes/node-a/cordon?x=\""), "{e:#}");

    // The same requests made by hand, already encoded: each name is refused as a name.
    let http = reqwest::Client::new();
    for (post, path, kind) in [
        (true, "/api/projects/main/runs/..%2F..%2F..%2Fnodes%2Fnode-a%2Fcordon/stop", "run"),
        (true, "/api/projects/main/runs/..%2F..%2F..%2Fnodes%2Fnode-a%2Fcordon%3Fx%3D/stop", "run"),
        (false, "/api/projects/main/runs/x%2F..%2F..%2F..%2Fnodes%2Fnode-a%2Fcordon/logs", "run"),
        (false, "/api/projects/..%2F..%2Fnodes%2Fnode-a%2Fcordon%3F/runs", "project"),
        (true, "/api/nodes/node-a%2Fcordon/drain", "node"),
        (false, "/api/projects/main/fleets/a%2F..%2Fb", "fleet"),
    ] {
        let url = format!("http://{}{path}", c.coord.http);
        let req = if post { http.post(url) } else { http.get(url) };
        let resp = req.bearer_auth(&c.coord.admin_token).send().await?;
        let status = resp.status();
        let body: api::ApiError = resp.json().await?;
        assert_eq!(status, 400, "{path}: {}", body.error);
        assert!(body.error.starts_with(&format!("not a valid {kind} name: ")), "{path}: {}", body.error);
    }
    let nodes: Vec<api::Node> = c.client.get("/api/nodes").await?;
    assert_eq!(nodes.len(), 1);
    assert!(!nodes[0].cordoned, "nothing cordoned the node: {nodes:?}");
    Ok(())
}

/// A spec the CLI's parser would refuse, sent straight to the API: 400 with the parser's words,
/// no run made, the coordinator still up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spec_past_the_limits_is_refused_by_the_api() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let coord = Coordinator::start(&dir.path().join("coord")).await?;
    let client = coord.client();
    let task = "type: task\nname: huge\nimage: busybox\ncommands: [x]\n";
    let Configuration::Task(mut t) = config::parse(task, "t.yml")? else { panic!("a task") };
    t.nodes = u32::MAX;
    let submit = api::SubmitRun { configuration: Configuration::Task(t), source: None, name: None };
    let e = client.post::<_, api::Run>(&client.project_path("runs"), &submit).await.expect_err("refused");
    assert_eq!(e.to_string(), "nodes: must be between 1 and 1024, found 4294967295");

    let service = "type: service\nname: many\nimage: busybox\nport: 80\ncommands: [x]\n";
    let Configuration::Service(mut s) = config::parse(service, "s.yml")? else { panic!("a service") };
    s.replicas = corral_proto::resources::Range::exactly(100_000);
    let submit = api::SubmitRun { configuration: Configuration::Service(s), source: None, name: None };
    let resp = reqwest::Client::new()
        .post(format!("http://{}/api/projects/main/runs", coord.http))
        .bearer_auth(&coord.admin_token)
        .json(&submit)
        .send()
        .await?;
    assert_eq!(resp.status(), 400);
    let body: api::ApiError = resp.json().await?;
    assert_eq!(body.error, "replicas: at most 1024 replicas, found 100000");

    let runs: Vec<api::Run> = client.get(&client.project_path("runs?all=true")).await?;
    assert!(runs.is_empty(), "no run was made: {runs:?}");
    Ok(())
}

/// A file the parser takes but whose request is past the body limit (3 MB of comments): the CLI
/// says so before it sends anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configuration_over_the_body_limit_says_so() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let coord = Coordinator::start(&dir.path().join("coord")).await?;
    let client = coord.client();
    let comments = format!("# {}\n", "x".repeat(1000)).repeat(3000);
    let file =
        write_config(dir.path(), "big", &format!("type: task\nname: big\nimage: busybox\ncommands: [x]\n{comments}"));
    let e = apply(&client, &file, true).await.expect_err("refused");
    assert!(e.to_string().starts_with("configuration too large (limit 2 MB)"), "{e:#}");
    let runs: Vec<api::Run> = client.get(&client.project_path("runs?all=true")).await?;
    assert!(runs.is_empty(), "{runs:?}");
    Ok(())
}
