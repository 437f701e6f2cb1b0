//! The AWS backend through aws-sdk-ec2: one EC2 client per configured region, credentials from the
//! usual chain (environment, profile, instance role; `AWS_ENDPOINT_URL` points it at an emulator),
//! instance types read once per region, spot prices when asked.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_sdk_ec2::error::DisplayErrorContext;
use aws_sdk_ec2::types::{ArchitectureType, UsageClassType};
use tokio::sync::OnceCell;

use corral_proto::resources::GpuVendor;

use super::{AwsSettings, InstanceType};

pub struct Aws {
    pub settings: AwsSettings,
    regions: Vec<Region>,
}

struct Region {
    name: String,
    ec2: aws_sdk_ec2::Client,
    types: OnceCell<Arc<Vec<InstanceType>>>,
}

/// An SDK error in one line, with what the service said.
fn said(e: impl std::error::Error) -> String {
    DisplayErrorContext(e).to_string()
}

impl Aws {
    pub async fn new(settings: AwsSettings) -> Self {
        // rustls with ring, as the rest of Corral (the SDK's default would build aws-lc).
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
                aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
            ))
            .build_https();
        let mut regions = Vec::new();
        for name in &settings.regions {
            let config = aws_config::defaults(BehaviorVersion::latest())
                .region(aws_config::Region::new(name.clone()))
                .http_client(http.clone())
                .load()
                .await;
            regions.push(Region { name: name.clone(), ec2: aws_sdk_ec2::Client::new(&config), types: OnceCell::new() });
        }
        Self { settings, regions }
    }

    /// The EC2 client of a configured region (EBS volumes make their own calls with it).
    pub fn ec2(&self, region: &str) -> Result<&aws_sdk_ec2::Client, String> {
        self.region(region).map(|r| &r.ec2)
    }

    pub fn region_names(&self) -> Vec<String> {
        self.regions.iter().map(|r| r.name.clone()).collect()
    }

    /// Whether every region answers with these credentials: `None`, or what is wrong (per region).
    pub async fn check(&self) -> Option<String> {
        let mut errors = Vec::new();
        for r in &self.regions {
            let answer =
                tokio::time::timeout(Duration::from_secs(20), r.ec2.describe_availability_zones().send()).await;
            match answer {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => errors.push(format!("{}: {}", r.name, said(e))),
                Err(_) => errors.push(format!("{}: EC2 did not answer within 20 s", r.name)),
            }
        }
        (!errors.is_empty()).then(|| errors.join("; "))
    }

    /// Each region's instance types (read once), or the region's error.
    pub async fn instance_types(&self) -> Vec<(String, Result<Arc<Vec<InstanceType>>, String>)> {
        let mut out = Vec::new();
        for r in &self.regions {
            let types = r.types.get_or_try_init(|| async { describe_types(&r.ec2).await.map(Arc::new) }).await;
            out.push((r.name.clone(), types.cloned()));
        }
        out
    }

    /// The lowest current spot price of each of `types` in `region` (Linux), by instance type.
    pub async fn spot_prices(&self, region: &str, types: &[String]) -> Result<HashMap<String, f64>, String> {
        let Some(r) = self.regions.iter().find(|r| r.name == region) else { return Ok(HashMap::new()) };
        let mut prices: HashMap<String, f64> = HashMap::new();
        for chunk in types.chunks(100) {
            let mut pages = r
                .ec2
                .describe_spot_price_history()
                .set_instance_types(Some(chunk.iter().map(|t| t.as_str().into()).collect()))
                .product_descriptions("Linux/UNIX")
                .start_time(aws_sdk_ec2::primitives::DateTime::from(std::time::SystemTime::now()))
                .into_paginator()
                .send();
            while let Some(page) = pages.next().await {
                let page = page.map_err(said)?;
                for p in page.spot_price_history() {
                    let (Some(t), Some(price)) =
                        (p.instance_type(), p.spot_price().and_then(|s| s.parse::<f64>().ok()))
                    else {
                        continue;
                    };
                    let best = prices.entry(t.as_str().to_owned()).or_insert(price);
                    *best = best.min(price);
                }
            }
        }
        Ok(prices)
    }
}

async fn describe_types(ec2: &aws_sdk_ec2::Client) -> Result<Vec<InstanceType>, String> {
    let mut out = Vec::new();
    let mut pages = ec2.describe_instance_types().into_paginator().send();
    while let Some(page) = pages.next().await {
        let page = page.map_err(said)?;
        for info in page.instance_types() {
            let Some(name) = info.instance_type().map(|t| t.as_str().to_owned()) else { continue };
            let arch = match info.processor_info().map(|p| p.supported_architectures()).unwrap_or_default() {
                [ArchitectureType::Arm64, ..] | [ArchitectureType::Arm64Mac, ..] => "aarch64",
                _ => "x86_64",
            };
            let gpu = info.gpu_info().and_then(|g| g.gpus().first());
            let vendor = gpu.and_then(|g| g.manufacturer()).map(|m| match m.to_ascii_lowercase().as_str() {
                "amd" => GpuVendor::Amd,
                _ => GpuVendor::Nvidia,
            });
            out.push(InstanceType {
                name,
                vcpus: info.v_cpu_info().and_then(|v| v.default_v_cpus()).unwrap_or(0).max(0) as u32,
                memory_mib: info.memory_info().and_then(|m| m.size_in_mib()).unwrap_or(0).max(0) as u64,
                arch: arch.to_owned(),
                gpu_name: gpu.and_then(|g| g.name()).map(str::to_owned),
                gpu_vendor: vendor,
                gpu_count: gpu.and_then(|g| g.count()).unwrap_or(0).max(0) as u32,
                gpu_memory_mib: gpu.and_then(|g| g.memory_info()).and_then(|m| m.size_in_mib()).unwrap_or(0).max(0)
                    as u64,
                spot: info.supported_usage_classes().contains(&UsageClassType::Spot),
            });
        }
    }
    Ok(out)
}

