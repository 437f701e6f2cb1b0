//! Images without a registry: `corral image push` stores an image in the coordinator, and a node
//! that lacks it loads it from there over its QUIC link. No registry is reachable on this machine,
//! so a job that runs the image proves it came from the coordinator. An image belongs to a project
//! (or, `--shared`, to all): another project's runs do not find it, on the node either.

use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail};

use corral_proto::api;
use corral_proto::job::JobState;

use crate::harness::{IMAGE, OneNode, apply, wait_state, write_config};

const CLI: &str = env!("CARGO_BIN_EXE_corral-test-cli");

fn docker(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("docker").args(args).output().context("cannot run docker")?;
    if !out.status.success() {
        bail!("docker {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Removes the test's images from the local Docker, also when the test fails.
struct Images(Vec<String>);

impl Drop for Images {
    fn drop(&mut self) {
        for i in &self.0 {
            let _ = Command::new("docker").args(["rmi", "-f", i]).output();
        }
    }
}

/// Docker's id of an image: the SHA-256 of its config, in hex.
fn image_id(name: &str) -> anyhow::Result<String> {
    let id = docker(&["image", "inspect", "--format", "{{.Id}}", name])?;
    Ok(id.trim().trim_start_matches("sha256:").to_owned())
}

/// A small image of its own (the test image plus a marker file), built locally.
fn build_image(name: &str, marker: &str) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    std::fs::write(dir.path().join("marker"), marker)?;
    std::fs::write(dir.path().join("Dockerfile"), format!("FROM {IMAGE}\nCOPY marker /marker\n"))?;
    let out = Command::new("docker")
        .args(["build", "-q", "-t", name])
        .arg(dir.path())
        .env("DOCKER_BUILDKIT", "0")
        .output()?;
    if !out.status.success() {
        bail!("docker build: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pushed_image_runs_on_a_node_that_never_had_it() -> anyhow::Result<()> {
    let c = OneNode::start().await?;
    let pid = std::process::id();
    let (name, other) = (format!("corral-test/pushed-{pid}:1"), format!("corral-test/pushed-file-{pid}"));
    build_image(&name, "from the coordinator's store")?;
    build_image(&other, "pushed as a tarball")?;
    // A node keeps a project's image by its config's digest, which is Docker's id of it.
    let loaded = format!("corral.local/main/{}:latest", image_id(&name)?);
    let _cleanup = Images(vec![name.clone(), format!("{other}:latest"), loaded.clone()]);
    let cli_as = |token: &str, project: &str, args: &[&str]| {
        Command::new(CLI)
            .args(args)
            .env("CORRAL_URL", c.coord.url())
            .env("CORRAL_TOKEN", token)
            .env("CORRAL_PROJECT", project)
            .env("CORRAL_CONFIG", c.dir.path().join("cli.json"))
            .output()
    };
    let cli = |args: &[&str]| cli_as(&c.coord.admin_token, "main", args);

    // Straight from the local Docker, and from a `docker save` file, into project main.
    let out = cli(&["image", "push", &name])?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(text.contains(&format!("pushed {name} for project main (")), "{text}");
    let tar = c.dir.path().join("other.tar");
    docker(&["save", "-o", tar.to_str().context("utf-8 path")?, &other])?;
    let out = cli(&["image", "push", "--file", tar.to_str().context("utf-8 path")?])?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let images: Vec<api::ImageInfo> = c.client.get("/api/projects/main/images").await?;
    let names: Vec<(&str, Option<&str>)> = images.iter().map(|i| (i.name.as_str(), i.project.as_deref())).collect();
    for n in [name.clone(), format!("{other}:latest")] {
        assert!(names.contains(&(n.as_str(), Some("main"))), "{names:?}");
    }
    let shared: Vec<api::ImageInfo> = c.client.get("/api/images").await?;
    assert!(shared.is_empty(), "a project's images are not shared: {shared:?}");
    // The two share the test image's layer: stored once.
    let blobs = std::fs::read_dir(c.coord.data.join("images/blobs"))?.count();
    let layers: u32 = images.iter().map(|i| i.layers).sum();
    assert!(blobs < layers as usize + images.len(), "{blobs} blobs for {layers} layers + {} configs", images.len());

    // The node's Docker no longer has it, and no registry is reachable: only the coordinator can
    // give it. The node loads it under the project's name for it.
    docker(&["rmi", "-f", &name])?;
    let config = format!("type: task\nname: pushed\nimage: {name}\ncommands:\n  - cat /marker; echo\n");
    let file = write_config(c.dir.path(), "pushed", &config);
    let (code, out) = apply(&c.client, &file, false).await?;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("from the coordinator's store"), "{out}");
    let run = wait_state(&c.client, "pushed", |r| r.state == JobState::Done, Duration::from_secs(10)).await?;
    let message = run.jobs[0].status_message.clone().unwrap_or_default();
    assert!(message.contains("loaded the image from the coordinator"), "{message}");
    assert_eq!(run.jobs[0].image.as_deref(), Some(name.as_str()), "the run shows the name it was given");
    docker(&["image", "inspect", &loaded]).context("the node's copy is the project's")?;
    assert!(docker(&["image", "inspect", &name]).is_err(), "and not under the plain name");

    // Another project's run of the same name finds nothing: not in its store, not on the node.
    let made: api::UserToken =
        c.client.post("/api/users", &api::CreateUser { name: "rita".into(), role: Default::default() }).await?;
    let out = cli_as(&made.token, "main", &["project", "create", "research"])?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let rita = corral_cli::client::Client::new(&c.coord.url(), &made.token, "research");
    let listed: Vec<api::ImageInfo> = rita.get("/api/projects/research/images").await?;
    assert!(listed.is_empty(), "{listed:?}");
    let file = write_config(c.dir.path(), "elsewhere", &config.replace("name: pushed", "name: elsewhere"));
    let (code, _) = apply(&rita, &file, false).await?;
    assert_ne!(code, 0);
    let run = wait_state(&rita, "elsewhere", |r| r.state.is_finished(), Duration::from_secs(30)).await?;
    let message = run.jobs[0].status_message.clone().unwrap_or_default();
    assert!(message.contains("could not be pulled"), "{message}");
    // Nor may its member push or remove main's images.
    let out = cli_as(&made.token, "main", &["image", "rm", &name])?;
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a member of project main"), "{out:?}");

    // Shared by a global admin, it serves every project.
    docker(&["rmi", "-f", &format!("{other}:latest")])?;
    let out = cli(&["image", "push", "--shared", "--file", tar.to_str().context("utf-8 path")?])?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(text.contains(&format!("pushed {other}:latest for every project (")), "{text}");
    let out =
        cli_as(&made.token, "research", &["image", "push", "--shared", "--file", tar.to_str().context("utf-8 path")?])?;
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("image.push"), "{out:?}");
    let out = cli_as(&made.token, "research", &["image", "list"])?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&format!("{other}:latest")) && text.contains("(shared)"), "{text}");
    let shared_config = format!("type: task\nname: shared\nimage: {other}\ncommands:\n  - cat /marker; echo\n");
    let file = write_config(c.dir.path(), "shared", &shared_config);
    let (code, out) = apply(&rita, &file, false).await?;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("pushed as a tarball"), "{out}");

    // An image neither here nor in the store: a registry pull, which fails here, and says so.
    let file = write_config(
        c.dir.path(),
        "absent",
        &format!("type: task\nname: absent\nimage: corral-test/never-pushed-{pid}\ncommands:\n  - echo never\n"),
    );
    let (code, _) = apply(&c.client, &file, false).await?;
    assert_ne!(code, 0);
    let run = wait_state(&c.client, "absent", |r| r.state.is_finished(), Duration::from_secs(30)).await?;
    let message = run.jobs[0].status_message.clone().unwrap_or_default();
    assert!(message.contains("could not be pulled"), "{message}");

    // A project's images go with it, and the layers no other image uses.
    let own = format!("corral-test/pushed-research-{pid}:1");
    let _own_cleanup = Images(vec![own.clone()]);
    build_image(&own, "research's own")?;
    // A run cannot name another project's image as nodes keep it.
    let file =
        write_config(c.dir.path(), "borrow", &config.replace("name: pushed", "name: borrow").replace(&name, &loaded));
    let e = apply(&rita, &file, false).await.expect_err("refused");
    assert!(e.to_string().contains("names an image as the coordinator hands it to nodes"), "{e:#}");
    let blobs = || std::fs::read_dir(c.coord.data.join("images/blobs")).map(|d| d.count());
    let before = blobs()?;
    let out = cli_as(&made.token, "research", &["image", "push", &own])?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(blobs()?, before + 2, "its config and its top layer are new");
    let out = cli_as(&made.token, "research", &["project", "delete", "-y", "research"])?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(blobs()?, before, "what only research's image used is gone");

    // rm forgets it; a file that is not a `docker save` tar is refused by name.
    let out = cli(&["image", "rm", &name])?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let images: Vec<api::ImageInfo> = c.client.get("/api/projects/main/images").await?;
    assert!(images.iter().all(|i| i.name != name));
    std::fs::write(c.dir.path().join("junk.tar"), "junk")?;
    let out = cli(&["image", "push", "--file", c.dir.path().join("junk.tar").to_str().context("utf-8 path")?])?;
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not a `docker save` tar"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_mirror_is_tried_first_and_named_when_it_fails() -> anyhow::Result<()> {
    use crate::harness::{Agent, AgentOptions, Coordinator, nodes_ready};
    crate::harness::ensure_image();
    let dir = tempfile::tempdir()?;
    let coord = Coordinator::start(&dir.path().join("coord")).await?;
    let _agent = Agent::start(
        &coord,
        &dir.path().join("agent"),
        AgentOptions { name: "mirrored".into(), registry_mirror: Some("127.0.0.1:9".into()), ..Default::default() },
    );
    let client = coord.client();
    nodes_ready(&client, 1).await?;

    // An image the node has runs without asking anyone.
    let file = write_config(
        dir.path(),
        "here",
        &format!("type: task\nname: here\nimage: {IMAGE}\ncommands:\n  - echo local\n"),
    );
    let (code, out) = apply(&client, &file, false).await?;
    assert_eq!(code, 0, "{out}");

    // One nobody has: the mirror first (a Docker Hub name maps onto it), then the registry, both said.
    let missing = format!("corral-test/mirror-absent-{}", std::process::id());
    let file = write_config(
        dir.path(),
        "absent",
        &format!("type: task\nname: absent\nimage: {missing}\ncommands:\n  - echo never\n"),
    );
    let (code, _) = apply(&client, &file, false).await?;
    assert_ne!(code, 0);
    let run = wait_state(&client, "absent", |r| r.state.is_finished(), Duration::from_secs(60)).await?;
    let message = run.jobs[0].status_message.clone().unwrap_or_default();
    assert!(message.contains(&format!("from the mirror (127.0.0.1:9/{missing}): ")), "{message}");
    assert!(message.contains("; from the registry: "), "{message}");
    Ok(())
}
