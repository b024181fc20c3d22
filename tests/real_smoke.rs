//! smoke
#![cfg(feature = "kube")]
mod apiserver;
mod backend;
mod envtest;

use apiserver::Kind;
use backend::Backend;
use serde_json::json;

async fn lease_roundtrip(b: &Backend) {
    b.put_raw(
        Kind::Lease,
        "x",
        json!({"spec": {"holderIdentity": "a", "leaseDurationSeconds": 5}}),
    )
    .await;
    let o = b.object(Kind::Lease, "x").await.expect("stored");
    assert_eq!(o["spec"]["holderIdentity"], "a");
}

on_both!(lease_roundtrip);
