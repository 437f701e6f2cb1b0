//! A run's `repos` and `files` through the whole path: the CLI packs and uploads them, the
//! coordinator keeps them by digest, the agent fetches (or clones) them and puts them into the
//! container before its commands run.

use std::path::Path;
use std::process::Command;

use corral_proto::config::{self, Configuration};
use corral_proto::job::{JobState, TerminationReason};

use crate::harness::*;

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["-c", "user.name=t", "-c", "user.email=t@t", "-c", "init.defaultBranch=main"])
        .args(args)
        .output()
        .expect("git runs (the tests need git)");
    assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn parsed(file: &Path) -> Configuration {
    let text = std::fs::read_to_string(file).expect("reads");
    config::parse(&text, "t.yml").expect("parses")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_repo_arrives_as_git_sees_it_and_is_sent_once() -> anyhow::Result<()> {
    let c = OneNode::start().await?;
    let repo = c.dir.path().join("project");
    std::fs::create_dir_all(repo.join("src"))?;
    git(&repo, &["init", "-q"]);
    std::fs::write(repo.join(".gitignore"), "*.log\n")?;
    std::fs::write(repo.join("src/tracked.txt"), "tracked bytes\n")?;
    git(&repo, &["add", "."]);
    git(&repo, &["commit", "-qm", "first"]);
    std::fs::write(repo.join("untracked.txt"), "untracked bytes\n")?;
    std::fs::write(repo.join("secret.log"), "ignored bytes\n")?;
    // No working_dir, and the image sets none: the repo lands at /workflow, where commands start.
    let file = write_config(
        &repo,
        "repo",
        &format!(
            "type: task\nname: repo\nimage: {IMAGE}\nrepos: [.]\ncommands:\n  - pwd\n  - cat src/tracked.txt untracked.txt\n  - test -e secret.log && echo LEAKED || echo no ignored file\n"
        ),
    );
    let (code, out) = apply(&c.client, &file, false).await?;
    assert_eq!(code, 0, "output: {out}");
    assert!(out.contains("/workflow\ntracked bytes\nuntracked bytes\nno ignored file\n"), "output: {out:?}");
    assert!(logs(&c.client, "repo").await?.contains("untracked bytes\n"));

    // The coordinator keeps it by digest; applying again sends nothing.
    let uploads = c.dir.path().join("coord/uploads");
    let stored: Vec<_> =
        std::fs::read_dir(&uploads)?.flatten().filter(|e| e.file_name().len() == 64).map(|e| e.path()).collect();
    assert_eq!(stored.len(), 1, "one upload: {stored:?}");
    let written = std::fs::metadata(&stored[0])?.modified()?;
    let mut cfg = parsed(&file);
    let said = corral_cli::uploads::upload(&c.client, &file, &mut cfg).await?;
    assert_eq!(said.len(), 1);
    assert!(
        said[0].starts_with("repos[0] (.): 4 files,") && said[0].ends_with("already on the coordinator"),
        "{said:?}"
    );
    let (code, out) = apply(&c.client, &file, false).await?;
    assert_eq!(code, 0, "output: {out}");
    assert_eq!(std::fs::metadata(&stored[0])?.modified()?, written, "not written again");
    assert_eq!(std::fs::read_dir(&uploads)?.flatten().filter(|e| e.file_name().len() == 64).count(), 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_and_directories_land_at_their_paths() -> anyhow::Result<()> {
    let c = OneNode::start().await?;
    let d = c.dir.path().join("work");
    std::fs::create_dir_all(d.join("conf/nested"))?;
    std::fs::write(d.join("app.yml"), "key: value\n")?;
    std::fs::write(d.join("conf/nested/deep.txt"), "deep\n")?;
    std::fs::write(d.join("token"), "t0k3n\n")?;
    let file = write_config(
        &d,
        "files",
        &format!(
            "type: task\nname: files\nimage: {IMAGE}\nworking_dir: /opt/w\nfiles:\n  - app.yml:/etc/app/app.yml\n  - conf\n  - local_path: token\n    path: ~/.token\ncommands:\n  - cat /etc/app/app.yml\n  - cat /opt/w/conf/nested/deep.txt\n  - cat /root/.token\n"
        ),
    );
    let (code, out) = apply(&c.client, &file, false).await?;
    assert_eq!(code, 0, "output: {out}");
    assert!(out.contains("key: value\ndeep\nt0k3n\n"), "output: {out:?}");

    // Run as another user, what is put there is that user's (as dstack's runner chowns it).
    let file = write_config(
        &d,
        "owned",
        &format!(
            "type: task\nname: owned\nimage: {IMAGE}\nuser: \"1000:1000\"\nworking_dir: /tmp/w\nfiles: [app.yml]\ncommands:\n  - stat -c '%u:%g %n' /tmp/w/app.yml\n  - echo more >> /tmp/w/app.yml && echo writable\n"
        ),
    );
    let (code, out) = apply(&c.client, &file, false).await?;
    assert_eq!(code, 0, "output: {out}");
    assert!(out.contains("1000:1000 /tmp/w/app.yml\nwritable\n"), "output: {out:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn if_exists_fails_or_keeps_what_the_image_has() -> anyhow::Result<()> {
    let c = OneNode::start().await?;
    let d = c.dir.path().join("code");
    std::fs::create_dir_all(&d)?;
    std::fs::write(d.join("mine.txt"), "mine\n")?;
    // /bin holds the image's busybox applets: not empty.
    let file = write_config(
        &d,
        "exists",
        &format!("type: task\nname: exists\nimage: {IMAGE}\nrepos: [\".:/bin\"]\ncommands:\n  - echo never\n"),
    );
    let (code, out) = apply(&c.client, &file, false).await?;
    assert_ne!(code, 0, "output: {out}");
    assert!(!out.contains("never"));
    let r = run(&c.client, "exists").await?;
    assert_eq!(r.state, JobState::Failed);
    assert_eq!(r.jobs[0].termination_reason, Some(TerminationReason::ContainerCreationFailed));
    let message = r.jobs[0].status_message.clone().unwrap_or_default();
    assert!(message.contains("/bin already exists in the container and is not empty (if_exists: error)"), "{message}");

    let file = write_config(
        &d,
        "skips",
        &format!(
            "type: task\nname: skips\nimage: {IMAGE}\nrepos:\n  - local_path: .\n    path: /bin\n    if_exists: skip\ncommands:\n  - test -e /bin/mine.txt && echo REPLACED || echo kept the image /bin\n"
        ),
    );
    let (code, out) = apply(&c.client, &file, false).await?;
    assert_eq!(code, 0, "output: {out}");
    assert!(out.contains("kept the image /bin\n"), "output: {out:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_past_the_limit_is_refused_before_it_is_sent() -> anyhow::Result<()> {
    let c = OneNode::start().await?;
    let d = c.dir.path().join("big");
    std::fs::create_dir_all(&d)?;
    // Sparse: it takes no disk, and is refused on its size.
    std::fs::File::create(d.join("weights.bin"))?.set_len(config::limits::MAX_UPLOAD_BYTES + 1)?;
    let file = write_config(
        &d,
        "big",
        &format!("type: task\nname: big\nimage: {IMAGE}\nfiles: [\"weights.bin:/w.bin\"]\ncommands: [\"true\"]\n"),
    );
    let e = apply(&c.client, &file, true).await.expect_err("refused").to_string();
    assert!(e.starts_with("files[0] (weights.bin): 2.0 GiB to upload, more than the limit of 2 GiB"), "message: {e}");
    assert!(run(&c.client, "big").await.is_err(), "nothing was submitted");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repo_by_url_is_cloned_on_the_node() -> anyhow::Result<()> {
    let c = OneNode::start().await?;
    let work = c.dir.path().join("src");
    std::fs::create_dir_all(&work)?;
    git(&work, &["init", "-q"]);
    std::fs::write(work.join("version.txt"), "one\n")?;
    git(&work, &["add", "."]);
    git(&work, &["commit", "-qm", "one"]);
    let first = git(&work, &["rev-parse", "HEAD"]);
    std::fs::write(work.join("version.txt"), "two\n")?;
    git(&work, &["commit", "-qam", "two"]);
    let bare = c.dir.path().join("served.git");
    git(c.dir.path(), &["clone", "-q", "--bare", &work.to_string_lossy(), &bare.to_string_lossy()]);
    let url = format!("file://{}", bare.display());
    let file = write_config(
        c.dir.path(),
        "cloned",
        &format!(
            "type: task\nname: cloned\nimage: {IMAGE}\nworking_dir: /w\nrepos:\n  - url: {url}\n    branch: main\n    path: repo\ncommands:\n  - cat /w/repo/version.txt\n  - test -d /w/repo/.git && echo with its history\n"
        ),
    );
    let (code, out) = apply(&c.client, &file, false).await?;
    assert_eq!(code, 0, "output: {out}");
    assert!(out.contains("two\nwith its history\n"), "output: {out:?}");

    let file = write_config(
        c.dir.path(),
        "pinned",
        &format!(
            "type: task\nname: pinned\nimage: {IMAGE}\nrepos:\n  - url: {url}\n    hash: {first}\n    path: /r\ncommands:\n  - cat /r/version.txt\n"
        ),
    );
    let (code, out) = apply(&c.client, &file, false).await?;
    assert_eq!(code, 0, "output: {out}");
    assert!(out.contains("one\n"), "output: {out:?}");

    // A clone that fails names the URL, never its credentials.
    let file = write_config(
        c.dir.path(),
        "noclone",
        &format!(
            "type: task\nname: noclone\nimage: {IMAGE}\nrepos:\n  - url: \"https://user:hunter2@127.0.0.1:9/none.git\"\ncommands: [\"true\"]\n"
        ),
    );
    let (code, _) = apply(&c.client, &file, false).await?;
    assert_ne!(code, 0);
    let r = run(&c.client, "noclone").await?;
    let message = r.jobs[0].status_message.clone().unwrap_or_default();
    assert!(message.contains("cannot clone https://***@127.0.0.1:9/none.git"), "{message}");
    assert!(!message.contains("hunter2"), "{message}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_coordinator_keeps_only_whole_uploads_and_runs_only_stored_ones() -> anyhow::Result<()> {
    let c = OneNode::start().await?;
    // A body whose digest is not the one named is not kept.
    let named = "ab".repeat(32);
    let path = format!("/api/uploads/{named}");
    let e = c
        .client
        .put_body::<corral_proto::api::StoredUpload>(&path, reqwest::Body::from(&b"some bytes"[..]), 10)
        .await
        .expect_err("refused")
        .to_string();
    assert!(e.contains(&format!("not {named}: it changed or was damaged on the way")), "{e}");
    let missing: corral_proto::api::MissingUploads =
        c.client.post("/api/uploads/check", &corral_proto::api::CheckUploads { sha256: vec![named.clone()] }).await?;
    assert_eq!(missing.missing, vec![named.clone()]);
    let kept: Vec<_> =
        std::fs::read_dir(c.dir.path().join("coord/uploads"))?.flatten().map(|e| e.file_name()).collect();
    assert_eq!(kept, ["tmp"], "nothing kept");
    assert_eq!(std::fs::read_dir(c.dir.path().join("coord/uploads/tmp"))?.count(), 0, "the partial upload is gone");

    // A client that names no upload, or one the store lacks, is refused at submission.
    let text = format!("type: task\nname: raw\nimage: {IMAGE}\nfiles: [a.txt]\ncommands: [\"true\"]\n");
    let Configuration::Task(mut task) = config::parse(&text, "raw.yml").expect("parses") else { panic!("a task") };
    let submit = |t: &corral_proto::config::TaskConfig| corral_proto::api::SubmitRun {
        configuration: Configuration::Task(t.clone()),
        source: None,
        name: None,
    };
    let runs = c.client.project_api(&["runs"])?;
    let e = c.client.post::<_, corral_proto::api::Run>(&runs, &submit(&task)).await.expect_err("refused");
    assert!(e.to_string().starts_with("files[0] (a.txt): not uploaded"), "{e}");
    task.files[0].upload = Some(config::UploadRef { sha256: named.clone(), size: 10 });
    let e = c.client.post::<_, corral_proto::api::Run>(&runs, &submit(&task)).await.expect_err("refused");
    assert!(e.to_string().contains(&format!("the coordinator has no upload {named}")), "{e}");
    assert!(run(&c.client, "raw").await.is_err(), "nothing was stored");
    Ok(())
}
