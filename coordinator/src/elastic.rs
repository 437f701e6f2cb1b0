//! Elastic fleets on AWS: a fleet with `backends: [aws]` and `nodes: MIN..MAX` has at least MIN
//! instances. Each pass (every few seconds, and at start) reads the instances tagged as this
//! coordinator's from `DescribeInstances` — the cloud is the record, so a restart neither leaks nor
//! launches twice — then launches what a fleet lacks (one per fleet per pass) and terminates the
//! instances of fleets that were deleted. An instance's user data runs the install command with a
//! join token for that instance alone (one use, one hour, its fleet) and the node name it is tagged
//! with; offers are tried cheapest first, the next one on a capacity error.
//!
//! Not yet: growing for queued work, idle termination, terminating instances that never enroll.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use corral_proto::api;
use corral_proto::config::{FleetConfig, SpotPolicy};
use corral_proto::resources::ResourcesSpec;

use crate::State;
use crate::backends::OfferQuery;
use crate::backends::aws::{Aws, Launch};
use crate::secrets::{now_ms, random_hex, sha256_hex};

/// Tries this many offers per launch before giving up for the pass.
const OFFERS_TRIED: usize = 5;

/// The tag value that marks this coordinator's instances (from its CA: stable across restarts).
pub fn coordinator_tag(state: &State) -> String {
    state.pki.ca_hash()[..16].to_owned()
}

/// Errors after which the next offer (another type, zone or region) may still work.
pub fn is_capacity_error(e: &str) -> bool {
    [
        "InsufficientInstanceCapacity",
        "InsufficientCapacity",
        "InstanceLimitExceeded",
        "Unsupported",
        "SpotMaxPriceTooLow",
        "MaxSpotInstanceCountExceeded",
        "InsufficientHostCapacity",
    ]
    .iter()
    .any(|code| e.contains(code))
}

/// Launches on the first offer that works, moving on after capacity errors; any other error stops
/// (it would fail the same way on the next offer). Returns the offer used and the instance id.
pub async fn launch_first<F, Fut>(offers: &[api::Offer], mut launch: F) -> Result<(api::Offer, String), String>
where
    F: FnMut(api::Offer) -> Fut,
    Fut: std::future::Future<Output = Result<String, String>>,
{
    let mut tried = Vec::new();
    for offer in offers.iter().take(OFFERS_TRIED) {
        match launch(offer.clone()).await {
            Ok(id) => return Ok((offer.clone(), id)),
            Err(e) if is_capacity_error(&e) => {
                tracing::warn!(instance_type = %offer.name, region = ?offer.region, "no capacity, trying the next offer: {e}");
                tried.push(format!("{} in {}: {e}", offer.name, offer.region.as_deref().unwrap_or("?")));
            }
            Err(e) => return Err(e),
        }
    }
    if tried.is_empty() {
        Err("no AWS offer fits the fleet's resources and max_price".into())
    } else {
        Err(tried.join("; "))
    }
}

fn is_aws_fleet(cfg: &FleetConfig) -> bool {
    cfg.provisioning.backends.iter().any(|b| b == "aws")
}

pub async fn run(state: Arc<State>, shutdown: CancellationToken) {
    let Some(aws) = state.backends.aws.as_ref() else { return };
    let mut tick = tokio::time::interval(state.config.elastic_every);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = shutdown.cancelled() => return,
        }
        if let Err(e) = reconcile(&state, aws).await {
            tracing::warn!("elastic fleets: {e}");
        }
    }
}

async fn reconcile(state: &State, aws: &Aws) -> Result<(), String> {
    let fleets: Vec<_> = state
        .store
        .all_fleets()
        .map_err(|e| e.to_string())?
        .into_iter()
        .filter(|(_, _, cfg)| is_aws_fleet(cfg))
        .collect();
    let tag = coordinator_tag(state);
    let instances = aws.instances(&tag).await?;
    // Instances of fleets that are gone.
    for i in instances.iter().filter(|i| !fleets.iter().any(|(_, name, _)| *name == i.fleet)) {
        tracing::info!(instance = %i.id, fleet = %i.fleet, "terminating an instance of a deleted fleet");
        aws.terminate(&i.region, std::slice::from_ref(&i.id)).await?;
    }
    for (_, name, cfg) in &fleets {
        let live = instances.iter().filter(|i| i.fleet == *name).count() as u32;
        let min = cfg.nodes.map_or(0, |n| n.min.max(n.target));
        if live >= min {
            continue;
        }
        if let Err(e) = launch(state, aws, name, cfg, &tag).await {
            tracing::warn!(fleet = %name, "cannot launch an instance: {e}");
        }
    }
    Ok(())
}

