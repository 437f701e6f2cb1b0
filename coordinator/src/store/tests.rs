use corral_proto::config::Configuration;
use corral_proto::ids::{JobId, NodeId, RunId};
use corral_proto::job::{JobSpec, JobState};
use corral_proto::resources::Allocation;

use super::{NewRun, Store};

fn task() -> Configuration {
    corral_proto::config::parse("type: task\nimage: busybox\ncommands: [echo hi]\n", "t.dstack.yml")
        .expect("a valid configuration")
}

fn spec(job: &str, run: &str, node: &str) -> JobSpec {
    JobSpec {
        job_id: JobId(job.into()),
        run_id: RunId(run.into()),
        run_name: "train".into(),
        project: "main".into(),
        node_id: NodeId(node.into()),
        image: "busybox".into(),
        commands: vec!["echo hi".into()],
        env: vec![("CORRAL_NODE_RANK".into(), "0".into())],
        working_dir: None,
        allocation: Allocation { cpus: 2, gpu_indices: vec![3], ..Allocation::default() },
        max_duration_secs: Some(60),
        stop_grace_secs: 10,
        host_network: false,
        container: Default::default(),
    }
}

fn insert(store: &Store, run: &str, jobs: &[&str]) {
    let jobs: Vec<JobId> = jobs.iter().map(|j| JobId((*j).into())).collect();
    let stored = store
        .insert_run(&NewRun {
            id: &RunId(run.into()),
            project: "main",
            name: run,
            configuration: &task(),
            source: None,
            jobs: &jobs,
            job_nums: &[],
            replicas: None,
            replacing_service: false,
        })
        .expect("insert");
    assert!(stored);
}

#[test]
fn a_gang_is_assigned_whole_or_not_at_all_with_its_specs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(&dir.path().join("state.db")).expect("open");
    insert(&store, "r1", &["a0", "a1"]);
    insert(&store, "r2", &["b0", "b1"]);
    insert(&store, "r3", &["c0"]);
    // One rank of r2 ends before its gang is written: r2 gets nothing, the others are placed.
    assert!(
        store
            .finish(&JobId("b1".into()), corral_proto::job::TerminationReason::StoppedByUser, None, None)
            .expect("finish")
    );
    let gangs = vec![
        vec![(NodeId("n1".into()), spec("a0", "r1", "n1")), (NodeId("n2".into()), spec("a1", "r1", "n2"))],
        vec![(NodeId("n1".into()), spec("b0", "r2", "n1")), (NodeId("n2".into()), spec("b1", "r2", "n2"))],
        vec![(NodeId("n3".into()), spec("c0", "r3", "n3"))],
    ];
    assert_eq!(store.assign_gangs(&gangs).expect("assign"), vec![true, false, true]);

    let job = |id: &str| store.job(&JobId(id.into())).expect("read").expect("stored");
    for (id, node) in [("a0", "n1"), ("a1", "n2"), ("c0", "n3")] {
        let j = job(id);
        assert_eq!(j.state, JobState::Provisioning, "{id}");
        assert_eq!(j.node_id, Some(NodeId(node.into())));
        assert_eq!(j.spec.as_ref().map(|s| &s.job_id), Some(&JobId(id.into())));
        assert_eq!(j.allocation.map(|a| a.gpu_indices), Some(vec![3]));
    }
    let b0 = job("b0");
    assert_eq!(b0.state, JobState::Submitted);
    assert_eq!((b0.node_id, b0.spec), (None, None));
    // A job that is no longer queued is not assigned again, and its spec stays.
    assert_eq!(
        store.assign_gangs(&[vec![(NodeId("n9".into()), spec("c0", "r3", "n9"))]]).expect("assign"),
        vec![false]
    );
    assert_eq!(job("c0").spec.map(|s| s.node_id), Some(NodeId("n3".into())));
}

#[test]
fn the_database_and_its_wal_are_private_whatever_the_umask() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("corral.db");
    let store = Store::open(&path).expect("open");
    // A write, so that SQLite makes the WAL and its shared-memory index (with the umask of the
    // test process, 022 as a rule: were it copied from there, they would be 0644).
    insert(&store, "r1", &["a0"]);
    for name in ["corral.db", "corral.db-wal", "corral.db-shm"] {
        let meta = std::fs::metadata(dir.path().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(format!("{:o}", meta.permissions().mode() & 0o777), "600", "{name}");
    }
}

