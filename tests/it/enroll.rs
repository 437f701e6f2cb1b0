//! Enrollment: the agent pins the coordinator's CA by the token's hash and proves the secret; both
//! mistakes are refused with a message that says which.

use std::time::Duration;

use corral_proto::token::JoinToken;

use crate::harness::*;

async fn enroll_with(coord: &Coordinator, token: JoinToken, dir: &std::path::Path) -> anyhow::Result<()> {
    tokio::time::timeout(
        Duration::from_secs(20),
        corral_agent::link::enroll(&coord.quic.to_string(), &token, dir, "intruder", None),
    )
    .await??;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_secret_is_refused() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let coord = Coordinator::start(&dir.path().join("coord")).await?;
    let token = JoinToken { ca_hash: coord.join_token.ca_hash.clone(), secret: "not-the-secret".into() };
    let err = enroll_with(&coord, token, &dir.path().join("agent")).await.expect_err("must be refused");
    assert!(format!("{err:#}").contains("wrong join token secret"), "{err:#}");
    assert!(!dir.path().join("agent/node.json").exists(), "nothing is stored on refusal");
    let nodes: Vec<corral_proto::api::Node> = coord.client().get("/api/nodes").await?;
    assert!(nodes.is_empty());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_ca_hash_is_refused_before_the_secret_is_sent() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let coord = Coordinator::start(&dir.path().join("coord")).await?;
    let token = JoinToken { ca_hash: "0".repeat(64), secret: coord.join_token.secret.clone() };
    let err = enroll_with(&coord, token, &dir.path().join("agent")).await.expect_err("must be refused");
    let text = format!("{err:#}");
    assert!(text.contains("does not match the join token"), "{text}");
    assert!(text.contains(&coord.join_token.ca_hash), "names the CA presented: {text}");
    // The secret was never sent, so the token still works.
    enroll_with(&coord, coord.join_token.clone(), &dir.path().join("agent")).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_from_another_cluster_are_refused_on_both_sides() -> anyhow::Result<()> {
    use corral_agent::identity::Identity;
    let dir = tempfile::tempdir()?;
    let ours = Coordinator::start(&dir.path().join("ours")).await?;
    let theirs = Coordinator::start(&dir.path().join("theirs")).await?;
    let state = dir.path().join("agent");
    enroll_with(&theirs, theirs.join_token.clone(), &state).await?;
    let identity = Identity::load(&state)?.expect("enrolled");
    corral_agent::link::probe(&identity, &theirs.quic.to_string()).await?;

    // The agent checks the coordinator: "ours" is not signed by the CA it enrolled with.
    let err = corral_agent::link::probe(&identity, &ours.quic.to_string()).await.expect_err("refused");
    assert!(format!("{err:#}").contains("not signed by the CA this node enrolled with"), "{err:#}");

    // The coordinator checks the agent: trusting "ours" does not make its certificate valid there.
    std::fs::copy(dir.path().join("ours/ca.pem"), state.join("ca.pem"))?;
    let identity = Identity::load(&state)?.expect("enrolled");
    let err = corral_agent::link::probe(&identity, &ours.quic.to_string()).await.expect_err("refused");
    assert!(format!("{err:#}").contains("refused this node's certificate"), "{err:#}");

    let nodes: Vec<corral_proto::api::Node> = ours.client().get("/api/nodes").await?;
    assert!(nodes.is_empty(), "no node joined: {nodes:?}");
    Ok(())
}

/// `corral token create` through the CLI's own function; returns the token it printed.
async fn create_token(
    client: &corral_cli::client::Client,
    fleet: Option<&str>,
    ttl: Option<&str>,
    uses: Option<u32>,
) -> anyhow::Result<JoinToken> {
    let mut out = Vec::new();
    let command = corral_cli::TokenCommand::Create {
        service: None,
        fleet: fleet.map(str::to_owned),
        ttl: ttl.map(str::to_owned),
        uses,
    };
    assert_eq!(corral_cli::cluster::token(client, command, &mut out).await?, 0);
    Ok(String::from_utf8(out)?.trim().parse()?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_tokens_are_scoped_by_fleet_uses_time_and_revocation() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let coord = Coordinator::start(&dir.path().join("coord")).await?;
    let client = coord.client();

    // One use, into fleet `gpu`: the first host joins that fleet, the second is refused.
    let once = create_token(&client, Some("gpu"), None, Some(1)).await?;
    enroll_with(&coord, once.clone(), &dir.path().join("a")).await?;
    let nodes: Vec<corral_proto::api::Node> = client.get("/api/nodes").await?;
    assert_eq!(nodes.len(), 1);
    assert_eq!(nodes[0].fleet.as_deref(), Some("gpu"));
    let err = enroll_with(&coord, once, &dir.path().join("b")).await.expect_err("used up");
    assert!(format!("{err:#}").contains("used up"), "{err:#}");

    // A short life: refused once it is over.
    let brief = create_token(&client, None, Some("1s"), None).await?;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let err = enroll_with(&coord, brief, &dir.path().join("c")).await.expect_err("expired");
    assert!(format!("{err:#}").contains("expired"), "{err:#}");

    // Revoked by its id (as `token list` shows it): refused.
    let revoked = create_token(&client, None, None, None).await?;
    let tokens: Vec<corral_proto::api::JoinTokenInfo> = client.get("/api/tokens").await?;
    assert_eq!(tokens.len(), 4, "the coordinator's own token and the three made here: {tokens:?}");
    assert!(tokens.iter().all(|t| t.token.is_none()), "a listing never shows a secret");
    let id = tokens.last().map(|t| t.id.clone()).unwrap_or_default();
    let mut out = Vec::new();
    corral_cli::cluster::token(
        &client,
        corral_cli::TokenCommand::Revoke { id: id[..6].to_owned(), service: false },
        &mut out,
    )
    .await?;
    assert!(String::from_utf8_lossy(&out).contains(&format!("token {id} revoked")));
    let err = enroll_with(&coord, revoked, &dir.path().join("d")).await.expect_err("revoked");
    assert!(format!("{err:#}").contains("revoked"), "{err:#}");

    // The listing says which is which.
    let mut out = Vec::new();
    corral_cli::cluster::token(&client, corral_cli::TokenCommand::List { service: false, json: false }, &mut out)
        .await?;
    let listing = String::from_utf8_lossy(&out);
    for status in ["used up", "expired", "revoked", "valid"] {
        assert!(listing.contains(status), "{status} missing from:\n{listing}");
    }
    // Bad requests say what is wrong.
    let err = client
        .post::<_, corral_proto::api::JoinTokenInfo>(
            "/api/tokens",
            &corral_proto::api::CreateJoinToken { uses: Some(0), ..Default::default() },
        )
        .await
        .expect_err("refused");
    assert!(format!("{err:#}").contains("at least one"), "{err:#}");
    Ok(())
}

/// `corral token list`, as printed.
async fn token_list(client: &corral_cli::client::Client) -> anyhow::Result<String> {
    let mut out = Vec::new();
    corral_cli::cluster::token(client, corral_cli::TokenCommand::List { service: false, json: false }, &mut out)
        .await?;
    Ok(String::from_utf8(out)?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_default_token_stays_revoked_across_restarts() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("coord");
    let coord = Coordinator::start(&data).await?;
    let client = coord.client();

    // The coordinator's own token, as `token list` shows it: no end, no count, and said so.
    let tokens: Vec<corral_proto::api::JoinTokenInfo> = client.get("/api/tokens").await?;
    let default = tokens.iter().find(|t| t.default).expect("the default token is marked");
    assert_eq!((default.expires_ms, default.uses_left, default.revoked), (None, None, false));
    let listing = token_list(&client).await?;
    assert!(listing.contains("valid (default)"), "{listing}");
    assert!(listing.contains("never expires and has unlimited uses"), "{listing}");
    assert!(listing.contains(&format!("corral token revoke {}", default.id)), "{listing}");

    let mut out = Vec::new();
    let revoke = corral_cli::TokenCommand::Revoke { id: default.id.clone(), service: false };
    assert_eq!(corral_cli::cluster::token(&client, revoke, &mut out).await?, 0);
    let err = enroll_with(&coord, coord.join_token.clone(), &dir.path().join("a")).await.expect_err("revoked");
    assert!(format!("{err:#}").contains("revoked"), "{err:#}");

    // A restart reads the same token from the data dir and leaves it revoked.
    let token = coord.join_token.clone();
    coord.stop().await;
    let coord = Coordinator::start(&data).await?;
    assert!(coord.join_token == token, "the token file is kept");
    let err = enroll_with(&coord, token, &dir.path().join("b")).await.expect_err("still revoked");
    assert!(format!("{err:#}").contains("revoked"), "{err:#}");
    let listing = token_list(&coord.client()).await?;
    assert!(listing.contains("revoked (default)") && !listing.contains("never expires"), "{listing}");

    // Nor does removing the file bring an open token back: the one made in its place is revoked.
    coord.stop().await;
    std::fs::remove_file(data.join("join-token"))?;
    let coord = Coordinator::start(&data).await?;
    let err = enroll_with(&coord, coord.join_token.clone(), &dir.path().join("c")).await.expect_err("revoked too");
    assert!(format!("{err:#}").contains("revoked"), "{err:#}");
    // A token made by hand enrolls.
    let made = create_token(&coord.client(), None, None, Some(1)).await?;
    enroll_with(&coord, made, &dir.path().join("d")).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_node_is_cut_off_and_refused_and_its_job_interrupted() -> anyhow::Result<()> {
    let c = OneNode::start().await?;
    let text = format!("type: task\nname: victim\nimage: {IMAGE}\ncommands:\n  - sleep 600\n");
    let (code, _) = apply(&c.client, &write_config(c.dir.path(), "victim", &text), true).await?;
    assert_eq!(code, 0);
    wait_state(&c.client, "victim", |r| r.state == corral_proto::job::JobState::Running, Duration::from_secs(30))
        .await?;

    let mut out = Vec::new();
    let command = corral_cli::NodeCommand::Remove { node: "node-a".into(), yes: true };
    assert_eq!(corral_cli::cluster::node(&c.client, command, &mut out).await?, 0);
    assert!(String::from_utf8_lossy(&out).contains("node node-a removed"), "{}", String::from_utf8_lossy(&out));

    // The run's job is interrupted, the node is gone from the list, and the agent is refused.
    let r = wait_state(&c.client, "victim", |r| r.state.is_finished(), Duration::from_secs(10)).await?;
    assert_eq!(r.jobs[0].termination_reason, Some(corral_proto::job::TerminationReason::NodeUnreachable));
    assert!(r.jobs[0].status_message.clone().unwrap_or_default().contains("removed"), "{:?}", r.jobs[0]);
    let nodes: Vec<corral_proto::api::Node> = c.client.get("/api/nodes").await?;
    assert!(nodes.is_empty(), "{nodes:?}");
    // The agent, refused, removes the job's container: nothing runs for a job interrupted here.
    let container = format!("corral-{}", r.jobs[0].id);
    wait_for("the removed node's container to go", Duration::from_secs(20), || async {
        Ok((!docker_exists(&container)).then_some(()))
    })
    .await?;
    let identity = corral_agent::identity::Identity::load(&c.agent.state)?.expect("enrolled");
    let err = corral_agent::link::probe(&identity, &c.coord.quic.to_string()).await.expect_err("refused");
    assert!(format!("{err:#}").contains("revoked"), "{err:#}");
    Ok(())
}
