//! `corral exec RUN -- CMD...`: runs a command in a run's container through the coordinator and
//! the agent's own connection, with its output here and its exit code as ours.

use std::io::Write;

use tokio::io::{AsyncRead, AsyncReadExt};

use corral_proto::wire::ExecFrame;
use corral_proto::wire::io::{read_frame, write_frame};

use crate::client::Client;

/// Runs `command` in job `job` of `run`. With `stdin`, it is fed to the command until its end;
/// without, the command's input is closed at once. Returns the command's exit code.
pub async fn exec(
    client: &Client,
    run: &str,
    job: u32,
    command: &[String],
    stdin: Option<Box<dyn AsyncRead + Unpin + Send>>,
    out: &mut (dyn Write + Send),
    err: &mut (dyn Write + Send),
) -> anyhow::Result<i32> {
    let stream = client.exec(run, job, command, false).await?;
    let (mut rx, mut tx) = tokio::io::split(stream);
    let feed = tokio::spawn(async move {
        if let Some(mut input) = stdin {
            let mut buf = vec![0u8; 32 * 1024];
            loop {
                let n = input.read(&mut buf).await?;
                if n == 0 {
                    break;
                }
                write_frame(&mut tx, &ExecFrame::Stdin(buf[..n].to_vec())).await?;
            }
        }
        write_frame(&mut tx, &ExecFrame::StdinEnd).await?;
        // Keep the write half open: closing it would end the session before the output is in.
        std::future::pending::<()>().await;
        anyhow::Ok(())
    });
    let result = async {
        loop {
            match read_frame::<ExecFrame, _>(&mut rx).await? {
                Some(ExecFrame::Stdout(data)) => {
                    out.write_all(&data)?;
                    out.flush()?;
                }
                Some(ExecFrame::Stderr(data)) => {
                    err.write_all(&data)?;
                    err.flush()?;
                }
                Some(ExecFrame::Exit { code }) => {
                    return Ok(code.map_or(1, |c| i32::try_from(c).unwrap_or(1)));
                }
                Some(other) => anyhow::bail!("unexpected frame from the container's side: {other:?}"),
                None => anyhow::bail!("the connection to {run} ended before the command did"),
            }
        }
    }
    .await;
    feed.abort();
    result
}