#[test]
fn a_revoked_default_join_token_stays_revoked() {
    use super::DefaultToken;
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(&dir.path().join("corral.db")).expect("open");
    let (first, second) = ("a".repeat(64), "b".repeat(64));
    assert_eq!(store.ensure_default_join_token(&first).expect("ensure"), DefaultToken::Valid);
    assert_eq!(store.ensure_default_join_token(&first).expect("again"), DefaultToken::Valid);
    assert_eq!(store.use_join_token(&first).expect("use"), Ok(None), "unlimited, no fleet");
    store.create_join_token(&"c".repeat(64), None, None, None).expect("create");
    let listed = store.join_tokens().expect("list");
    assert_eq!(listed.iter().map(|t| t.default).collect::<Vec<_>>(), [true, false]);
    assert_eq!((listed[0].expires_ms, listed[0].uses_left), (None, None), "never expires, unlimited uses");

    assert_eq!(store.revoke_join_token(&first[..12]).expect("revoke"), 1);
    assert_eq!(store.ensure_default_join_token(&first).expect("after a restart"), DefaultToken::Revoked);
    assert!(store.use_join_token(&first).expect("use").is_err_and(|why| why.contains("revoked")));
    // The token file removed (or the CA made anew): its replacement is revoked from the start.
    assert_eq!(store.ensure_default_join_token(&second).expect("a new file"), DefaultToken::Revoked);
    assert!(store.use_join_token(&second).expect("use").is_err_and(|why| why.contains("revoked")));
    assert_eq!(store.use_join_token(&"c".repeat(64)).expect("use"), Ok(None), "tokens made by hand still work");
}

#[test]
fn runs_are_paged_newest_first_without_gaps_or_repeats() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(&dir.path().join("state.db")).expect("open");
    for i in 0..250 {
        insert(&store, &format!("r{i:03}"), &[&format!("j{i:03}a"), &format!("j{i:03}b")]);
        if i % 2 == 0 {
            for j in [format!("j{i:03}a"), format!("j{i:03}b")] {
                let stopped = corral_proto::job::TerminationReason::StoppedByUser;
                assert!(store.finish(&JobId(j), stopped, None, None).expect("finish"));
            }
        }
    }
    let pages = |all: bool, limit: u32| {
        let mut seen: Vec<Vec<String>> = Vec::new();
        let mut after: Option<RunId> = None;
        loop {
            let page = super::RunPage { project: "main", all, after: after.as_ref(), limit };
            let runs = store.run_page(page).expect("page");
            if runs.is_empty() {
                break;
            }
            assert!(runs.iter().all(|r| r.jobs.len() == 2 && (all || !r.state.is_finished())));
            after = runs.last().map(|r| r.id.clone());
            seen.push(runs.into_iter().map(|r| r.name).collect());
        }
        seen
    };
    let all = pages(true, 100);
    assert_eq!(all.iter().map(Vec::len).collect::<Vec<_>>(), [100, 100, 50]);
    let names: Vec<String> = all.concat();
    let newest_first: Vec<String> = (0..250).rev().map(|i| format!("r{i:03}")).collect();
    assert_eq!(names, newest_first);
    let active = pages(false, 100).concat();
    assert_eq!(
        active,
        newest_first.iter().filter(|n| n[1..].parse::<u32>().is_ok_and(|i| i % 2 == 1)).cloned().collect::<Vec<_>>()
    );
    assert_eq!(pages(true, 7).concat(), newest_first, "any page size");

    let one = store.run_view(&RunId("r001".into())).expect("view").expect("stored");
    assert_eq!((one.state, one.jobs[0].job_num, one.jobs[1].job_num), (JobState::Submitted, 0, 1));
    let done = store.run_view(&RunId("r000".into())).expect("view").expect("stored");
    assert_eq!(done.state, JobState::Stopped);
    assert!(done.finished_at_ms.is_some());
    assert!(store.run_view(&RunId("nope".into())).expect("view").is_none());
}

