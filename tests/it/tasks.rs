//! Tasks through the whole path: CLI → HTTP → scheduler → QUIC → agent → Docker → logs back.

use std::time::Duration;

use corral_proto::job::{JobState, TerminationReason};

use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_output_and_exit_code_reach_the_cli() -> anyhow::Result<()> {
    let c = OneNode::start().await?;
    let file = write_config(
        c.dir.path(),
        "hello",
        &format!(
            "type: task\nname: hello\nimage: {IMAGE}\nenv:\n  - GREETING=hello from corral\nworking_dir: /tmp\ncommands:\n  - echo \"$GREETING\"\n  - pwd\n  - echo \"rank=$DSTACK_NODE_RANK run=$CORRAL_RUN_NAME\"\n"
        ),
    );
    let (code, out) = apply(&c.client, &file, false).await?;
    assert_eq!(code, 0, "output was: {out}");
    assert!(out.contains("hello from corral\n/tmp\nrank=0 run=hello\n"), "output was: {out:?}");
    let r = run(&c.client, "hello").await?;
    assert_eq!(r.state, JobState::Done);
    assert_eq!(r.jobs[0].exit_code, Some(0));
    assert_eq!(r.jobs[0].node_name.as_deref(), Some("node-a"));
    // The container is removed once its output is stored.
    let container = format!("corral-{}", r.jobs[0].id);
    wait_for("container removal", Duration::from_secs(15), || async { Ok((!docker_exists(&container)).then_some(())) })
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_command_fails_the_run_with_its_code() -> anyhow::Result<()> {
    let c = OneNode::start().await?;
    let file = write_config(
        c.dir.path(),
        "fails",
        &format!("type: task\nname: fails\nimage: {IMAGE}\ncommands:\n  - echo first\n  - exit 3\n  - echo never\n"),
    );
    let (code, out) = apply(&c.client, &file, false).await?;
    assert_eq!(code, 3);
    assert!(out.contains("first") && !out.contains("never"), "output was: {out:?}");
    let r = run(&c.client, "fails").await?;
    assert_eq!(r.state, JobState::Failed);
    assert_eq!(r.jobs[0].exit_code, Some(3));
    assert_eq!(r.jobs[0].termination_reason, Some(TerminationReason::ContainerExitedWithError));

    let mut ps = Vec::new();
    corral_cli::commands::ps(&c.client, true, false, None, &mut ps).await?;
    let ps = String::from_utf8(ps)?;
    assert!(ps.contains("fails") && ps.contains("failed") && ps.contains("container_exited_with_error"), "ps -a: {ps}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_ends_a_long_task_within_its_grace_period() -> anyhow::Result<()> {
    let c = OneNode::start().await?;
    let file = write_config(
        c.dir.path(),
        "sleeper",
        &format!(
            "type: task\nname: sleeper\nimage: {IMAGE}\nstop_duration: 3s\ncommands:\n  - echo started\n  - sleep 600\n"
        ),
    );
    let (code, _) = apply(&c.client, &file, true).await?;
    assert_eq!(code, 0);
    let r = wait_state(&c.client, "sleeper", |r| r.state == JobState::Running, Duration::from_secs(30)).await?;
    let container = format!("corral-{}", r.jobs[0].id);
    assert!(docker_running(&container));

    let started = tokio::time::Instant::now();
    let mut out = Vec::new();
    let code = corral_cli::commands::stop(&c.client, "sleeper", true, false, &mut out).await?;
    let took = started.elapsed();
    assert_eq!(code, 0, "{}", String::from_utf8_lossy(&out));
    assert!(String::from_utf8_lossy(&out).contains("run sleeper stopped"));
    // 3 s of grace, then SIGKILL; generous margin for a loaded CI machine.
    assert!(took < Duration::from_secs(30), "stop took {took:?}");
    let r = run(&c.client, "sleeper").await?;
    assert_eq!(r.state, JobState::Stopped);
    assert_eq!(r.jobs[0].termination_reason, Some(TerminationReason::StoppedByUser));
    assert!(!docker_running(&container));
    assert!(logs(&c.client, "sleeper").await?.contains("started"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_image_fails_with_a_clear_reason() -> anyhow::Result<()> {
    let c = OneNode::start().await?;
    let file = write_config(
        c.dir.path(),
        "noimage",
        "type: task\nname: noimage\nimage: corral-test/does-not-exist:1\ncommands:\n  - echo hi\n",
    );
    let (code, _) = apply(&c.client, &file, false).await?;
    assert_eq!(code, 1);
    let r = run(&c.client, "noimage").await?;
    assert_eq!(r.state, JobState::Failed);
    assert_eq!(r.jobs[0].termination_reason, Some(TerminationReason::ImageUnavailable));
    let msg = r.jobs[0].status_message.clone().unwrap_or_default();
    assert!(msg.contains("corral-test/does-not-exist:1"), "message: {msg}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_follow_misses_nothing_across_a_reconnect() -> anyhow::Result<()> {
    let c = OneNode::start().await?;
    let file = write_config(
        c.dir.path(),
        "counter",
        &format!(
            "type: task\nname: counter\nimage: {IMAGE}\ncommands:\n  - for i in 1 2 3 4 5 6; do echo line-$i; sleep 0.3; done\n"
        ),
    );
    apply(&c.client, &file, true).await?;
    // Read part of the stream, drop the connection, and continue from the byte reached.
    let first = wait_for("some output", Duration::from_secs(30), || async {
        let text = logs(&c.client, "counter").await?;
        Ok(text.contains("line-2").then_some(text))
    })
    .await?;
    let resp = c.client.logs("counter", 0, first.len() as u64, true).await?;
    let rest = resp.bytes().await?;
    let all = format!("{first}{}", String::from_utf8_lossy(&rest));
    let want: String = (1..=6).map(|i| format!("line-{i}\n")).collect();
    assert_eq!(all, want);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validate_names_file_line_and_field() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let good = write_config(dir.path(), "good", "type: task\nimage: busybox\ncommands:\n  - echo hi\n");
    let bad = write_config(dir.path(), "bad", "type: task\nimage: busybox\ncomands:\n  - echo hi\n");
    let mut out = Vec::new();
    assert_eq!(corral_cli::commands::validate(std::slice::from_ref(&good), &mut out)?, 0);
    assert_eq!(corral_cli::commands::validate(&[good, bad.clone()], &mut out)?, 1);
    let err =
        corral_proto::config::parse(&std::fs::read_to_string(&bad)?, &bad.display().to_string()).expect_err("refused");
    let text = err.to_string();
    assert!(text.contains("bad.dstack.yml:3:"), "{text}");
    assert!(text.contains("comands") && text.contains("commands"), "{text}");
    // A field the parser takes and a coordinator refuses: named where the file writes it.
    let refused = write_config(
        dir.path(),
        "refused",
        "type: task\nimage: busybox\ncommands:\n  - echo hi\nvolumes:\n  - name: data\n    path: /a\n  - name: other\n    path: /a\n",
    );
    let text = format!("{:#}", corral_cli::commands::validate_file(&refused).expect_err("refused"));
    assert!(
        text.contains(
            "refused.dstack.yml:9:11: volumes[1].path: a coordinator would refuse it: \"/a\" is mounted twice"
        ),
        "{text}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_duration_stops_the_task() -> anyhow::Result<()> {
    let c = OneNode::start().await?;
    let file = write_config(
        c.dir.path(),
        "bounded",
        &format!(
            "type: task\nname: bounded\nimage: {IMAGE}\nmax_duration: 2s\nstop_duration: 2s\ncommands:\n  - echo going\n  - sleep 600\n"
        ),
    );
    let (code, out) = apply(&c.client, &file, false).await?;
    assert_ne!(code, 0, "a task cut short does not succeed");
    assert!(out.contains("going"));
    let r = run(&c.client, "bounded").await?;
    assert_eq!(r.state, JobState::Stopped);
    assert_eq!(r.jobs[0].termination_reason, Some(TerminationReason::MaxDurationExceeded));
    Ok(())
}

/// Each run has a Docker network of its own on a node: another run's container cannot reach it
/// directly (a service is reached only through the coordinator, which checks its `auth`), the
/// host can, and the network goes with the run's last container.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_cannot_reach_each_other_directly() -> anyhow::Result<()> {
    let c = OneNode::start().await?;
    let server = write_config(
        c.dir.path(),
        "server",
        &format!(
            "type: task\nname: server\nimage: {IMAGE}\ncommands:\n  - mkdir -p /www && echo served > /www/index.html\n  - busybox httpd -f -p 8000 -h /www\n"
        ),
    );
    apply(&c.client, &server, true).await?;
    let r = wait_state(&c.client, "server", |r| r.state == JobState::Running, Duration::from_secs(30)).await?;
    let container = format!("corral-{}", r.jobs[0].id);
    let inspect = |format: &str| {
        std::process::Command::new("docker")
            .args(["inspect", "-f", format, &container])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    let network = inspect("{{.HostConfig.NetworkMode}}")?;
    assert_eq!(network, format!("corral-run-{}", r.id), "the run's own network");
    let ip = inspect("{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}")?;
    // The host reaches it (the agent's tunnels come from here).
    let served = wait_for("the server to answer the host", Duration::from_secs(30), || async {
        let body = reqwest::get(format!("http://{ip}:8000/")).await?.text().await?;
        Ok(body.contains("served").then_some(body))
    })
    .await?;
    assert_eq!(served, "served\n");

    let client = write_config(
        c.dir.path(),
        "client",
        &format!(
            "type: task\nname: client\nimage: {IMAGE}\ncommands:\n  - if wget -q -T 3 -O- http://{ip}:8000/; then echo reached; else echo isolated; fi\n"
        ),
    );
    let (code, out) = apply(&c.client, &client, false).await?;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("isolated") && !out.contains("served"), "another run reached the server: {out}");

    corral_cli::commands::stop(&c.client, "server", true, true, &mut Vec::new()).await?;
    wait_for("the run's network removed", Duration::from_secs(60), || async {
        let out = std::process::Command::new("docker").args(["network", "inspect", &network]).output()?;
        Ok((!out.status.success()).then_some(()))
    })
    .await?;
    Ok(())
}

/// `ps -a` shows the newest runs a page at a time, and says so when there may be more; the API
/// pages on from the last run's id (nodes: the last node's id), and refuses a page size or
/// a starting point it cannot use.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_and_nodes_are_listed_a_page_at_a_time() -> anyhow::Result<()> {
    let c = OneNode::start().await?;
    for i in 0..5 {
        let name = format!("paged-{i}");
        let file = write_config(
            c.dir.path(),
            &name,
            &format!("type: task\nname: {name}\nimage: {IMAGE}\ncommands: [echo {i}]\n"),
        );
        let (code, out) = apply(&c.client, &file, false).await?;
        assert_eq!(code, 0, "{out}");
    }
    let mut ps = Vec::new();
    corral_cli::commands::ps(&c.client, true, false, Some(3), &mut ps).await?;
    let ps = String::from_utf8(ps)?;
    for i in 0..5 {
        assert_eq!(ps.contains(&format!("paged-{i}")), i >= 2, "ps -a --limit 3 shows the newest 3: {ps}");
    }
    assert!(ps.contains("(the newest 3 runs; `--limit N` shows up to 1000)"), "{ps}");
    let mut ps = Vec::new();
    corral_cli::commands::ps(&c.client, true, false, None, &mut ps).await?;
    assert!(!String::from_utf8(ps)?.contains("the newest"), "all five fit the default page");

    let runs = c.client.project_api(&["runs"])?;
    let names = |page: &[corral_proto::api::Run]| page.iter().map(|r| r.name.clone()).collect::<Vec<_>>();
    let first: Vec<corral_proto::api::Run> = c.client.get(&format!("{runs}?all=true&limit=2")).await?;
    assert_eq!(names(&first), ["paged-4", "paged-3"]);
    let after = &first[1].id;
    let next: Vec<corral_proto::api::Run> = c.client.get(&format!("{runs}?all=true&limit=2&after={after}")).await?;
    assert_eq!(names(&next), ["paged-2", "paged-1"]);
    let active: Vec<corral_proto::api::Run> = c.client.get(&runs).await?;
    assert!(active.is_empty(), "all ended: {:?}", names(&active));

    for (query, says) in [
        ("limit=0", "limit=0: a page holds 1 to 1000 runs"),
        ("limit=5000", "limit=5000: a page holds 1 to 1000 runs"),
        ("after=nope", "after=nope: no run with that id in project main"),
    ] {
        let e = c.client.get::<Vec<corral_proto::api::Run>>(&format!("{runs}?{query}")).await.expect_err(query);
        assert!(e.to_string().contains(says), "{query}: {e}");
    }

    let page: Vec<corral_proto::api::Node> = c.client.get("/api/nodes?limit=1").await?;
    assert_eq!(page.iter().map(|n| n.name.as_str()).collect::<Vec<_>>(), ["node-a"]);
    let rest: Vec<corral_proto::api::Node> = c.client.get(&format!("/api/nodes?limit=1&after={}", page[0].id)).await?;
    assert!(rest.is_empty());
    let e = c.client.get::<Vec<corral_proto::api::Node>>("/api/nodes?after=ab12").await.expect_err("refused");
    assert!(e.to_string().contains("after=ab12: no node with that id"), "{e}");
    assert_eq!(c.client.nodes().await?.len(), 1);
    let e = c.client.get::<Vec<corral_proto::api::Node>>("/api/nodes?limit=0").await.expect_err("refused");
    assert!(e.to_string().contains("limit=0: a page holds 1 to 1000 nodes"), "{e}");
    Ok(())
}
