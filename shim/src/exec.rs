//! Commands run in a job's running container (`corral exec`, and SSH sessions later): Docker's exec
//! API, attached to the command's input and output.

use std::pin::Pin;

use bollard::container::LogOutput;
use bollard::exec::{StartExecOptions, StartExecResults};
use bollard::models::ExecConfig;
use bollard::query_parameters::ResizeExecOptionsBuilder;
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use tokio::io::AsyncWrite;

use crate::Shim;
use crate::error::ShimError;

/// A chunk of a command's output. With a terminal, everything is `Stdout`.
#[derive(Debug)]
pub enum ExecOutput {
    Stdout(Bytes),
    Stderr(Bytes),
}

/// A started command: its output, and its input.
pub struct Exec {
    pub id: String,
    pub output: Pin<Box<dyn Stream<Item = Result<ExecOutput, ShimError>> + Send>>,
    pub input: Pin<Box<dyn AsyncWrite + Send>>,
}

impl Shim {
    /// Starts `command` in `container`, attached, with `env` (`NAME=value`) added to the
    /// container's; with `tty`, in a terminal of `size` (rows, cols).
    pub async fn exec(
        &self,
        container: &str,
        command: Vec<String>,
        tty: bool,
        size: Option<(u16, u16)>,
        env: Vec<String>,
    ) -> Result<Exec, ShimError> {
        let docker = self.client().await?;
        let config = ExecConfig {
            attach_stdin: Some(true),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            tty: Some(tty),
            console_size: size.filter(|_| tty).map(|(r, c)| vec![usize::from(r), usize::from(c)]),
            cmd: Some(command),
            env: Some(env).filter(|e| !e.is_empty()),
            ..Default::default()
        };
        let created =
            docker.create_exec(container, config).await.map_err(|e| self.container_error("exec in", container, e))?;
        let start = StartExecOptions { detach: false, tty, output_capacity: Some(64 * 1024) };
        match docker.start_exec(&created.id, Some(start)).await {
            Ok(StartExecResults::Attached { output, input }) => {
                let name = container.to_owned();
                let output = output.filter_map(move |item| {
                    let out = match item {
                        Ok(LogOutput::StdErr { message }) => Some(Ok(ExecOutput::Stderr(message))),
                        Ok(LogOutput::StdOut { message } | LogOutput::Console { message }) => {
                            Some(Ok(ExecOutput::Stdout(message)))
                        }
                        Ok(LogOutput::StdIn { .. }) => None,
                        Err(e) => Some(Err(ShimError::Exec { container: name.clone(), why: e.to_string() })),
                    };
                    std::future::ready(out)
                });
                Ok(Exec { id: created.id, output: Box::pin(output), input })
            }
            Ok(StartExecResults::Detached) => {
                Err(ShimError::Exec { container: container.to_owned(), why: "detached".into() })
            }
            Err(e) => Err(self.container_error("exec in", container, e)),
        }
    }

    /// Resizes a command's terminal.
    pub async fn exec_resize(&self, id: &str, rows: u16, cols: u16) -> Result<(), ShimError> {
        let docker = self.client().await?;
        let opts = ResizeExecOptionsBuilder::default().h(i32::from(rows)).w(i32::from(cols)).build();
        docker.resize_exec(id, opts).await.map_err(|e| self.container_error("resizing exec", id, e))
    }

    /// The exit code of an ended command (`None` while it runs).
    pub async fn exec_exit_code(&self, id: &str) -> Result<Option<i64>, ShimError> {
        let docker = self.client().await?;
        let inspected = docker.inspect_exec(id).await.map_err(|e| self.container_error("inspecting exec", id, e))?;
        Ok(if inspected.running == Some(true) { None } else { inspected.exit_code })
    }
}