#[test]
fn nodes_are_paged_by_name_with_what_is_placed_on_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(&dir.path().join("state.db")).expect("open");
    for (id, name) in [("n3", "gpu-c"), ("n1", "gpu-a"), ("n2", "gpu-b")] {
        store.add_node(&NodeId(id.into()), name, None, &format!("fp-{id}")).expect("add");
    }
    insert(&store, "r1", &["a0", "a1"]);
    insert(&store, "r2", &["b0"]);
    let gangs = vec![
        vec![(NodeId("n1".into()), spec("a0", "r1", "n1")), (NodeId("n2".into()), spec("a1", "r1", "n2"))],
        vec![(NodeId("n1".into()), spec("b0", "r2", "n1"))],
    ];
    assert_eq!(store.assign_gangs(&gangs).expect("assign"), vec![true, true]);
    let names = |page: Vec<super::NodeRow>| page.into_iter().map(|n| n.name).collect::<Vec<_>>();
    assert_eq!(names(store.nodes_page(None, 2).expect("page")), ["gpu-a", "gpu-b"]);
    assert_eq!(names(store.nodes_page(Some(&NodeId("n2".into())), 2).expect("page")), ["gpu-c"]);
    // A name may repeat (two hosts of one hostname racing to enroll): ties go by id, none skipped.
    store.add_node(&NodeId("n0".into()), "gpu-b", None, "fp-n0").expect("add");
    assert_eq!(names(store.nodes_page(Some(&NodeId("n1".into())), 1).expect("page")), ["gpu-b"]);
    let after_n0 = store.nodes_page(Some(&NodeId("n0".into())), 1).expect("page");
    assert_eq!(after_n0.iter().map(|n| n.id.0.as_str()).collect::<Vec<_>>(), ["n2"], "the other gpu-b");
    let loads = store.node_loads(None).expect("loads");
    let n1 = &loads[&NodeId("n1".into())];
    assert_eq!((n1.jobs, n1.gpus.clone()), (2, vec![3, 3]));
    assert!(!loads.contains_key(&NodeId("n3".into())));
    let some = store.node_loads(Some(&[NodeId("n2".into())])).expect("loads");
    assert_eq!(some.keys().collect::<Vec<_>>(), [&NodeId("n2".into())]);
    // The run view names each job's node.
    let run = store.run_view(&RunId("r1".into())).expect("view").expect("stored");
    let nodes: Vec<_> = run.jobs.iter().map(|j| j.node_name.as_deref()).collect();
    assert_eq!(nodes, [Some("gpu-a"), Some("gpu-b")]);
    assert_eq!(run.jobs[0].image.as_deref(), Some("busybox"));
}

/// The SQL state lists are exactly the `JobState`s they name: every state in one of queued, placed
/// or finished; active is queued and placed.
#[test]
fn the_state_lists_are_the_job_states() {
    use corral_proto::job::JobState::*;
    let list = |sql: &str| -> Vec<String> {
        sql.trim_matches(|c| c == '(' || c == ')').split(", ").map(|s| s.trim_matches('\'').to_owned()).collect()
    };
    let (queued, placed) = (list(super::queued_states!()), list(super::placed_states!()));
    let (active, finished) = (list(super::active_states!()), list(super::finished_states!()));
    for state in [Submitted, Pending, Provisioning, Pulling, Running, Terminating, Done, Failed, Stopped, Aborted] {
        let name = state.as_str().to_owned();
        let is_queued = matches!(state, Submitted | Pending);
        assert_eq!(queued.contains(&name), is_queued, "{name}");
        assert_eq!(placed.contains(&name), !is_queued && !state.is_finished(), "{name}");
        assert_eq!(active.contains(&name), !state.is_finished(), "{name}");
        assert_eq!(finished.contains(&name), state.is_finished(), "{name}");
    }
    assert_eq!(queued.len() + placed.len() + finished.len(), 10);
    assert_eq!(active, [queued, placed].concat());
}

/// Holds the writer thread until the returned sender is dropped or sent to: what a long write (a
/// scheduling pass's assignments) does.
fn hold_writer(store: &std::sync::Arc<Store>) -> (std::sync::mpsc::Sender<()>, std::thread::JoinHandle<()>) {
    let (release, held) = std::sync::mpsc::channel::<()>();
    let (started, running) = std::sync::mpsc::channel::<()>();
    let holder = store.clone();
    let thread = std::thread::spawn(move || {
        holder
            .write(move |_| {
                let _ = started.send(());
                let _ = held.recv();
                Ok(())
            })
            .expect("the holding write");
    });
    running.recv_timeout(std::time::Duration::from_secs(10)).expect("the writer took the holding write");
    (release, thread)
}

