//! The agent's verbs on containers: images, stop, listing for re-adoption, removal.

use std::time::Duration;

use corral_shim::{RunOptions, ShimError};

use anyhow::Context;

use crate::{DEADLINE, TEST_IMAGE, job, logs, shim, until_running, wait};

#[tokio::test]
async fn docker_info_names_the_daemon_version() -> anyhow::Result<()> {
    let info = shim()?.docker_info().await?;
    assert!(info.version.chars().next().is_some_and(|c| c.is_ascii_digit()), "{info:?}");
    Ok(())
}

#[tokio::test]
async fn a_present_image_needs_no_pull() -> anyhow::Result<()> {
    shim()?.ensure_image(TEST_IMAGE).await?;
    Ok(())
}

#[tokio::test]
async fn a_missing_image_that_cannot_be_pulled_is_unavailable() -> anyhow::Result<()> {
    let image = "corral-test/does-not-exist:1";
    let result = tokio::time::timeout(Duration::from_secs(180), shim()?.ensure_image(image)).await?;
    match result {
        Err(e @ ShimError::ImageUnavailable { .. }) => {
            let text = e.to_string();
            assert!(text.contains(image) && text.contains("could not be pulled"), "{text}");
        }
        other => panic!("expected ImageUnavailable, got {other:?}"),
    }
    Ok(())
}

#[tokio::test]
async fn creating_from_a_missing_image_is_unavailable() -> anyhow::Result<()> {
    let shim = shim()?;
    let (mut spec, _cleanup) = job("noimage", &["true"]);
    spec.image = "corral-test/does-not-exist:1".to_owned();
    let result = shim.create_and_start(&spec, &RunOptions::default()).await;
    assert!(matches!(result, Err(ShimError::ImageUnavailable { .. })), "{result:?}");
    Ok(())
}

#[tokio::test]
async fn stop_ends_a_running_job_within_its_grace() -> anyhow::Result<()> {
    let shim = shim()?;
    let (spec, _cleanup) = job("stop", &["sleep 600"]);
    let id = shim.create_and_start(&spec, &RunOptions::default()).await?;
    until_running(&shim, &id).await?;

    let grace = Duration::from_secs(spec.stop_grace_secs);
    tokio::time::timeout(grace + Duration::from_secs(30), shim.stop(&id, grace))
        .await
        .map_err(|_| anyhow::anyhow!("stop did not return within grace + 30s"))??;

    let state = shim.inspect_state(&id).await?;
    assert!(!state.running, "{state:?}");
    assert!(state.exit_code.is_some_and(|c| c != 0), "{state:?}");
    // Stopping what is already stopped is fine.
    shim.stop(&id, grace).await?;
    shim.kill(&id).await?;
    Ok(())
}

#[tokio::test]
async fn list_finds_corral_containers_by_label() -> anyhow::Result<()> {
    let shim = shim()?;
    let (mut running, _cleanup_running) = job("list-running", &["sleep 600"]);
    running.max_duration_secs = Some(77);
    let (mut exited, _cleanup_exited) = job("list-exited", &["exit 5"]);
    // Both on one node of their own, so the listing holds exactly these two.
    exited.node_id = running.node_id.clone();

    let running_id = shim.create_and_start(&running, &RunOptions::default()).await?;
    let exited_id = shim.create_and_start(&exited, &RunOptions::default()).await?;
    until_running(&shim, &running_id).await?;
    assert_eq!(wait(&shim, &exited_id).await?, 5);

    let mut found = shim.list(Some(&running.node_id)).await?;
    found.sort_by_key(|c| !c.running);
    assert_eq!(found.len(), 2, "{found:?}");

    let r = &found[0];
    assert_eq!(
        (r.id.as_str(), r.job_id.clone(), r.run_id.clone()),
        (running_id.as_str(), running.job_id.clone(), running.run_id.clone())
    );
    assert_eq!(r.name, format!("corral-{}", running.job_id));
    assert_eq!(r.node_id, running.node_id);
    assert!(r.running && r.exit_code.is_none(), "{r:?}");
    assert!(r.started_at_unix.is_some(), "{r:?}");
    assert_eq!(r.max_duration_secs, Some(77));

    let e = &found[1];
    assert_eq!((e.id.as_str(), &e.job_id), (exited_id.as_str(), &exited.job_id));
    assert!(!e.running && e.exit_code == Some(5), "{e:?}");
    assert_eq!(e.max_duration_secs, None);

    // Unfiltered, other suites' containers may be there too; ours must be.
    let all = shim.list(None).await?;
    assert!(all.iter().any(|c| c.job_id == running.job_id) && all.iter().any(|c| c.job_id == exited.job_id));

    shim.kill(&running_id).await?;
    Ok(())
}

