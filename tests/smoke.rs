//! Smoke test: a nursery of borrowing children on the virtual clock.
use hatchery::*;
use std::time::Duration;

#[test]
fn smoke() {
    let out = testing::run(async {
        let data = vec![1u64, 2, 3];
        let r = nursery(async |n| {
            let hs: Vec<_> = data
                .iter()
                .map(|&x| {
                    n.spawn(async move {
                        sleep(Duration::from_secs(x)).await?;
                        Ok::<_, Cancelled>(x * 10)
                    })
                })
                .collect();
            let mut s = 0;
            for h in hs {
                s += h.await?;
            }
            Ok(s)
        })
        .await;
        (r.unwrap(), now())
    });
    assert_eq!(out, (Some(60), Instant::ZERO + Duration::from_secs(3)));
}
