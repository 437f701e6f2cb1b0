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