async fn launch(state: &State, aws: &Aws, fleet: &str, cfg: &FleetConfig, tag: &str) -> Result<(), String> {
    let url =
        state.config.public_url.clone().ok_or(
            "the coordinator has no --public-url: instances need an address to reach it at (https://HOST:7070)",
        )?;
    let p = &cfg.provisioning;
    let spot = p.spot_policy == Some(SpotPolicy::Spot);
    let spec = cfg.resources.clone().unwrap_or(ResourcesSpec { disk: None, ..ResourcesSpec::default() });
    let q = OfferQuery { spec, spot, max_price: p.max_price };
    let (offers, _) = state.backends.offers(&q).await;
    let mut offers: Vec<_> = offers
        .into_iter()
        .filter(|o| o.backend == "aws" && o.price.is_some())
        .filter(|o| p.regions.is_empty() || o.region.as_ref().is_some_and(|r| p.regions.contains(r)))
        .filter(|o| p.instance_types.is_empty() || p.instance_types.contains(&o.name))
        .collect();
    crate::backends::sort_offers(&mut offers);

    // A token for this instance alone; its node name, tagged, so the instance and node are one.
    let secret = random_hex(16);
    let token = corral_proto::token::JoinToken { ca_hash: state.pki.ca_hash(), secret: secret.clone() };
    let node = format!("{fleet}-{}", random_hex(3));
    let user_data = format!(
        "#!/bin/sh\n# Corral: join fleet {fleet} as node {node}\ncurl -fsSLk '{url}/install.sh' | sh -s -- --token '{token}' --name '{node}'\n"
    );
    let tags = [
        ("corral:coordinator".to_owned(), tag.to_owned()),
        ("corral:fleet".to_owned(), fleet.to_owned()),
        ("corral:node".to_owned(), node.clone()),
        ("Name".to_owned(), format!("corral-{node}")),
    ];
    state
        .store
        .create_join_token(&sha256_hex(secret.as_bytes()), Some(fleet), Some(now_ms() + 3_600_000), Some(1))
        .map_err(|e| e.to_string())?;
    let (offer, id) = launch_first(&offers, |o| {
        let (user_data, tags) = (&user_data, &tags);
        async move {
            let region = o.region.clone().unwrap_or_default();
            aws.launch(&Launch { region: &region, instance_type: &o.name, spot, user_data, tags }).await
        }
    })
    .await?;
    tracing::info!(fleet, %node, instance = %id, instance_type = %offer.name, region = ?offer.region, price = ?offer.price, "launched an instance");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offer(name: &str) -> api::Offer {
        api::Offer {
            backend: "aws".into(),
            name: name.into(),
            region: Some("us-east-1".into()),
            cpus: 8,
            memory_bytes: 1 << 30,
            arch: "x86_64".into(),
            gpu_count: 1,
            gpu_name: Some("A10G".into()),
            gpu_memory_bytes: Some(24 << 30),
            spot: false,
            price: Some(1.0),
        }
    }

    /// moto never runs out of capacity: the errors are injected here, at the SDK boundary.
    #[tokio::test]
    async fn capacity_errors_move_to_the_next_offer_and_other_errors_stop() {
        let offers = [offer("g5.xlarge"), offer("g6.xlarge"), offer("g4dn.xlarge")];
        let mut asked = Vec::new();
        let got = launch_first(&offers, |o| {
            asked.push(o.name.clone());
            async move {
                match o.name.as_str() {
                    "g5.xlarge" => {
                        Err("InsufficientInstanceCapacity: We currently do not have sufficient capacity".to_owned())
                    }
                    _ => Ok(format!("i-{}", o.name)),
                }
            }
        })
        .await
        .expect("the second offer");
        assert_eq!((got.0.name.as_str(), got.1.as_str()), ("g6.xlarge", "i-g6.xlarge"));
        assert_eq!(asked, ["g5.xlarge", "g6.xlarge"]);

        let err =
            launch_first(&offers, |_| async { Err::<String, _>("UnauthorizedOperation: not allowed".to_owned()) })
                .await
                .expect_err("stops");
        assert!(err.starts_with("UnauthorizedOperation"), "{err}");
        let none = launch_first(&[], |_| async { Ok::<_, String>("i-x".into()) }).await.expect_err("nothing fits");
        assert!(none.contains("no AWS offer fits"), "{none}");
    }
}
