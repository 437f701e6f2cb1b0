//! What a job's commands see and leave behind: output, exit code, environment, directory, GPUs.

use corral_proto::resources::Allocation;
use corral_shim::{GpuPassthrough, RunOptions};

use crate::{job, logs, shim, wait};

#[tokio::test]
async fn stdout_and_stderr_are_both_in_the_logs() -> anyhow::Result<()> {
    let shim = shim()?;
    let (spec, _cleanup) = job("logs", &["echo hello", "echo world 1>&2"]);
    let id = shim.create_and_start(&spec, &RunOptions::default()).await?;

    assert_eq!(wait(&shim, &id).await?, 0);
    let text = logs(&shim, &id).await?;
    assert!(text.contains("hello\n") && text.contains("world\n"), "logs: {text:?}");
    Ok(())
}

#[tokio::test]
async fn logs_follow_a_running_container_until_it_exits() -> anyhow::Result<()> {
    let shim = shim()?;
    let (spec, _cleanup) = job("follow", &["echo start", "sleep 1", "echo end"]);
    let id = shim.create_and_start(&spec, &RunOptions::default()).await?;

    // Read while it runs: the stream must not end before "end" is written.
    let text = logs(&shim, &id).await?;
    assert!(text.contains("start\n") && text.contains("end\n"), "logs: {text:?}");
    assert_eq!(wait(&shim, &id).await?, 0);
    Ok(())
}

#[tokio::test]
async fn a_last_line_without_a_newline_is_not_lost() -> anyhow::Result<()> {
    // Docker's follow can end before such a line is in the log (the shim reads it back).
    let shim = shim()?;
    let (spec, _cleanup) = job("partial", &["echo first", "sleep 1", "printf 'no newline'"]);
    let id = shim.create_and_start(&spec, &RunOptions::default()).await?;
    let text = logs(&shim, &id).await?;
    assert_eq!(text, "first\nno newline");
    assert_eq!(wait(&shim, &id).await?, 0);
    Ok(())
}

#[tokio::test]
async fn the_first_failing_command_ends_the_job_with_its_code() -> anyhow::Result<()> {
    let shim = shim()?;
    let (spec, _cleanup) = job("exit", &["echo a", "exit 3", "echo never"]);
    let id = shim.create_and_start(&spec, &RunOptions::default()).await?;

    assert_eq!(wait(&shim, &id).await?, 3);
    let text = logs(&shim, &id).await?;
    assert!(text.contains("a\n"), "logs: {text:?}");
    assert!(!text.contains("never"), "logs: {text:?}");

    let state = shim.inspect_state(&id).await?;
    assert!(!state.running);
    assert_eq!(state.exit_code, Some(3));
    assert!(state.started_at_unix.is_some_and(|t| t > 1_600_000_000), "{state:?}");
    Ok(())
}

#[tokio::test]
async fn a_failing_command_stops_the_script_without_exit() -> anyhow::Result<()> {
    let shim = shim()?;
    let (spec, _cleanup) = job("false", &["echo a", "cat /does/not/exist", "echo never"]);
    let id = shim.create_and_start(&spec, &RunOptions::default()).await?;

    assert_eq!(wait(&shim, &id).await?, 1);
    assert!(!logs(&shim, &id).await?.contains("never"));
    Ok(())
}

#[tokio::test]
async fn the_job_environment_reaches_the_commands() -> anyhow::Result<()> {
    let shim = shim()?;
    let (mut spec, _cleanup) = job("env", &["env"]);
    spec.env = vec![("GREETING".to_owned(), "hello there".to_owned()), ("EMPTY".to_owned(), String::new())];
    let id = shim.create_and_start(&spec, &RunOptions::default()).await?;

    assert_eq!(wait(&shim, &id).await?, 0);
    let text = logs(&shim, &id).await?;
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines.contains(&"GREETING=hello there"), "env: {text}");
    assert!(lines.contains(&"EMPTY="), "env: {text}");
    assert!(!text.contains("CUDA_VISIBLE_DEVICES"), "no GPUs were allocated: {text}");
    Ok(())
}

#[tokio::test]
async fn commands_run_in_the_working_dir() -> anyhow::Result<()> {
    let shim = shim()?;
    let (mut spec, _cleanup) = job("workdir", &["pwd"]);
    spec.working_dir = Some("/srv/job".to_owned());
    let id = shim.create_and_start(&spec, &RunOptions::default()).await?;

    assert_eq!(wait(&shim, &id).await?, 0);
    assert_eq!(logs(&shim, &id).await?.trim(), "/srv/job");
    Ok(())
}

#[tokio::test]
async fn allocated_gpus_are_visible_through_the_environment() -> anyhow::Result<()> {
    let shim = shim()?;
    let (mut spec, _cleanup) = job("gpus", &["echo \"cuda=$CUDA_VISIBLE_DEVICES nvidia=$NVIDIA_VISIBLE_DEVICES\""]);
    spec.allocation = Allocation { gpu_indices: vec![0, 1], ..Allocation::default() };
    // A user's own value must not widen what the allocation grants.
    spec.env = vec![("CUDA_VISIBLE_DEVICES".to_owned(), "0,1,2,3".to_owned())];
    let opts = RunOptions { gpu_passthrough: GpuPassthrough::EnvOnly };
    let id = shim.create_and_start(&spec, &opts).await?;

    assert_eq!(wait(&shim, &id).await?, 0);
    assert_eq!(logs(&shim, &id).await?.trim(), "cuda=0,1 nvidia=0,1");
    Ok(())
}

#[tokio::test]
async fn cpu_and_memory_limits_are_applied() -> anyhow::Result<()> {
    let shim = shim()?;
    let (mut spec, _cleanup) = job(
        "limits",
        &["cat /sys/fs/cgroup/memory.max 2>/dev/null || cat /sys/fs/cgroup/memory/memory.limit_in_bytes"],
    );
    spec.allocation = Allocation { cpus: 1, memory: corral_proto::resources::Memory::gb(1), ..Allocation::default() };
    let id = shim.create_and_start(&spec, &RunOptions::default()).await?;

    assert_eq!(wait(&shim, &id).await?, 0);
    assert_eq!(logs(&shim, &id).await?.trim(), (1u64 << 30).to_string());
    Ok(())
}
