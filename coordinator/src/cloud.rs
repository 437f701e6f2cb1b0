//! Capacity beyond the enrolled nodes: cloud backends and the offers they make ([`backends`], AWS
//! behind the `aws` feature) and elastic fleets that launch and terminate instances ([`elastic`]).
//! Cloud volumes (EBS) are in `volumes/ebs`.

pub mod backends;
#[cfg(feature = "aws")]
pub mod elastic;
