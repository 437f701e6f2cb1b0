//! `corral exec RUN -- CMD...`: runs a command in a run's container through the coordinator and
//! the agent's own connection, with its output here and its exit code as ours.

use std::io::Write;

use tokio::io::{AsyncRead, AsyncReadExt};

use anyhow::Context;

use corral_proto::wire::io::{read_frame, write_frame};
use corral_proto::wire::{ExecFrame, TermSize};

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
    let stream = client.exec(run, job, command, None).await?;
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

/// `corral exec -t`: runs `command` in a terminal. This terminal goes raw for the session (every
/// key goes to the command, Ctrl-C included) and its size follows this window's. Returns the
/// command's exit code.
pub async fn exec_tty(client: &Client, run: &str, job: u32, command: &[String]) -> anyhow::Result<i32> {
    use crossterm::terminal;
    use tokio::io::AsyncWriteExt;
    use tokio::signal::unix::{SignalKind, signal};

    let size = || terminal::size().ok().filter(|&(c, r)| c > 0 && r > 0).map(|(cols, rows)| TermSize { rows, cols });
    let start = size().unwrap_or(TermSize { rows: 24, cols: 80 });
    let stream = client.exec(run, job, command, Some((start.rows, start.cols))).await?;
    terminal::enable_raw_mode().context("cannot put this terminal in raw mode: `-t` needs one (drop -t)")?;
    let _restore = RawMode;
    let (mut rx, mut tx) = tokio::io::split(stream);
    let mut resized = signal(SignalKind::window_change()).context("cannot watch the window size")?;
    let feed = tokio::spawn(async move {
        let mut input = detached_stdin();
        let mut buf = vec![0u8; 32 * 1024];
        // After the input's end the window can still change; the write half stays open until the
        // command's end (closing it would end the session first).
        let mut input_open = true;
        loop {
            tokio::select! {
                n = input.read(&mut buf), if input_open => match n? {
                    0 => {
                        write_frame(&mut tx, &ExecFrame::StdinEnd).await?;
                        input_open = false;
                    }
                    n => write_frame(&mut tx, &ExecFrame::Stdin(buf[..n].to_vec())).await?,
                },
                signal = resized.recv() => {
                    if signal.is_none() {
                        break;
                    }
                    if let Some(s) = size() {
                        write_frame(&mut tx, &ExecFrame::Resize(s)).await?;
                    }
                }
            }
        }
        anyhow::Ok(())
    });
    let mut out = tokio::io::stdout();
    let result = async {
        loop {
            match read_frame::<ExecFrame, _>(&mut rx).await? {
                Some(ExecFrame::Stdout(data) | ExecFrame::Stderr(data)) => {
                    out.write_all(&data).await?;
                    out.flush().await?;
                }
                Some(ExecFrame::Exit { code }) => return Ok(code.map_or(1, |c| i32::try_from(c).unwrap_or(1))),
                Some(other) => anyhow::bail!("unexpected frame from the container's side: {other:?}"),
                None => anyhow::bail!("the connection to {run} ended before the command did"),
            }
        }
    }
    .await;
    feed.abort();
    result
}

/// Puts the terminal back when the session ends, however it ends.
struct RawMode;

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = crossterm::terminal::disable_raw_mode();
    }
}

/// This process's standard input, read by a thread of its own. Tokio's `stdin` reads on the
/// runtime's blocking pool, and a read there cannot be cancelled: the runtime's shutdown, and so
/// the command's exit, would wait for the user's next keystroke. This thread is simply left behind.
pub fn detached_stdin() -> impl AsyncRead + Unpin + Send {
    let (tx, rx) = tokio::sync::mpsc::channel::<Vec<u8>>(4);
    let _ = std::thread::Builder::new().name("stdin".into()).spawn(move || {
        use std::io::Read;
        let mut stdin = std::io::stdin().lock();
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx.blocking_send(buf[..n].to_vec()).is_err() {
                        break;
                    }
                }
            }
        }
    });
    ChannelReader { rx, pending: Vec::new(), at: 0 }
}

struct ChannelReader {
    rx: tokio::sync::mpsc::Receiver<Vec<u8>>,
    pending: Vec<u8>,
    at: usize,
}

impl AsyncRead for ChannelReader {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use std::task::Poll;
        if self.at >= self.pending.len() {
            match self.rx.poll_recv(cx) {
                Poll::Ready(Some(chunk)) => {
                    self.pending = chunk;
                    self.at = 0;
                }
                Poll::Ready(None) => return Poll::Ready(Ok(())), // end of input
                Poll::Pending => return Poll::Pending,
            }
        }
        let n = buf.remaining().min(self.pending.len() - self.at);
        let at = self.at;
        buf.put_slice(&self.pending[at..at + n]);
        self.at += n;
        Poll::Ready(Ok(()))
    }
}
