//! `corral offer` and `corral backend list`.

use std::io::Write;

use corral_proto::api;

use crate::client::Client;
use crate::output::table;

type Out<'a> = &'a mut (dyn Write + Send);

fn gib(bytes: u64) -> String {
    let g = bytes as f64 / (1u64 << 30) as f64;
    if g >= 10.0 { format!("{g:.0}GB") } else { format!("{g:.1}GB") }
}

#[allow(clippy::too_many_arguments)]
pub async fn offer(
    client: &Client,
    gpu: Option<String>,
    cpu: Option<String>,
    memory: Option<String>,
    spot: bool,
    max_price: Option<f64>,
    json: bool,
    out: Out<'_>,
) -> anyhow::Result<i32> {
    let mut query = Vec::new();
    for (k, v) in [("gpu", gpu), ("cpu", cpu), ("memory", memory)] {
        if let Some(v) = v {
            query.push(format!("{k}={}", crate::client::query_value(&v)));
        }
    }
    if spot {
        query.push("spot=true".into());
    }
    if let Some(p) = max_price {
        query.push(format!("max_price={p}"));
    }
    let offers: api::Offers = client.get(&format!("/api/offers?{}", query.join("&"))).await?;
    for w in &offers.warnings {
        eprintln!("warning: {w}");
    }
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(&offers.offers)?)?;
        return Ok(0);
    }
    let mut t = table(&["BACKEND", "REGION", "INSTANCE", "CPU", "MEMORY", "GPU", "SPOT", "PRICE/H"]);
    for o in &offers.offers {
        let gpu = match (&o.gpu_name, o.gpu_memory_bytes) {
            (Some(name), Some(mem)) if o.gpu_count > 0 => format!("{}x {name} ({})", o.gpu_count, gib(mem)),
            _ => "-".into(),
        };
        t.add_row(vec![
            o.backend.clone(),
            o.region.clone().unwrap_or_else(|| "-".into()),
            o.name.clone(),
            o.cpus.to_string(),
            gib(o.memory_bytes),
            gpu,
            if o.spot { "yes" } else { "no" }.into(),
            o.price.map(|p| format!("${p:.4}")).unwrap_or_else(|| "?".into()),
        ]);
    }
    writeln!(out, "{t}")?;
    if offers.offers.is_empty() {
        writeln!(out, "no offer fits")?;
    }
    Ok(0)
}

pub async fn backend_list(client: &Client, json: bool, out: Out<'_>) -> anyhow::Result<i32> {
    let backends: Vec<api::BackendInfo> = client.get("/api/backends").await?;
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(&backends)?)?;
        return Ok(0);
    }
    if backends.is_empty() {
        writeln!(out, "no cloud backend configured (corral-coordinator --aws-region REGION): on-prem nodes only")?;
        return Ok(0);
    }
    let mut t = table(&["BACKEND", "REGIONS", "STATUS"]);
    for b in &backends {
        t.add_row(vec![
            b.name.clone(),
            b.regions.join(","),
            b.error.clone().map(|e| format!("error: {e}")).unwrap_or_else(|| "ok".into()),
        ]);
    }
    writeln!(out, "{t}")?;
    Ok(if backends.iter().any(|b| b.error.is_some()) { 1 } else { 0 })
}
