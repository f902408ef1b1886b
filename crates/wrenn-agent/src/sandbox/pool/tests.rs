//! Unit tests of the pools' sizes and bookkeeping (no VM).

use super::*;

fn shape() -> Shape {
    Shape {
        template: "minimal".into(),
        vcpus: 1,
        memory_mb: 256,
    }
}

fn meta() -> ImageMeta {
    ImageMeta {
        name: "minimal".into(),
        kind: "warm".into(),
        vcpus: 1,
        memory_mb: 256,
        layers: vec![],
        created_at: "t1".into(),
        source_key: String::new(),
    }
}

#[test]
fn a_miss_raises_the_target_up_to_the_maximum_and_off_means_never() {
    let pools = Pools::new(PoolConfig {
        max_per_shape: 2,
        memory_budget_mb: 10_000,
        idle_shrink: Duration::from_secs(600),
    });
    assert!(pools.next_refill(64).is_none(), "no demand, no pool");
    for _ in 0..5 {
        let (got, stale) = pools.take(&shape(), Path::new("/img"), &meta());
        assert!(got.is_none() && stale.is_empty());
    }
    assert_eq!(pools.shapes().get(&shape()).unwrap().target, 2);
    assert_eq!(pools.shapes().get(&shape()).unwrap().misses, 5);
    assert_eq!(pools.next_refill(64), Some(shape()));

    let off = Pools::new(PoolConfig::OFF);
    let _ = off.take(&shape(), Path::new("/img"), &meta());
    assert!(off.next_refill(64).is_none());
    assert!(off.shapes().is_empty());
}

#[test]
fn the_budget_bounds_refills() {
    let pools = Pools::new(PoolConfig {
        max_per_shape: 4,
        memory_budget_mb: 256 + 64 - 1,
        idle_shrink: Duration::from_secs(600),
    });
    let _ = pools.take(&shape(), Path::new("/img"), &meta());
    assert!(pools.next_refill(64).is_none(), "one clone is over budget");
    pools.making_mb.store(0, Ordering::Release);
    let pools = Pools::new(PoolConfig {
        memory_budget_mb: 256 + 64,
        ..pools.cfg().unwrap()
    });
    let _ = pools.take(&shape(), Path::new("/img"), &meta());
    assert_eq!(pools.next_refill(64), Some(shape()));
    pools.making_mb.store(320, Ordering::Release);
    assert!(
        pools.next_refill(64).is_none(),
        "the clone being made counts"
    );
    assert_eq!(pools.committed_mb(64), 320);
}

#[test]
fn idle_shapes_shrink_and_drain_zeroes_targets() {
    let pools = Pools::new(PoolConfig {
        max_per_shape: 3,
        memory_budget_mb: 10_000,
        idle_shrink: Duration::ZERO,
    });
    for _ in 0..3 {
        let _ = pools.take(&shape(), Path::new("/img"), &meta());
    }
    assert_eq!(pools.shapes().get(&shape()).unwrap().target, 3);
    assert!(pools.shrink_idle().is_empty());
    assert_eq!(pools.shapes().get(&shape()).unwrap().target, 2);
    assert!(pools.drain(Some("other")).is_empty());
    assert_eq!(pools.shapes().get(&shape()).unwrap().target, 2);
    assert!(pools.drain(Some("minimal")).is_empty());
    assert_eq!(pools.shapes().get(&shape()).unwrap().target, 0);
}
