//! `corral metrics RUN`: what a run's jobs use — CPU, memory and, per GPU, utilization and memory —
//! as their nodes last reported it; `-w` follows it until the run ends, `--json` for scripts.

use std::io::Write;
use std::time::Duration;

use corral_proto::api;
use corral_proto::resources::Memory;

use crate::client::Client;
use crate::output::{is_tty, table};

type Out<'a> = &'a mut (dyn Write + Send);

/// How often `-w` reads again.
const WATCH_EVERY: Duration = Duration::from_secs(2);

pub async fn metrics(client: &Client, run: &str, watch: bool, json: bool, out: Out<'_>) -> anyhow::Result<i32> {
    loop {
        let m: api::RunMetrics = client.get(&client.project_api(&["runs", run, "metrics"])?).await?;
        if json {
            writeln!(out, "{}", serde_json::to_string_pretty(&m)?)?;
        } else {
            if watch && is_tty() {
                write!(out, "\x1b[2J\x1b[H")?;
            }
            write!(out, "{}", render(&m))?;
        }
        out.flush()?;
        if !watch {
            return Ok(0);
        }
        let r: api::Run = client.get(&client.project_api(&["runs", run])?).await?;
        if r.jobs.iter().all(|j| j.state.is_finished()) {
            writeln!(out, "run {run} ended ({})", r.state)?;
            return Ok(0);
        }
        tokio::time::sleep(WATCH_EVERY).await;
    }
}

/// The table: a row per job, its GPUs under it.
pub fn render(m: &api::RunMetrics) -> String {
    let mut t = table(&["JOB", "NODE", "CPU", "MEMORY", "GPU", "GPU UTIL", "GPU MEMORY"]);
    for j in &m.jobs {
        let cpu = j.cpu_millicores.map_or_else(|| "-".to_owned(), |m| format!("{:.0}%", f64::from(m) / 10.0));
        let memory = match (j.memory_used, j.memory_limit) {
            (Some(u), Some(l)) if l > 0 => format!("{}/{}", Memory(u), Memory(l)),
            (Some(u), _) => Memory(u).to_string(),
            _ => "-".to_owned(),
        };
        let node = j.node.clone().unwrap_or_else(|| "-".to_owned());
        let mut first = true;
        let mut row = |gpu: String, util: String, mem: String| {
            let (job, node, cpu, memory) = if std::mem::replace(&mut first, false) {
                (j.job_num.to_string(), node.clone(), cpu.clone(), memory.clone())
            } else {
                (String::new(), String::new(), String::new(), String::new())
            };
            t.add_row(vec![job, node, cpu, memory, gpu, util, mem]);
        };
        if j.gpus.is_empty() {
            row("-".into(), "-".into(), "-".into());
        }
        for g in &j.gpus {
            let util = g.utilization.map_or_else(|| "-".to_owned(), |u| format!("{u}%"));
            let mem = match (g.memory_used, g.memory_total) {
                (Some(u), Some(total)) => format!("{}/{}", Memory(u), Memory(total)),
                (Some(u), None) => Memory(u).to_string(),
                _ => "-".to_owned(),
            };
            row(format!("#{}", g.index), util, mem);
        }
    }
    let mut text = format!("{t}\n");
    if m.jobs.iter().all(|j| j.at_ms.is_none()) {
        text.push_str(&format!(
            "no figures for run {} yet: its nodes report every few seconds while its jobs run\n",
            m.run
        ));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_per_job_with_its_gpus_under_it() {
        let mut job = api::JobMetrics::unreported("j1".into(), 0, Some("gpu-01".into()));
        job.at_ms = Some(1);
        job.cpu_millicores = Some(1500);
        job.memory_used = Some(3 << 30);
        job.memory_limit = Some(16 << 30);
        job.gpus = vec![
            api::GpuMetrics {
                index: 0,
                utilization: Some(97),
                memory_used: Some(40 << 30),
                memory_total: Some(80 << 30),
                ..Default::default()
            },
            api::GpuMetrics { index: 1, ..Default::default() },
        ];
        let text = render(&api::RunMetrics { run: "train".into(), jobs: vec![job] });
        let lines: Vec<Vec<&str>> = text.lines().map(|l| l.split_whitespace().collect()).collect();
        assert_eq!(lines[0], ["JOB", "NODE", "CPU", "MEMORY", "GPU", "GPU", "UTIL", "GPU", "MEMORY"]);
        assert_eq!(lines[1], ["0", "gpu-01", "150%", "3GB/16GB", "#0", "97%", "40GB/80GB"]);
        assert_eq!(lines[2], ["#1", "-", "-"]);
        let none = render(&api::RunMetrics {
            run: "train".into(),
            jobs: vec![api::JobMetrics::unreported("j1".into(), 0, None)],
        });
        assert!(none.contains("no figures for run train yet"), "{none}");
    }
}
