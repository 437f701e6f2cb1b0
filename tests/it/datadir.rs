//! The coordinator's data dir holds secrets (the CA key, tokens, job environments in the database
//! and its WAL, job output): nothing in it is readable by another local user, and a data dir left
//! open by an older version is closed on start.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use corral_proto::job::JobState;

use crate::harness::*;

/// Every path under `dir` (itself included) with its permission bits, in octal.
fn modes(dir: &Path) -> anyhow::Result<Vec<(PathBuf, bool, String)>> {
    let meta = std::fs::symlink_metadata(dir)?;
    let mut all = vec![(dir.to_owned(), meta.is_dir(), format!("{:o}", meta.permissions().mode() & 0o777))];
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        match std::fs::symlink_metadata(&path) {
            Ok(m) if m.is_dir() => all.extend(modes(&path)?),
            Ok(m) => all.push((path, false, format!("{:o}", m.permissions().mode() & 0o777))),
            // Gone between the listing and the look (an upload's temp dir).
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(all)
}

/// Fails naming every path that is not 0700 (directories) or 0600 (files).
fn assert_private(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let all = modes(dir)?;
    let open: Vec<_> = all.iter().filter(|(_, is_dir, m)| m != if *is_dir { "700" } else { "600" }).collect();
    assert!(open.is_empty(), "readable by other users: {open:#?}");
    Ok(all.into_iter().map(|(p, _, _)| p).collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_in_the_data_dir_is_readable_by_other_users() -> anyhow::Result<()> {
    let c = OneNode::start().await?;
    let file = write_config(
        c.dir.path(),
        "leaky",
        &format!(
            "type: task\nname: leaky\nimage: {IMAGE}\nenv:\n  - HF_TOKEN=hf_not_for_others\ncommands:\n  - echo \"token $HF_TOKEN\"\n"
        ),
    );
    let (code, out) = apply(&c.client, &file, false).await?;
    assert_eq!(code, 0, "output was: {out}");
    assert!(out.contains("token hf_not_for_others"), "output was: {out:?}");
    assert_eq!(run(&c.client, "leaky").await?.state, JobState::Done);

    let data = &c.coord.data;
    let paths = assert_private(data)?;
    // The places a secret lands are among those checked.
    for name in ["corral.db", "corral.db-wal", "ca.key", "admin-token", "join-token", "logs", "images"] {
        assert!(paths.contains(&data.join(name)), "{name} missing from {paths:#?}");
    }
    assert!(paths.iter().any(|p| p.extension().is_some_and(|x| x == "log")), "the task's log: {paths:#?}");

    // The agent's identity too: its key is the node's credential.
    let state = &c.agent.state;
    assert_eq!(format!("{:o}", std::fs::metadata(state)?.permissions().mode() & 0o777), "700");
    for name in ["node.key", "node.pem", "ca.pem", "node.json"] {
        let mode = std::fs::metadata(state.join(name))?.permissions().mode() & 0o777;
        assert_eq!(format!("{mode:o}"), "600", "{name}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_dir_open_to_everyone_is_closed_on_start() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("coord");
    Coordinator::start(&data).await?.stop().await;
    // As an older version left it: the dirs 0755, the files 0644, a log among them.
    std::fs::write(data.join("logs/0123abcd.log"), "token hf_not_for_others\n")?;
    for (path, is_dir, _) in modes(&data)? {
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(if is_dir { 0o755 } else { 0o644 }))?;
    }
    assert!(modes(&data)?.iter().any(|(p, _, m)| p.ends_with("ca.key") && m == "644"));

    let coord = Coordinator::start(&data).await?;
    let paths = assert_private(&data)?;
    assert!(paths.contains(&data.join("logs/0123abcd.log")) && paths.contains(&data.join("corral.db-wal")));
    // It still works: its tokens were read, not made anew.
    let tokens: Vec<corral_proto::api::JoinTokenInfo> = coord.client().get("/api/tokens").await?;
    assert_eq!(tokens.len(), 1, "{tokens:?}");
    Ok(())
}