/// Waits (with a deadline) until `n` writes have been handed to the writer thread.
fn wait_sent(store: &Store, n: u64) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while store.writer.sent() < n {
        assert!(std::time::Instant::now() < deadline, "only {} of {n} writes reached the writer", store.writer.sent());
        std::thread::yield_now();
    }
}

/// Reads go to the read-only connections: they see every committed write, and they answer while
/// the writer is busy (as a scheduling pass's long transaction keeps it).
#[test]
fn reads_answer_while_the_writer_is_busy() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = std::sync::Arc::new(Store::open(&dir.path().join("state.db")).expect("open"));
    assert!(store.create_project("vision", None).expect("create"));
    let (release, holder) = hold_writer(&store);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::scope(|s| {
        s.spawn(|| {
            // Eight at once: more than there are readers, so some wait for a reader, not the writer.
            std::thread::scope(|inner| {
                for _ in 0..8 {
                    inner.spawn(|| tx.send(store.project_exists("vision").expect("read")).expect("send"));
                }
            });
        });
        let seen: Vec<bool> = (0..8)
            .map(|_| rx.recv_timeout(std::time::Duration::from_secs(10)).expect("a read waited for the writer"))
            .collect();
        assert_eq!(seen, [true; 8]);
    });
    drop(release);
    holder.join().expect("the holder");
    // A reader cannot write, should a method ever try.
    let reader = store.read();
    let err = reader.execute("DELETE FROM projects", []).expect_err("query_only");
    assert!(err.to_string().contains("readonly") || err.to_string().contains("read-only"), "{err}");
}

/// Writes that arrive while the writer is busy share the next transaction, and a write that fails
/// in it is undone alone: the others stand, and each caller gets its own answer.
#[test]
fn waiting_writes_commit_together_and_a_failure_is_undone_alone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = std::sync::Arc::new(Store::open(&dir.path().join("state.db")).expect("open"));
    store.add_node(&NodeId("n-taken".into()), "taken", None, "fp").expect("a first node");
    let before = store.writer.sent();
    let (release, holder) = hold_writer(&store);
    let writers: Vec<_> = (0..40)
        .map(|i| {
            let store = store.clone();
            std::thread::spawn(move || {
                // Every tenth reuses a node id: the primary key refuses it.
                let id = if i % 10 == 0 { "n-taken".to_owned() } else { format!("n-{i}") };
                store.add_node(&NodeId(id), &format!("node-{i}"), None, &format!("fp-{i}"))
            })
        })
        .collect();
    wait_sent(&store, before + 1 + 40);
    let (writes_before, commits_before) = store.write_stats();
    drop(release);
    holder.join().expect("the holder");
    let answers: Vec<bool> = writers.into_iter().map(|w| w.join().expect("a writer").is_ok()).collect();
    let (writes, commits) = store.write_stats();
    // The holding write's transaction, then one for all forty.
    assert_eq!((writes - writes_before, commits - commits_before), (41, 2));
    for (i, ok) in answers.iter().enumerate() {
        assert_eq!(*ok, i % 10 != 0, "write {i}");
        let stored = store.node(&NodeId(format!("n-{i}"))).expect("read");
        assert_eq!(stored.is_some(), i % 10 != 0, "node {i}");
    }
    assert_eq!(store.node(&NodeId("n-taken".into())).expect("read").map(|n| n.name), Some("taken".to_owned()));
}

/// A write that panics is undone and its caller hears an error; the writer goes on.
#[test]
fn a_write_that_panics_is_undone_and_the_writer_goes_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(&dir.path().join("state.db")).expect("open");
    let err = store
        .write(|conn| -> super::Result<()> {
            conn.execute("INSERT INTO projects (name, created_ms) VALUES ('half', 0)", [])?;
            panic!("a bug in a write");
        })
        .expect_err("the panic is an error");
    assert!(matches!(err, super::StoreError::WriteLost), "{err}");
    assert!(!store.project_exists("half").expect("read"), "the panicked write was undone");
    assert!(store.create_project("after", None).expect("the writer goes on"));
    assert!(store.project_exists("after").expect("read"));
}