#[tokio::test]
async fn remove_is_idempotent() -> anyhow::Result<()> {
    let shim = shim()?;
    let (spec, _cleanup) = job("remove", &["echo bye"]);
    let id = shim.create_and_start(&spec, &RunOptions::default()).await?;
    assert_eq!(wait(&shim, &id).await?, 0);
    // Logs stay readable after exit, until removal: the agent ships them first.
    assert!(logs(&shim, &id).await?.contains("bye"));

    shim.remove(&id).await?;
    shim.remove(&id).await?;
    let gone = shim.inspect_state(&id).await;
    assert!(gone.as_ref().is_err_and(ShimError::is_not_found), "{gone:?}");
    assert!(shim.list(Some(&spec.node_id)).await?.is_empty());
    Ok(())
}

#[tokio::test]
async fn remove_also_removes_a_running_container() -> anyhow::Result<()> {
    let shim = shim()?;
    let (spec, _cleanup) = job("remove-running", &["sleep 600"]);
    let id = shim.create_and_start(&spec, &RunOptions::default()).await?;
    until_running(&shim, &id).await?;

    tokio::time::timeout(DEADLINE, shim.remove(&id)).await??;
    assert!(shim.inspect_state(&id).await.is_err_and(|e| e.is_not_found()));
    Ok(())
}

#[tokio::test]
async fn a_second_container_for_the_same_job_is_refused() -> anyhow::Result<()> {
    let shim = shim()?;
    let (spec, _cleanup) = job("twice", &["sleep 600"]);
    shim.create_and_start(&spec, &RunOptions::default()).await?;
    let again = shim.create_and_start(&spec, &RunOptions::default()).await;
    assert!(matches!(again, Err(ShimError::ContainerExists { .. })), "{again:?}");
    Ok(())
}

#[tokio::test]
async fn a_container_that_cannot_start_is_removed_again() -> anyhow::Result<()> {
    let shim = shim()?;
    let (mut spec, _cleanup) = job("nostart", &["true"]);
    // No host has GPU 999: with or without the NVIDIA toolkit, Docker creates the container and
    // then fails to start it.
    spec.allocation.gpu_indices = vec![999];
    let result = shim.create_and_start(&spec, &RunOptions::default()).await;
    assert!(matches!(result, Err(ShimError::Start { .. })), "{result:?}");

    let name = corral_shim::container_name(&spec.job_id);
    let gone = shim.inspect_state(&name).await;
    assert!(gone.as_ref().is_err_and(ShimError::is_not_found), "{gone:?}");
    // And a retry is not refused as a duplicate.
    let again = shim.create_and_start(&spec, &RunOptions::default()).await;
    assert!(matches!(again, Err(ShimError::Start { .. })), "{again:?}");
    Ok(())
}

/// Docker's follow of a json-file log that rotates while it is still sending the backlog to a
/// slow reader stops seeing the log: `logs_since` reads again from where it got to, so every
/// line the container writes arrives once, in order.
#[tokio::test]
async fn a_log_read_back_slowly_across_a_rotation_misses_no_line() -> anyhow::Result<()> {
    let shim = shim()?;
    let name = format!("{}-rotating", crate::unique_job_id("logs").0);
    let _cleanup = crate::Cleanup(name.clone(), String::new());
    let from = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs() as i64 - 15;
    // A million lines rotate a 10 MB × 3 JSON log many times (it keeps about 380,000 of them).
    let script = "seq 1 1000000; sleep 6; seq 1 20000; echo end";
    let run = std::process::Command::new("docker")
        .args(["run", "-d", "--name", &name, "--log-driver", "json-file", "--log-opt", "max-size=10m"])
        .args(["--log-opt", "max-file=3", TEST_IMAGE, "sh", "-c", script])
        .output()?;
    anyhow::ensure!(run.status.success(), "docker run: {}", String::from_utf8_lossy(&run.stderr));
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let tail = std::process::Command::new("docker").args(["logs", "--tail", "1", &name]).output()?;
        if String::from_utf8_lossy(&tail.stdout).trim() == "1000000" {
            break;
        }
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "the container did not write its million lines");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut stream = std::pin::pin!(shim.logs_since(&name, Some(from)));
    // A reader that takes nothing for a while (an agent busy catching up): the container writes
    // again, and its log rotates, while Docker is still sending the backlog.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let mut text = Vec::new();
    tokio::time::timeout(DEADLINE, async {
        while let Some(chunk) = futures_util::StreamExt::next(&mut stream).await {
            text.extend_from_slice(&chunk?);
        }
        anyhow::Ok(())
    })
    .await??;
    let text = String::from_utf8(text)?;
    let second: String = (1..=20000).map(|n| format!("{n}\n")).collect();
    let first = text.strip_suffix(&format!("{second}end\n")).context("the lines written after the rotation")?;
    // What Docker still kept of the first million: a run of lines ending at 1000000, none twice.
    let numbers: Vec<u64> = first.lines().map(str::parse).collect::<Result<_, _>>()?;
    anyhow::ensure!(numbers.len() > 100_000, "only {} lines of the first million", numbers.len());
    anyhow::ensure!(numbers.last() == Some(&1_000_000), "ends at {:?}", numbers.last());
    anyhow::ensure!(numbers.windows(2).all(|w| w[1] == w[0] + 1), "the first million's lines are not one run");
    Ok(())
}