/// An instance Corral launched, as `DescribeInstances` shows it (by its tags).
#[derive(Clone, Debug)]
pub struct Instance {
    pub region: String,
    pub id: String,
    pub fleet: String,
    /// The name its agent enrolls under (`corral:node`).
    pub node: String,
    /// `pending`, `running`, ...
    pub state: String,
    pub instance_type: String,
    pub launched: Option<std::time::SystemTime>,
}

/// What to launch.
pub struct Launch<'a> {
    pub region: &'a str,
    pub instance_type: &'a str,
    pub spot: bool,
    pub user_data: &'a str,
    /// Tags, Corral's own among them.
    pub tags: &'a [(String, String)],
}

impl Aws {
    fn region(&self, name: &str) -> Result<&Region, String> {
        self.regions.iter().find(|r| r.name == name).ok_or_else(|| format!("region {name} is not configured"))
    }

    /// The AMI for `region`: `--aws-ami`, or none (then say how to set one).
    fn ami(&self) -> Result<String, String> {
        self.settings.ami.clone().ok_or_else(|| "no AMI: start the coordinator with --aws-ami (an image with Docker and, for GPUs, the NVIDIA driver and container toolkit)".into())
    }

    /// `RunInstances` of one instance; returns its id. The error says what EC2 said (capacity,
    /// limits, permissions).
    pub async fn launch(&self, l: &Launch<'_>) -> Result<String, String> {
        use aws_sdk_ec2::types::{InstanceMarketOptionsRequest, MarketType, ResourceType, Tag, TagSpecification};
        let r = self.region(l.region)?;
        let tags = TagSpecification::builder()
            .resource_type(ResourceType::Instance)
            .set_tags(Some(l.tags.iter().map(|(k, v)| Tag::builder().key(k).value(v).build()).collect()))
            .build();
        let mut req = r
            .ec2
            .run_instances()
            .image_id(self.ami()?)
            .instance_type(l.instance_type.into())
            .min_count(1)
            .max_count(1)
            .user_data(aws_smithy_types::base64::encode(l.user_data.as_bytes()))
            .tag_specifications(tags)
            .set_subnet_id(self.settings.subnet_id.clone())
            .set_key_name(self.settings.key_name.clone());
        if let Some(sg) = &self.settings.security_group_id {
            req = req.security_group_ids(sg);
        }
        if l.spot {
            req = req
                .instance_market_options(InstanceMarketOptionsRequest::builder().market_type(MarketType::Spot).build());
        }
        let out = req.send().await.map_err(said)?;
        out.instances()
            .first()
            .and_then(|i| i.instance_id())
            .map(str::to_owned)
            .ok_or_else(|| "RunInstances answered without an instance".into())
    }

    /// Every live instance tagged as this coordinator's, in every region.
    pub async fn instances(&self, coordinator: &str) -> Result<Vec<Instance>, String> {
        use aws_sdk_ec2::types::Filter;
        let mut out = Vec::new();
        for r in &self.regions {
            let mut pages = r
                .ec2
                .describe_instances()
                .filters(Filter::builder().name("tag:corral:coordinator").values(coordinator).build())
                .filters(Filter::builder().name("instance-state-name").values("pending").values("running").build())
                .into_paginator()
                .send();
            while let Some(page) = pages.next().await {
                let page = page.map_err(|e| format!("{}: {}", r.name, said(e)))?;
                for i in page.reservations().iter().flat_map(|res| res.instances()) {
                    let tag = |k: &str| {
                        i.tags().iter().find(|t| t.key() == Some(k)).and_then(|t| t.value()).map(str::to_owned)
                    };
                    let (Some(id), Some(fleet), Some(node)) =
                        (i.instance_id(), tag("corral:fleet"), tag("corral:node"))
                    else {
                        continue;
                    };
                    out.push(Instance {
                        region: r.name.clone(),
                        id: id.to_owned(),
                        fleet,
                        node,
                        state: i.state().and_then(|s| s.name()).map(|n| n.as_str().to_owned()).unwrap_or_default(),
                        instance_type: i.instance_type().map(|t| t.as_str().to_owned()).unwrap_or_default(),
                        launched: i.launch_time().and_then(|t| std::time::SystemTime::try_from(*t).ok()),
                    });
                }
            }
        }
        Ok(out)
    }

    pub async fn terminate(&self, region: &str, ids: &[String]) -> Result<(), String> {
        if ids.is_empty() {
            return Ok(());
        }
        let r = self.region(region)?;
        r.ec2.terminate_instances().set_instance_ids(Some(ids.to_vec())).send().await.map_err(said)?;
        Ok(())
    }
}
